"""Issue 11 benchmark: UPDP depth pruning on the zoo models at 2-3 depth reductions, progressive against
abrupt linearisation and plain block removal at the same training budget.

    python benchmarks/depth_bench.py mnist-dit            # quality pass (one model per process)
    python benchmarks/depth_bench.py mnist-sd
    python benchmarks/depth_bench.py --latency            # latency pass: alone on the machine
    python benchmarks/depth_bench.py --report             # md + png from the JSON files

Per model and depth ratio (share of the candidate blocks: DiT transformer blocks, UNet resnets) the same
blocks are chosen for every row (the training-free criterion: output loss of linearising each block
alone, then the knapsack) and each row is distilled from the full model for the same steps, batch and
learning rate on the zoo's own training data (normalised feature KD + output KD + task loss):

* progressive UPDP: activations and norms blended towards linear over the first half, then merged;
* abrupt: linear from the first step (DepthShrinker-style), then merged;
* remove + KD: the blocks removed (resnet -> shortcut, transformer block -> identity).

Quality: ``--n`` images (balanced digits, same seeds for every row), DDIM-``--steps``, FID against the
shipped MNIST statistics, classifier accuracy, PSNR against the full model's images. The latency pass
times the denoiser call of every distinct architecture at batch 1 and 16 images (CFG doubles the call
batch), paired with the full model in 9 interleaved passes, 2 threads, alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "benchmarks" / "results" / "depth"
OLD_RECIPE = ("constant learning rate, the last weights, features taught at every block (measured before the "
              "recipe of recipe.md)")
NEW_RECIPE = "cosine learning rate with warm-up, EMA 0.999 weights, features taught at the end of each removed run"
MODELS = ROOT / "out" / "depth-bench"  # pruned model folders (not committed: sizes)
RATIOS = {"mnist-dit": (0.25, 0.375, 0.5), "mnist-sd": (0.25, 0.5)}
MODES = ("progressive", "abrupt", "remove")
PASSES = 9
RUNS = {1: 200, 16: 20}  # calls timed per pass: about 1 s each


def quality_pass(model: str, args) -> None:
    import torch

    from dipgo import zoo
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.cache.search import Search, SearchConfig
    from dipgo.depth import depth_scores, prune_depth, save_depth
    from dipgo.evaluate.baselines import AppliedSchedule, Full
    from dipgo.evaluate.evaluation import Evaluator, Judge, compare
    from dipgo.layers import save_pruned
    from dipgo.models.pipelines import default_calibration, set_scheduler

    torch.set_num_threads(args.threads)
    pipe, source = zoo.load(model)
    set_scheduler(pipe, "ddim")
    cal = default_calibration(pipe, defaults=source.defaults)
    guidance = source.guidance_scale
    judge = Judge.from_source(source)
    common = dict(n_images=8, num_inference_steps=20, guidance_scale=guidance)
    report: dict = {"model": model, "n": args.n, "steps": args.steps, "train_steps": args.train_steps,
                    "batch": args.batch, "lr": args.lr, "ramp": args.ramp, "threads": args.threads, "rows": [],
                    "recipe": NEW_RECIPE}
    settings = ("n", "steps", "train_steps", "batch", "lr", "ramp", "recipe")
    path = OUT / f"{model}.json"
    if path.exists():  # an interrupted run: rows already measured with these settings are kept
        old = json.loads(path.read_text())
        if all(old.get(k) == report[k] for k in settings):
            report["rows"] = old["rows"]

    def save() -> None:
        path.write_text(json.dumps(report, indent=1))

    def evaluate(p, label: str, extra: dict, applied=None) -> dict:
        ev = Evaluator(p, args.n, 0, guidance, 32, cal, judge)
        try:
            run = ev.run(applied or Full().bind(p, args.steps, guidance), progress=False)
            q = ev.quality(run, full_run, progress=False)
        finally:
            ev.close()
        rec = compare(ev_full, run, full_run, q, q_full)
        rec.update(extra, label=label, macs_speedup=full_run.macs / run.macs)
        print(f"{model} {label}: MACs {rec['macs_speedup']:.2f}x, FID {rec['fid']:.2f}, acc {rec['cond_acc']:.3f}, "
              f"PSNR {rec['psnr_vs_full']:.2f}", flush=True)
        report["rows"].append(rec)
        save()
        return rec

    OUT.mkdir(parents=True, exist_ok=True)
    ev_full = Evaluator(pipe, args.n, 0, guidance, 32, cal, judge)
    full_run = ev_full.run(Full().bind(pipe, args.steps, guidance), progress=False)
    q_full = ev_full.quality(full_run, None, progress=False)
    ev_full.close()
    den = getattr(pipe, "unet", None) or pipe.transformer
    report["full"] = dict(q_full, params=sum(p.numel() for p in den.parameters()), macs=full_run.macs)
    t0 = time.perf_counter()
    scored = depth_scores(pipe, cal, progress=False, **common)
    report["criterion_seconds"] = round(time.perf_counter() - t0, 1)
    report["scores"] = scored[1]
    report["candidates"] = [{"name": c.name, "kind": c.kind, "params_saved": c.params, "macs_saved": c.macs}
                            for c in scored[0]]
    save()
    data = source.training_set(pipe, cal)
    for ratio in RATIOS[model]:
        for mode in MODES:
            label = {"progressive": "progressive UPDP", "abrupt": "abrupt linearisation",
                     "remove": "remove + KD"}[mode]
            if any(r["label"] == label and r["ratio"] == ratio for r in report["rows"]):
                continue
            tag = f"{model}-r{ratio:g}-{mode}"
            res = prune_depth(pipe, ratio, mode=mode, train_steps=args.train_steps, calibration=cal, data=data,
                              distill_kwargs={"batch": args.batch, "lr": args.lr}, ramp_share=args.ramp,
                              scored=scored, checkpoint=str(MODELS / f"{tag}.distill.pt"), progress=True,
                              num_inference_steps=20, guidance_scale=guidance)
            (save_pruned if mode == "remove" else save_depth)(res.pipe, MODELS / tag, res.info())
            evaluate(res.pipe, label, {"ratio": ratio, "mode": mode, "params": res.params, "blocks":
                                       res.selection.names, "folder": tag, "train_seconds": res.seconds.get("train"),
                                       "final_loss": res.history[-1] if res.history else None})
    if model == "mnist-dit" and not any(r["label"].startswith("DiP-GO") for r in report["rows"]):
        from dipgo import load_pruned

        ratio = RATIOS[model][1]
        rec = next(r for r in report["rows"] if r["label"] == "progressive UPDP" and r["ratio"] == ratio)
        pruned = load_pruned(MODELS / rec["folder"])
        set_scheduler(pruned, "ddim")
        cfg = SearchConfig(ratio=0.6, num_inference_steps=args.steps, guidance_scale=guidance, iterations=60,
                           batch=2)
        result = Search(pruned, cfg, calibration=cal).run(progress=False)
        schedule = schedule_at_ratio(result, 0.6)
        schedule.save(OUT / f"{model}-combined.schedule.json")
        evaluate(pruned, "DiP-GO 0.6 on progressive UPDP", {"ratio": ratio, "mode": "progressive+dipgo",
                                                            "params": rec["params"], "blocks": rec["blocks"],
                                                            "search_seconds": round(result.seconds, 1)},
                 applied=AppliedSchedule(pruned, schedule, "dipgo"))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    save()


def _stock_embedding(pipe) -> bool:
    """Switch the merged DiT blocks of ``pipe`` to the stock conditioning embedding (diffusers' own module
    instead of the merged op's fast path); False if it has none."""
    from dipgo.models.pipelines import denoiser_of

    fast = [m for m in denoiser_of(pipe).modules() if getattr(m, "fast", False) is True]
    for m in fast:
        m.fast = False
    return bool(fast)


def latency_pass() -> None:
    import copy

    import torch

    from dipgo import load_pruned, zoo
    from dipgo.layers.candidates import total_cost
    from dipgo.models.costs import measure_latency
    from dipgo.models.pipelines import capture_denoiser_call, default_calibration, denoiser_of

    torch.set_num_threads(2)
    for model in RATIOS:
        path = OUT / f"{model}.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        pipe, source = zoo.load(model)
        cal = default_calibration(pipe, defaults=source.defaults)
        cfg = 2 if (source.guidance_scale or 1.0) > 1.0 else 1
        call = capture_denoiser_call(pipe, cal)

        def latency(p, images: int, call=call, cfg=cfg) -> float:
            args, kwargs = call
            b = images * cfg

            def rep(v):
                return v.repeat(b, *[1] * (v.dim() - 1)) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == 1 \
                    else v

            args = tuple(rep(a) for a in args)
            kwargs = {k: rep(v) for k, v in kwargs.items()}
            den = denoiser_of(p)
            with torch.no_grad():
                return measure_latency(lambda: den(*args, **kwargs), runs=RUNS[images], warmup=5).median_ms

        # Calls of a few ms drift between passes by up to +-15 % (thread wake-ups, allocator, caches): every
        # architecture is timed in PASSES interleaved passes, each pass's speedup is the full model's time
        # over the architecture's in that same pass (paired, so drifts cancel), and the median of the pass
        # speedups is reported with their range. Merged DiT blocks are also timed with the stock embedding,
        # to show how much of their speed is the fast path (which would speed up the stock blocks too).
        archs: dict[tuple, object] = {("full",): pipe}
        for row in report["rows"]:
            if row["mode"] in MODES:
                key = (row["mode"] == "remove", tuple(row["blocks"]))
                if key not in archs:
                    archs[key] = load_pruned(MODELS / row["folder"])
                    stock = copy.deepcopy(archs[key])
                    if _stock_embedding(stock):
                        archs[key + ("stock",)] = stock
        costs = {k: total_cost(denoiser_of(p), call) for k, p in archs.items()}
        passes: dict[tuple, dict[int, list[float]]] = {k: {1: [], 16: []} for k in archs}
        for _ in range(PASSES):
            for key, p in archs.items():
                for b in (1, 16):
                    passes[key][b].append(latency(p, b))
        measured = {k: {b: statistics.median(v[b]) for b in (1, 16)} for k, v in passes.items()}
        spread = {k: {b: [min(v[b]), max(v[b])] for b in (1, 16)} for k, v in passes.items()}
        ratios = {k: {b: [f / x for f, x in zip(passes[("full",)][b], v[b], strict=True)] for b in (1, 16)}
                  for k, v in passes.items()}
        full = measured[("full",)]
        report["full"]["latency_ms"], report["full"]["latency_range_ms"] = full, spread[("full",)]
        for row in report["rows"]:
            if row["mode"] not in MODES:
                continue
            key = (row["mode"] == "remove", tuple(row["blocks"]))
            row["latency_ms"], row["latency_range_ms"] = measured[key], spread[key]
            row["latency_speedup"] = {b: statistics.median(ratios[key][b]) for b in (1, 16)}
            row["latency_speedup_range"] = {b: [min(ratios[key][b]), max(ratios[key][b])] for b in (1, 16)}
            if key + ("stock",) in measured:
                row["latency_speedup_stock_embedding"] = {b: statistics.median(ratios[key + ("stock",)][b])
                                                          for b in (1, 16)}
            # architecture facts of today's merged ops (a call's MACs: every call of a static model is alike)
            row["params"] = costs[key][0]
            row["macs_speedup"] = costs[("full",)][1] / costs[key][1]
        report["latency_note"] = (f"denoiser call at 1 and 16 images (x{cfg} for CFG), median of {RUNS[1]} (batch 1) "
                                  f"or {RUNS[16]} (16 images) calls after 5 warm-up, {PASSES} interleaved passes; the "
                                  "speedup is the median over passes of the full model's time over the row's in the "
                                  "same pass (range over passes in brackets), 2 threads, measured alone on the "
                                  "machine, once per distinct architecture; params and MACs re-measured on the "
                                  "loaded architecture")
        report["architecture_remeasured"] = True
        path.write_text(json.dumps(report, indent=1))
        print(f"{model}: latency measured for {len(measured) - 1} architectures")
        _remeasure_recipe(model, costs[("full",)], call)


def _remeasure_recipe(model: str, full: tuple[int, int], call) -> None:
    """Params and MACs of the merged rows of ``recipe.json`` on today's merged ops (no timing); ``full``:
    the full model's (params, MACs) per call."""
    from dipgo import load_pruned
    from dipgo.layers.candidates import total_cost
    from dipgo.models.pipelines import denoiser_of

    path = OUT / "recipe.json"
    if not path.exists():
        return
    rows = json.loads(path.read_text())
    for row in rows:
        if row["model"] == model and row.get("mode") in ("progressive", "abrupt") and (MODELS / row["folder"]).exists():
            row["params"], macs = total_cost(denoiser_of(load_pruned(MODELS / row["folder"])), call)
            row["macs_speedup"] = full[1] / macs
    path.write_text(json.dumps(rows, indent=1))


def write_report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# UPDP depth pruning (issue 11)", ""]
    reports = [json.loads((OUT / f"{m}.json").read_text()) for m in RATIOS if (OUT / f"{m}.json").exists()]
    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4), squeeze=False)
    for ax, rep in zip(axes[0], reports, strict=True):
        f = rep["full"]
        lat_full = f.get("latency_ms", {})
        lines += [f"## {rep['model']}", "",
                  f"Full model: {f['params'] / 1e6:.3f} M parameters, FID {f['fid']:.2f}, accuracy {f['cond_acc']:.1%} "
                  f"({rep['n']} images, DDIM-{rep['steps']}); denoiser call "
                  + (f"{lat_full['1']:.2f} ms at batch 1, {lat_full['16']:.2f} ms at 16 images. " if lat_full else "")
                  + f"Training: {rep['train_steps']} steps x batch {rep['batch']}, lr {rep['lr']}, "
                  + f"{rep.get('recipe', OLD_RECIPE)}, progressive ramp "
                  f"over the first {rep['ramp']:.0%}, on the zoo's training data. Latency: "
                  + rep.get("latency_note", "not measured") + ".", ""]
        if any(r.get("latency_speedup_stock_embedding") for r in rep["rows"]):
            lines += ["Merged DiT blocks compute their conditioning through a fast path (the sinusoid's frequencies "
                      "computed once, functional calls; the same map). *Stock embedding*: the same merged model "
                      "timed with diffusers' own embedding module, i.e. without that part of the speed-up, which "
                      "would speed up the full model's blocks as well.", ""]
        lines += ["| blocks pruned | row | params | MACs speedup | latency speedup b1 (range over passes) | b16 | "
                  "FID | accuracy | PSNR vs full |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rep["rows"]:
            ls, rng = r.get("latency_speedup") or {}, r.get("latency_range_ms") or {}
            paired = r.get("latency_speedup_range")

            def cell(b, ls=ls, rng=rng, lat_full=lat_full, paired=paired):
                if not ls:
                    return "-"
                if paired:
                    return f"{ls[b]:.2f}x ({paired[b][0]:.2f}-{paired[b][1]:.2f})"
                if b not in rng:
                    return f"{ls[b]:.2f}x"
                full_ms = lat_full[b]
                return f"{ls[b]:.2f}x ({full_ms / rng[b][1]:.2f}-{full_ms / rng[b][0]:.2f})"

            b1, b16 = cell("1"), cell("16")
            stock = r.get("latency_speedup_stock_embedding")
            if stock:
                b1 += f"; stock embedding {stock['1']:.2f}x"
            lines.append(f"| {len(r['blocks'])}/{len(rep['candidates'])} | {r['label']} | {r['params'] / 1e6:.3f} M | "
                         f"{r['macs_speedup']:.2f}x | {b1} | {b16} | {r['fid']:.2f} | {r['cond_acc']:.1%} | "
                         f"{r['psnr_vs_full']:.2f} dB |")
        lines.append("")
        if rep.get("architecture_remeasured") and any(r["label"].startswith("DiP-GO") for r in rep["rows"]):
            lines += ["The DiP-GO row was measured before merged DiT blocks folded their norm into the adaLN map "
                      "(its params and MACs are of the merged op of then, with 0.15 M more parameters and the "
                      "attention's modulation still computed); the latency pass re-measured only the static rows.", ""]
        for mode, marker in (("progressive", "o-"), ("abrupt", "s--"), ("remove", "^:")):
            rows = [r for r in rep["rows"] if r["mode"] == mode]
            ax.plot([len(r["blocks"]) / len(rep["candidates"]) for r in rows], [r["fid"] for r in rows], marker,
                    label=mode)
        ax.axhline(f["fid"], color="k", lw=0.8, label="full model")
        ax.axhline(1.1 * f["fid"], color="k", lw=0.8, ls="--", label="full + 10 %")
        ax.set_xlabel("share of candidate blocks pruned")
        ax.set_ylabel(f"FID ({rep['n']} images)")
        ax.set_title(rep["model"])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "depth.png", dpi=110)
    (OUT / "depth.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ramp", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latency", action="store_true")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if args.latency:
        latency_pass()
    elif args.report:
        write_report()
    else:
        quality_pass(args.model or "mnist-dit", args)


if __name__ == "__main__":
    main()
