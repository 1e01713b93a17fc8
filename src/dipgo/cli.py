"""The ``dipgo`` command line.

    dipgo info MODEL [--json]                       blocks, parameters, MACs and latency per denoiser call
    dipgo prune MODEL --ratio R --steps N --scheduler NAME --out FILE
    dipgo sample MODEL [--schedule FILE [--compare]] --n K --seed S --out grid.png
    dipgo show FILE                                 what a schedule computes and skips
    dipgo eval MODEL [--schedule FILE | --method SPEC] --n K --json FILE
    dipgo bench [MODEL ...] [--quick]               every method at every budget -> benchmarks/results/bench/
    dipgo layers MODEL --ratio R [--retrain-steps N] --out DIR      LAPTOP-Diff layer pruning
    dipgo depth MODEL --ratio R [--train-steps N] --out DIR         UPDP depth pruning (merged blocks)

prune, eval and bench also run as several processes, started by a launcher:
    torchrun --nproc_per_node 8 -m dipgo prune MODEL ...
    accelerate launch --multi_gpu --num_processes 8 -m dipgo eval MODEL ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from pathlib import Path

from . import argtypes as types
from .dist import world
from .errors import DipgoError
from .fileio import atomic_path
from .version import __version__


def _fmt(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def cmd_info(args) -> int:
    from .evaluate.report import model_info

    info = model_info(args.model, runs=args.runs, device=args.device, dtype=args.dtype)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model']}: {info['pipeline']} / {info['denoiser']}, input {info['input_shape']} "
          f"(batch 1, no CFG; CFG doubles the work per image)")
    print(f"{'block':<24}{'params':>12}{'MACs/call':>14}{'share':>8}")
    for b in info["blocks"]:
        print(f"{b['name']:<24}{_fmt(b['params']):>12}{_fmt(b['macs']):>14}{b['macs'] / info['macs_per_call']:>8.1%}")
    rest = info["macs_per_call"] - sum(b["macs"] for b in info["blocks"])
    print(f"{'(outside blocks)':<24}{'':>12}{_fmt(rest):>14}{rest / info['macs_per_call']:>8.1%}")
    lat = info["latency"]
    print(f"{'total':<24}{_fmt(info['params']):>12}{_fmt(info['macs_per_call']):>14}")
    where = f"{info['threads']} CPU threads" if info["device"] == "cpu" else f"{info['device']}, CUDA events"
    print(f"latency per call: {lat['median_ms']:.2f} ms median (IQR {lat['p25_ms']:.2f}-{lat['p75_ms']:.2f} ms, "
          f"{lat['runs']} runs after warm-up, {where})")
    print(f"NTIRE figures (denoiser call, batch 1, {info['dtype']}): runtime {lat['median_ms']:.2f} ms, "
          f"FLOPs (MACs) {info['macs_per_call'] / 1e9:.4f} G, params {info['params'] / 1e6:.4f} M")
    return 0


def _guidance(args, source) -> float | None:
    return args.guidance if args.guidance is not None else source.guidance_scale


def _load(args):
    """The pipeline, its source (zoo card), and the calibration inputs from --prompts / --class-labels."""
    from . import zoo
    from .models.calibration import parse_class_labels, read_prompts
    from .models.pipelines import default_calibration

    prompts = read_prompts(args.prompts) if getattr(args, "prompts", None) else None
    labels = parse_class_labels(args.class_labels) if getattr(args, "class_labels", None) else None
    pipe, source = zoo.load(args.model, getattr(args, "dtype", "fp32"), getattr(args, "device", None))
    calibration = default_calibration(pipe, prompts, labels, source.defaults)
    return pipe, source, calibration


def _describe_calibration(calibration) -> None:
    if calibration.generic:
        print(f"calibrating on dipgo's {len(calibration.items)} built-in generic prompts "
              "(pass --prompts FILE, one prompt per line, to use your own)")
    elif calibration.kind == "none":
        print("unconditional model: no calibration inputs needed")
    else:
        what = "prompts" if calibration.kind == "prompt" else "class labels"
        print(f"calibrating on {len(calibration.items)} {what}")


def _prune_config(args, guidance: float | None):
    from .cache.pipeline import PruneConfig

    ratios = args.ratio
    search = {k: v for k, v in (("batch", args.batch), ("lr", args.lr), ("loss", args.loss),
                                ("granularity", args.granularity)) if v is not None}
    search["grad_checkpointing"] = {"auto": None, "on": True, "off": False}[args.grad_checkpointing]
    return PruneConfig(ratio=ratios if len(ratios) > 1 else ratios[0], num_inference_steps=args.steps,
                       effort=args.effort, iterations=args.iterations, evaluations=args.evaluations,
                       held_out=args.held_out, guidance_scale=guidance, seed=args.seed, search=search,
                       forecast=None if args.forecast == "auto" else int(args.forecast))


def cmd_prune(args) -> int:
    from .cache.pipeline import prune_schedules, remove_checkpoints
    from .models.pipelines import set_scheduler

    _prune_config(args, None)  # validated before anything is loaded
    pipe, source, calibration = _load(args)
    config = _prune_config(args, _guidance(args, source))
    set_scheduler(pipe, args.scheduler)
    _describe_calibration(calibration)
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".search.pt")
    pruned = prune_schedules(pipe, config, blocks=args.blocks.split(",") if args.blocks else None,
                             calibration=calibration, checkpoint=ckpt, progress=True)
    for r, p in zip(config.ratios, pruned, strict=True):
        path = out if len(pruned) == 1 else out.with_name(f"{out.stem}-r{r:g}{out.suffix}")
        if world().main:
            p.schedule.save(path)
        print(p.schedule.summary())
        rec = p.schedule.meta["pipeline"]
        print("held-out candidates: " + ", ".join(f"{k} {v:.2f} dB" for k, v in p.candidates.items())
              + f"; best start: {p.winner}")
        print(f"wrote {path} ({config.effort} effort; " + ", ".join(f"{k} {v:.0f} s" for k, v in
                                                                    rec["seconds"].items()) + ")")
        print(f"on {rec['held_out']['n']} held-out images: {p.line()}")
    if not args.checkpoint and world().main:  # done: a later prune to the same --out starts a new search
        remove_checkpoints(ckpt)
    return 0


def cmd_show(args) -> int:
    from .cache.schedule import Schedule

    print(Schedule.load(args.schedule).summary())
    return 0


def _comparison_rows(pipe, schedule, run, steps: int) -> list[tuple[str, object]]:
    """Full model, dipgo, and fewer steps at the schedule's MACs, each labelled with its PSNR vs the full model."""
    from . import api
    from .models.pipelines import num_calls
    from .models.similarity import psnr

    full = run("full model", steps)
    schedule = api.apply(pipe, schedule, num_inference_steps=steps)
    try:
        pruned = run("dipgo schedule", steps)
    finally:
        api.remove(pipe)
    speed = schedule.macs_full / schedule.macs
    total = num_calls(pipe, steps)
    k = min(range(1, steps), key=lambda k: abs(math.log(total / num_calls(pipe, k) / speed)))
    fewer = run(f"{k} steps", k)

    def db(images) -> str:
        return f"{float(psnr(images, full, cap=100.0).mean()):.1f} dB"

    return [(f"full model, {steps} steps", full), (f"dipgo, {speed:.2f}x fewer MACs: {db(pruned)}", pruned),
            (f"{k} steps, {total / num_calls(pipe, k):.2f}x fewer MACs: {db(fewer)}", fewer)]


def cmd_sample(args) -> int:
    from . import api
    from .cache.schedule import Schedule
    from .models.images import labelled_rows, make_grid, save_image
    from .models.pipelines import generate, set_scheduler

    pipe, source, calibration = _load(args)
    guidance = _guidance(args, source)
    if args.label is not None and not 0 <= args.label < len(calibration):
        raise DipgoError(f"--label {args.label} out of range: this model has {len(calibration)} conditions "
                         f"(0..{len(calibration) - 1})")
    conditions = calibration.cycle(args.n) if args.label is None else [args.label] * args.n
    schedule = Schedule.load(args.schedule) if args.schedule else None
    steps = args.steps if args.steps is not None else (schedule.num_inference_steps if schedule else 50)
    if schedule is not None and type(pipe.scheduler).__name__ != schedule.scheduler:
        set_scheduler(pipe, schedule.scheduler)
    if schedule is not None and steps != schedule.num_inference_steps:  # --steps: the opt-in to a transfer
        print(f"note: the schedule was searched for {schedule.num_inference_steps} steps; its gates are mapped "
              f"to {steps} steps over normalised time (quality may differ from a search at {steps})")

    def run(desc, k=steps):
        return generate(pipe, calibration, conditions, seed=args.seed, num_inference_steps=k,
                        guidance_scale=guidance, batch_size=args.batch, progress=True, desc=desc)

    nrow = min(10, args.n)
    if schedule is None:
        grid = make_grid(run("sampling"), nrow=nrow)
    elif args.compare:
        grid = labelled_rows(_comparison_rows(pipe, schedule, run, steps), nrow=nrow)
    else:
        schedule = api.apply(pipe, schedule, num_inference_steps=steps)
        try:
            pruned = run("dipgo schedule")
        finally:
            api.remove(pipe)
        grid = labelled_rows([(f"dipgo, {schedule.macs_full / schedule.macs:.2f}x fewer MACs", pruned)], nrow=nrow)
    save_image(grid, args.out)
    print(f"wrote {args.out}: {args.n} images, {steps} steps, guidance {guidance}, seed {args.seed}"
          + (f", schedule {args.schedule}" if schedule else ""))
    return 0


def cmd_eval(args) -> int:
    from .cache.schedule import Schedule
    from .evaluate.baselines import FromSchedule, parse_method
    from .evaluate.evaluation import Judge, evaluate
    from .models.pipelines import set_scheduler

    if args.schedule and args.method:
        raise DipgoError("give --schedule FILE or --method SPEC, not both")
    method = FromSchedule(args.schedule) if args.schedule else parse_method(args.method or "full")
    steps = args.steps
    scheduler = args.scheduler
    if args.schedule:
        schedule = Schedule.load(args.schedule)
        steps = steps if steps is not None else schedule.num_inference_steps
    pipe, source, calibration = _load(args)
    if args.schedule and scheduler is None:
        if type(pipe.scheduler).__name__ != schedule.scheduler:
            set_scheduler(pipe, schedule.scheduler)
    else:
        set_scheduler(pipe, scheduler or "ddim")
    rec = evaluate(pipe, method, steps if steps is not None else 50, n=args.n, seed=args.seed,
                   guidance_scale=_guidance(args, source), batch=args.batch, progress=True,
                   calibration=calibration, judge=Judge.from_source(source))
    rec["model"] = args.model
    text = json.dumps(rec, indent=1)
    if args.json and world().main:
        with atomic_path(Path(args.json)) as tmp:
            tmp.write_text(text)
    print(text)
    return 0


def _write_card(source, out) -> None:
    """The source's zoo card, copied into a pruned folder so that ``dipgo eval OUT`` judges it the same way."""
    card = dict(source.card)
    if source.fid_reference is not None:  # keep the judge: the reference path must resolve from the new folder
        card["fid_reference"] = str(source.fid_reference.resolve())
    card["pruned_from"] = source.name
    with atomic_path(Path(out) / "dipgo.json") as tmp:
        tmp.write_text(json.dumps(card, indent=1))


def _report_pruned(source, out, result, what: str) -> int:
    """After layer or depth pruning: the zoo card into the folder, what was pruned, the costs, where it is."""
    _write_card(source, out)
    print(f"{what}: " + ", ".join(result.selection.names))
    print(f"params {_fmt(result.params_full)} -> {_fmt(result.params)} ({1 - result.params / result.params_full:.1%} "
          f"fewer); MACs/call {_fmt(result.macs_full)} -> {_fmt(result.macs)} "
          f"({result.macs_full / result.macs:.2f}x fewer)")
    print(f"wrote {out} (load it with dipgo.load_pruned('{out}'); dipgo info {out})")
    return 0


def _training_data(source, pipe, calibration, steps: int):
    """The model's own training data for distillation (None: the full model's samples are made instead)."""
    if steps <= 0:
        return None
    data = source.training_set(pipe, calibration)
    print("distilling on " + ("the model's own training data" if data is not None else
                              "images the full model generates on the calibration inputs"))
    return data


def _distill_config(args, steps: int):
    """The distillation settings of ``dipgo layers`` / ``dipgo depth``."""
    from .models.distill import DistillConfig

    return DistillConfig(steps=steps, feature_kd=args.feature_kd, batch=args.batch, lr=args.lr,
                         lr_schedule=args.lr_schedule, warmup=args.warmup, ema=args.ema, p_uncond=args.p_uncond)


def _checkpoint(args) -> str:
    return args.checkpoint or str(Path(args.out).with_suffix(".distill.pt"))


def _print_depth_scores(args) -> int:
    from .depth import depth_scores

    pipe, source, calibration = _load(args)
    cands, scores, _, _ = depth_scores(pipe, calibration, n_images=args.calib_images, num_inference_steps=args.steps,
                                       guidance_scale=_guidance(args, source), progress=True)
    print(f"{'block':<30}{'kind':>13}{'params saved':>14}{'MACs saved':>12}{'linearise loss':>16}")
    for c in sorted(cands, key=lambda c: scores[c.name]):
        print(f"{c.name:<30}{c.kind:>13}{_fmt(c.params):>14}{_fmt(c.macs):>12}{scores[c.name]:>16.6g}")
    return 0


def _prune_model(args, method: str) -> int:
    """``dipgo layers`` / ``dipgo depth``: load, prune with a short distillation, save, report."""
    from dataclasses import replace

    if method == "layers":
        from .layers import LayersConfig as Config
        from .layers import prune
        fields, steps, scores = (args.criterion, args.by, args.method), args.retrain_steps, _print_layer_scores
    else:
        from .depth import DepthConfig as Config
        from .depth import prune
        fields, steps, scores = (args.by, args.mode, args.ramp), args.train_steps, _print_depth_scores
    if args.scores:
        return scores(args)
    config = Config(args.ratio if args.ratio is not None else 0.5, *fields, distill=_distill_config(args, steps),
                    n_images=args.calib_images, num_inference_steps=args.steps, guidance_scale=args.guidance)
    if args.ratio is None or args.out is None:
        raise DipgoError("give --ratio R and --out DIR (or --scores to only print each candidate's score)")
    pipe, source, calibration = _load(args)
    config = replace(config, guidance_scale=_guidance(args, source))
    data = _training_data(source, pipe, calibration, steps)
    result = prune(pipe, config, calibration=calibration, data=data, checkpoint=_checkpoint(args), progress=True)
    return _report_pruned(source, result.save(args.out), result, result.describe())


def cmd_depth(args) -> int:
    return _prune_model(args, "depth")


def _print_layer_scores(args) -> int:
    from .layers import layer_scores
    from .models.pipelines import denoiser_of

    pipe, source, calibration = _load(args)
    cands, scores, _ = layer_scores(pipe, args.criterion, calibration, n_images=args.calib_images,
                                    num_inference_steps=args.steps, guidance_scale=_guidance(args, source),
                                    progress=True)
    total = sum(p.numel() for p in denoiser_of(pipe).parameters())
    print(f"{'layer':<34}{'params':>10}{'share':>8}{'MACs/call':>12}{args.criterion + ' score':>18}")
    for c in sorted(cands, key=lambda c: scores[c.name]):
        print(f"{c.name:<34}{_fmt(c.params):>10}{c.params / total:>8.1%}{_fmt(c.macs):>12}{scores[c.name]:>18.6g}")
    return 0


def cmd_layers(args) -> int:
    return _prune_model(args, "layers")


def cmd_bench(args) -> int:
    from .evaluate.bench import BenchConfig, run_bench, write_reports

    kw = {}
    if args.models:
        kw["models"] = args.models
    for name in ("n", "batch", "out", "floor_psnr", "floor_fid", "device", "dtype", "scheduler", "effort"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.bases:
        kw["bases"] = args.bases
    if args.budgets:
        kw["budgets"] = args.budgets
    if args.methods:
        kw["families"] = [m.strip() for m in args.methods.split(",")]
    if args.report_only:
        report = json.loads(Path(args.report_only).read_text())
        report["config"].update({k: kw[k] for k in ("floor_psnr", "floor_fid") if k in kw})
        for path in write_reports(report, Path(args.report_only).parent):
            print(f"wrote {path}")
        return 0
    if args.search_only:
        kw["search_only"] = True
    cfg = BenchConfig.quick(**kw) if args.quick else BenchConfig(**kw)
    report = run_bench(cfg, progress=True)
    if cfg.search_only:
        print(json.dumps(report["searches"], indent=1))
        return 0
    if not world().main:
        return 0
    for path in write_reports(report, cfg.out):
        print(f"wrote {path}")
    return 0


def _calibration_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompts", default=None, metavar="FILE", help="calibration prompts, one per line (text models; "
                   "default: the model's dipgo.json, else a built-in generic set)")
    g.add_argument("--class-labels", default=None, help="calibration class ids, e.g. 1,5,207 or 0-9 (class-conditional "
                   "models; default: the model's dipgo.json, else all classes)")


def _distillation_args(p) -> None:
    """What layer and depth pruning share: distillation settings, calibration runs, output folder."""
    p.add_argument("--feature-kd", default="normalized", choices=("normalized", "plain", "none"))
    p.add_argument("--batch", type=types.BATCH, default=32)
    p.add_argument("--lr", type=types.LR, default=5e-4, help="peak learning rate")
    p.add_argument("--lr-schedule", default="cosine", choices=("cosine", "constant"),
                   help="cosine: warm-up, then decay to zero over the run")
    p.add_argument("--warmup", type=types.TRAIN_STEPS, default=None,
                   help="warm-up steps (default: a tenth of the run, at most 100)")
    p.add_argument("--ema", type=types.SHARE, default=0.999, help="moving average of the weights that the result "
                   "keeps (0: the last weights)")
    p.add_argument("--p-uncond", type=types.SHARE, default=0.1, help="share of training examples given the "
                   "unconditional conditioning, the branch classifier-free guidance calls (0: conditional only)")
    p.add_argument("--steps", type=types.STEPS, default=20, help="sampling steps of the calibration runs")
    p.add_argument("--calib-images", type=types.RUNS, default=8,
                   help="images whose sampling calls calibrate the criterion")
    p.add_argument("--guidance", type=types.GUIDANCE, default=None)
    p.add_argument("--checkpoint", default=None, help="training checkpoint (default OUT.distill.pt); resumes")
    p.add_argument("--out", default=None, help="output folder")
    _calibration_args(p)


def _model_command(sub, name: str, help: str):
    """A subcommand whose first argument is a MODEL."""
    parser = sub.add_parser(name, help=help)
    parser.add_argument("model", help="zoo name, diffusers folder or hub id")
    return parser


def _layers_parser(sub) -> None:
    """``dipgo layers``: its own settings, then the distillation settings it shares with ``dipgo depth``."""
    lay = _model_command(sub, "layers", help="LAPTOP-Diff: remove whole layers for good (one-shot criterion, optional "
                         "distillation); writes a pipeline folder")
    lay.add_argument("--ratio", type=types.RATIO, default=None, help="share of the denoiser's parameters to remove, in "
                     "(0, 1); with --by macs, share of its MACs per call")
    lay.add_argument("--criterion", default="output", help="output (default), magnitude, similarity, handcrafted")
    lay.add_argument("--by", default="params", choices=("params", "macs"), help="what --ratio is a share of")
    lay.add_argument("--method", default="knapsack", choices=("knapsack", "greedy"))
    lay.add_argument("--retrain-steps", type=types.TRAIN_STEPS, default=0, help="distillation steps (0: one-shot)")
    lay.add_argument("--scores", action="store_true", help="only print every candidate layer's score")
    _distillation_args(lay)
    lay.set_defaults(fn=cmd_layers)


def _depth_parser(sub) -> None:
    """``dipgo depth``: its own settings, then the distillation settings it shares with ``dipgo layers``."""
    dep = _model_command(sub, "depth", help="UPDP: linearise whole blocks progressively and merge each into one op; "
                         "writes a pipeline folder")
    dep.add_argument("--ratio", type=types.RATIO, default=None, help="share of the candidate blocks to merge (--mode "
                     "remove: to remove), in (0, 1); with --by macs / --by params, share of the denoiser's MACs per "
                     "call / parameters that pruning them saves")
    dep.add_argument("--by", default="depth", choices=("depth", "macs", "params"),
                     help="what --ratio is a share of: the candidate blocks (depth), or what pruning saves")
    dep.add_argument("--mode", default="progressive", choices=("progressive", "abrupt", "remove"),
                     help="progressive: UPDP, each block ramps to its linear form during training (default); "
                     "abrupt: linear from the first step; remove: plain block removal")
    dep.add_argument("--train-steps", type=types.TRAIN_STEPS, default=0, help="distillation steps (0: no training)")
    dep.add_argument("--ramp", type=types.RAMP, default=0.5, help="share of the training over which the blend factor "
                     "ramps 0 -> 1 (progressive)")
    dep.add_argument("--scores", action="store_true", help="only print every candidate block's score and savings")
    _distillation_args(dep)
    dep.set_defaults(fn=cmd_depth)


def _info_parser(sub) -> None:
    """dipgo info"""
    info = _model_command(sub, "info", help="blocks, parameters, MACs and measured latency per denoiser call")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument("--runs", type=types.RUNS, default=20, help="timed calls after warm-up (default 20)")
    _device_args(info)
    info.set_defaults(fn=cmd_info)


def _prune_parser(sub) -> None:
    """dipgo prune: the pruning pipeline"""
    prune = _model_command(sub, "prune", help="find a skip schedule for a MACs budget (held out) and write it as JSON")
    prune.add_argument("--ratio", type=types.RATIOS, default="0.8",
                       help="pruned share of MACs in (0, 1); several, comma-separated")
    prune.add_argument("--steps", type=types.SEARCH_STEPS, default=50, help="num_inference_steps the schedule is for")
    prune.add_argument("--scheduler", default="ddim", help="ddim, pndm (PLMS), dpm++, euler")
    prune.add_argument("--out", default="schedule.json")
    prune.add_argument("--effort", default="default", choices=("quick", "default", "thorough"),
                       help="the cost of every stage (held-out sampling runs, search iterations): quick for a "
                       "first look, default, thorough for a release")
    prune.add_argument("--iterations", type=types.SEARCH_ITERATIONS, default=None,
                       help="gradient search iterations; 0: none (default: the effort's, 0 at quick and default)")
    prune.add_argument("--evaluations", "--refine", dest="evaluations", type=types.RUNS, default=None, metavar="N",
                       help="held-out sampling runs for selection and refinement (default: the effort's)")
    prune.add_argument("--forecast", default="auto", choices=("auto", "0", "1", "2"),
                       help="what a skipped block returns: its last value (0), or a first- (1) or second-order "
                       "(2) Taylor forecast from its last computed values; auto: chosen on held-out images")
    prune.add_argument("--held-out", type=types.RUNS, default=None, metavar="N",
                       help="images per held-out sampling run (default: the effort's)")
    prune.add_argument("--batch", type=types.BATCH, default=None, help="images per search iteration (default: the "
                       "effort's)")
    prune.add_argument("--lr", type=types.LR, default=None, help="pruner learning rate (default 0.1; 0.02 when "
                       "several ratios share one search)")
    prune.add_argument("--loss", default=None, choices=("ssim", "l1", "l2"),
                       help="consistency loss of the search (default ssim: 1 - SSIM)")
    prune.add_argument("--guidance", type=types.GUIDANCE, default=None, help="CFG scale (default: the model card's)")
    prune.add_argument("--granularity", default=None, choices=("coarse", "fine"),
                       help="coarse (whole blocks, default) or fine (a UNet's resnets, attentions and resamplers; a "
                       "transformer's attention and feed-forward modules)")
    prune.add_argument("--grad-checkpointing", choices=("auto", "on", "off"), default="auto",
                       help="recompute each call in backward: about half the memory for about 1.5x the time "
                       "(auto: on for denoisers over 100M parameters)")
    prune.add_argument("--blocks", default=None, help="comma-separated submodule names (custom models)")
    prune.add_argument("--checkpoint", default=None, help="search checkpoint (default OUT.search.pt), "
                       "held-out values beside it (OUT.search.heldout.json); an interrupted prune resumes from them")
    prune.add_argument("--seed", type=types.SEED, default=0)
    _calibration_args(prune)
    _device_args(prune)
    prune.set_defaults(fn=cmd_prune)


def _show_and_sample_parsers(sub) -> None:
    """dipgo show and dipgo sample"""
    show = sub.add_parser("show", help="print what a schedule computes and reuses")
    show.add_argument("schedule")
    show.set_defaults(fn=cmd_show)

    sample = _model_command(sub, "sample", help="sample a grid of images (balanced over the conditions)")
    sample.add_argument("--schedule", default=None, help="a schedule from 'dipgo prune'")
    sample.add_argument("--compare", action="store_true", help="with --schedule: three rows, the full model, "
                        "dipgo, and fewer steps at the same MACs, each labelled with its PSNR against the full model")
    sample.add_argument("--n", "--num-images", dest="n", type=types.IMAGES, default=20, help="number of images")
    sample.add_argument("--seed", type=types.SEED, default=0)
    sample.add_argument("--steps", type=types.STEPS, default=None, help="num_inference_steps (default: the "
                        "schedule's or 50; another count than the schedule's maps its gates over normalised time)")
    sample.add_argument("--guidance", type=types.GUIDANCE, default=None, help="CFG scale (default: the model card's)")
    sample.add_argument("--label", type=types.INDEX, default=None, help="only this condition: an index into the "
                        "prompts or class labels (default: all, in turn)")
    sample.add_argument("--batch", type=types.BATCH, default=16)
    sample.add_argument("--out", default="grid.png")
    _calibration_args(sample)
    _device_args(sample)
    sample.set_defaults(fn=cmd_sample)


def _eval_parser(sub) -> None:
    """dipgo eval"""
    ev = _model_command(sub, "eval", help="a schedule or baseline against the full model: MACs, latency, FID, "
                        "accuracy, PSNR/SSIM (JSON)")
    ev.add_argument("--schedule", default=None, help="a schedule from 'dipgo prune'")
    ev.add_argument("--method", default=None, help="full | steps:K | deepcache:N[,branch=B,mode=nonuniform] | "
                    "fbcache:THRESHOLD[,impl=dipgo] | schedule:FILE | diffusers' own caches: "
                    "taylorseer:N[,order=1|2,warmup=3,scope=modules|blocks] | "
                    "magcache:THRESHOLD[,max_skip=3,retention=0.2,calib=4] (calibrated on the model first) | "
                    "seacache:THRESHOLD[,order=1,retention=1,end=1,max_skip=2] | "
                    "fastercache:N[,uncond=5,tmax=681,uncond_tmax=641] | pab:N[,cross=M,tmin=100,tmax=800]; "
                    "MagCache, SeaCache and FasterCache need a transformer denoiser (DiT, PixArt), not a UNet")
    ev.add_argument("--steps", type=types.STEPS, default=None,
                    help="base num_inference_steps (default: the schedule's or 50)")
    ev.add_argument("--scheduler", default=None, help="ddim (default), pndm, dpm++, euler")
    ev.add_argument("--n", "--num-images", dest="n", type=types.IMAGES, default=256,
                    help="images (balanced over the conditions); under torchrun write --num-images (torchrun "
                    "reads --n as one of its own options)")
    ev.add_argument("--seed", type=types.SEED, default=0)
    ev.add_argument("--guidance", type=types.GUIDANCE, default=None)
    ev.add_argument("--batch", type=types.BATCH, default=32)
    ev.add_argument("--json", default=None, help="also write the record here")
    _calibration_args(ev)
    _device_args(ev)
    ev.set_defaults(fn=cmd_eval)


def _bench_parser(sub) -> None:
    """dipgo bench"""
    bench = sub.add_parser("bench", help="sweep every method over MACs budgets and bases; tables, JSON, plot")
    bench.add_argument("models", nargs="*", help="zoo names, diffusers folders or hub ids (default: the zoo's models)")
    bench.add_argument("--quick", action="store_true", help="a few minutes: the zoo's SD model, DDIM-20, 2 budgets, "
                       "32 images")
    bench.add_argument("--bases", type=types.BASES, default=None,
                       help="comma-separated base step counts (default 50,20)")
    bench.add_argument("--budgets", type=types.BUDGETS, default=None,
                       help="comma-separated MACs reduction factors (default 2,3,4.4)")
    bench.add_argument("--methods", default=None, help="comma-separated families (default: all): dipgo, dipgo "
                       "reuse (no forecasting), fewer steps, DeepCache, DeepCache non-uniform, FBCache, TaylorSeer, "
                       "TaylorSeer order 2, MagCache, SeaCache")
    bench.add_argument("--scheduler", default=None, help="ddim (default), pndm (PLMS), dpm++, euler: the base "
                       "sampler every method is measured on")
    bench.add_argument("--n", "--num-images", dest="n", type=types.IMAGES, default=None,
                       help="images per point (--num-images under torchrun)")
    bench.add_argument("--batch", type=types.BATCH, default=None)
    bench.add_argument("--out", default=None, help="output folder (default out/bench)")
    bench.add_argument("--floor-psnr", type=types.DECIBELS, default=None,
                       help="NTIRE ranking floor: PSNR vs full (dB), default 30")
    bench.add_argument("--floor-fid", type=types.RELATIVE, default=None, help="NTIRE ranking floor: FID at most "
                       "this much worse than the full model's (relative), default 0.10")
    bench.add_argument("--effort", default=None, choices=("quick", "default", "thorough"),
                       help="the effort of each dipgo point's pruning pipeline, as `dipgo prune --effort` "
                       "(default: default)")
    bench.add_argument("--search-only", "--prune-only", dest="search_only", action="store_true",
                       help="only run the missing dipgo prunes (e.g. one "
                       "process per model, in parallel, before the timed run)")
    bench.add_argument("--report-only", default=None, metavar="JSON",
                       help="re-write the Markdown table and the plot from a bench JSON without measuring")
    _device_args(bench)
    bench.set_defaults(fn=cmd_bench)

class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument gives one line (``dipgo CMD: error: ...``, exit status 2), not the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dipgo", description="Cheaper sampling for diffusers pipelines (DiP-GO).")
    p.add_argument("--version", action="version", version=f"dipgo {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    _info_parser(sub)
    _prune_parser(sub)
    _show_and_sample_parsers(sub)
    _eval_parser(sub)
    _layers_parser(sub)
    _depth_parser(sub)

    _bench_parser(sub)
    return p


PARALLEL = ("prune", "eval", "bench")


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, ...; under a launcher a bare "
                   "'cuda' is each process's own GPU")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="weights and activations")


def main(argv: list[str] | None = None) -> int:
    from .malloc import tune_malloc
    from .models.pipelines import quiet_libraries

    quiet_libraries()
    tune_malloc()  # CPU runs stop re-faulting their activation memory on every call (see dipgo.malloc)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a bad argument: argparse has said why, on one line
        return 0 if done.code is None else done.code
    w = None
    try:
        w = world()
        if w.size > 1:
            if args.command not in PARALLEL:
                raise DipgoError(f"'dipgo {args.command}' runs in one process; of the commands only "
                                 f"{', '.join(PARALLEL)} split across processes (launch this one without torchrun)")
            if not w.main:  # one process speaks; the others' errors still reach stderr
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        code = args.fn(args)
        w.close()
        return code
    except (DipgoError, FileNotFoundError) as err:  # what the user can fix: one line, no traceback
        print(f"dipgo {args.command}: error: {_one_line(err)}", file=sys.stderr)
        if w is not None:
            w.close(wait=False)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug in dipgo: said as one, never passed off as a user error
        if os.environ.get("DIPGO_DEBUG") == "1":
            traceback.print_exc()
        print(f"dipgo: internal error: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        print(f"dipgo: this is a bug in dipgo {__version__}, not in the command; please report it with the command "
              "line and this message (DIPGO_DEBUG=1 shows the traceback)", file=sys.stderr)
        if w is not None:
            w.close(wait=False)
        return 1


def _one_line(err: BaseException) -> str:
    """An error's message on one line (a multi-line one, such as a schedule's list of mismatches, joined)."""
    text = ""
    for part in (line.strip(" -") for line in str(err).splitlines()):
        if part:
            text += part if not text else (" " if text.endswith(":") else "; ") + part
    return text or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
