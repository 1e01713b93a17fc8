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
batch), eager and under torch.compile, paired with the full model (alternating chunks of calls, 9 passes),
2 threads, alone on the machine.
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
RUNS = {1: 200, 16: 20}  # calls timed per pass and row: about 1 s each
CHUNKS = 10  # a row and the full model alternate every RUNS / CHUNKS calls (about 0.1 s)


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


def latency_pass(compiled: bool = True, models: list[str] | None = None) -> None:
    import copy

    import torch
    import torch._dynamo

    from dipgo import load_pruned, zoo
    from dipgo.layers.candidates import total_cost
    from dipgo.models.pipelines import capture_denoiser_call, default_calibration, denoiser_of

    # every (architecture, batch) is its own compiled variant of the same forward: allow them all, and fail
    # rather than fall back to eager silently
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 1024
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    torch.set_num_threads(2)
    for model in models or RATIOS:
        path = OUT / f"{model}.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        pipe, source = zoo.load(model)
        cal = default_calibration(pipe, defaults=source.defaults)
        cfg = 2 if (source.guidance_scale or 1.0) > 1.0 else 1
        call = capture_denoiser_call(pipe, cal)

        def inputs(images: int, call=call, cfg=cfg) -> tuple[tuple, dict]:
            args, kwargs = call
            b = images * cfg

            def rep(v):
                return v.repeat(b, *[1] * (v.dim() - 1)) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == 1 \
                    else v

            return tuple(rep(a) for a in args), {k: rep(v) for k, v in kwargs.items()}

        calls = {b: inputs(b) for b in (1, 16)}

        def paired(base_fn, fn, images: int, calls=calls) -> tuple[float, float]:
            """Median ms of ``base_fn`` and ``fn`` over RUNS[images] calls each, timed in CHUNKS alternating
            chunks (base, fn, base, ...) so that drifts longer than a chunk hit both alike."""
            args, kwargs = calls[images]
            n = max(1, RUNS[images] // CHUNKS)
            times: tuple[list[float], list[float]] = ([], [])
            with torch.no_grad():
                for f in (base_fn, fn):
                    for _ in range(3):
                        f(*args, **kwargs)
                for _ in range(CHUNKS):
                    for f, store in zip((base_fn, fn), times, strict=True):
                        for _ in range(n):
                            t0 = time.perf_counter()
                            f(*args, **kwargs)
                            store.append(time.perf_counter() - t0)
            return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3

        # Calls of a few ms drift by up to +-15 % over seconds (thread wake-ups, allocator, caches): every
        # architecture is timed against the full model in alternating chunks of about 0.1 s, PASSES times over;
        # each pass's speedup is the full model's median over the architecture's (paired, so drifts cancel),
        # and the median of the pass speedups is reported with their range. Merged DiT blocks are also timed
        # with the stock embedding, to show how much of their speed is the fast path (which would speed up the
        # stock blocks too).
        archs: dict[tuple, object] = {("full",): pipe}
        # the architectures of this report's rows, then those of today's recipe rows (recipe.json) that differ
        recipe = [r for r in _recipe_rows(model)[0] if (MODELS / r["folder"]).exists()]
        extra = [{"mode": r["mode"], "blocks": r["layers"], "folder": r["folder"]} for r in recipe]
        for row in report["rows"] + extra:
            if row["mode"] in MODES:
                key = (row["mode"] == "remove", tuple(row["blocks"]))
                if key not in archs:
                    archs[key] = load_pruned(MODELS / row["folder"])
                    stock = copy.deepcopy(archs[key])
                    if _stock_embedding(stock):
                        archs[key + ("stock",)] = stock
        costs = {k: total_cost(denoiser_of(p), call) for k, p in archs.items()}
        timed = {k: {b: denoiser_of(p) for b in (1, 16)} for k, p in archs.items()}
        if compiled:
            # The same architectures under torch.compile (inductor, static shapes, one compiled callable per
            # batch): a runtime that fuses elementwise ops and drops per-op dispatch, as deployments use.
            # Every compiled call is checked against the eager one before it is timed.
            for key in [k for k in archs if "stock" not in k]:
                for b in (1, 16):
                    eager = denoiser_of(archs[key])
                    fn = torch.compile(eager, dynamic=False)
                    args, kwargs = calls[b]
                    with torch.no_grad():
                        got, ref = fn(*args, **kwargs), eager(*args, **kwargs)
                    got, ref = (o.sample if hasattr(o, "sample") else o[0] for o in (got, ref))
                    err = float((got - ref).abs().max() / ref.abs().max())
                    if err > 1e-3:
                        raise RuntimeError(f"compiled {key[:1]} at {b} images differs from eager by {err:.2e}")
                    timed[key + ("compiled",)] = {**timed.get(key + ("compiled",), {}), b: fn}
            print(f"{model}: compiled {len(timed) - len(archs)} architectures", flush=True)
        base = {k: ("full", "compiled") if "compiled" in k else ("full",) for k in timed}
        passes: dict[tuple, dict[int, list[float]]] = {k: {1: [], 16: []} for k in timed}
        ratios: dict[tuple, dict[int, list[float]]] = {k: {1: [], 16: []} for k in timed}
        for _ in range(PASSES):
            for key, fns in timed.items():
                if key == base[key]:
                    continue
                for b in (1, 16):
                    ms_base, ms = paired(timed[base[key]][b], fns[b], b)
                    passes[key][b].append(ms)
                    passes[base[key]][b].append(ms_base)
                    ratios[key][b].append(ms_base / ms)
        measured = {k: {b: statistics.median(v[b]) for b in (1, 16)} for k, v in passes.items()}
        spread = {k: {b: [min(v[b]), max(v[b])] for b in (1, 16)} for k, v in passes.items()}
        full = measured[("full",)]
        report["full"]["latency_ms"], report["full"]["latency_range_ms"] = full, spread[("full",)]
        if ("full", "compiled") in measured:
            report["full"]["latency_compiled_ms"] = measured[("full", "compiled")]
        known = {(r["mode"] == "remove", tuple(r["blocks"])) for r in report["rows"] if r["mode"] in MODES}
        report["recipe_architectures"] = [e for e in extra if (e["mode"] == "remove", tuple(e["blocks"])) not in known]
        for row in report["rows"] + report["recipe_architectures"]:
            if row["mode"] not in MODES:
                continue
            key = (row["mode"] == "remove", tuple(row["blocks"]))
            row["latency_ms"], row["latency_range_ms"] = measured[key], spread[key]
            row["latency_speedup"] = {b: statistics.median(ratios[key][b]) for b in (1, 16)}
            row["latency_speedup_range"] = {b: [min(ratios[key][b]), max(ratios[key][b])] for b in (1, 16)}
            if key + ("stock",) in measured:
                row["latency_speedup_stock_embedding"] = {b: statistics.median(ratios[key + ("stock",)][b])
                                                          for b in (1, 16)}
            if key + ("compiled",) in measured:
                c = key + ("compiled",)
                row["latency_compiled_ms"] = measured[c]
                row["latency_speedup_compiled"] = {b: statistics.median(ratios[c][b]) for b in (1, 16)}
                row["latency_speedup_compiled_range"] = {b: [min(ratios[c][b]), max(ratios[c][b])] for b in (1, 16)}
            # architecture facts of today's merged ops (a call's MACs: every call of a static model is alike)
            row["params"] = costs[key][0]
            row["macs_speedup"] = costs[("full",)][1] / costs[key][1]
        report["latency_note"] = (f"denoiser call at 1 and 16 images (x{cfg} for CFG); in each of {PASSES} passes the "
                                  f"row and the full model are timed {RUNS[1]} (batch 1) or {RUNS[16]} (16 images) "
                                  f"calls each, in {CHUNKS} alternating chunks after 3 warm-up calls; the speedup is "
                                  "the median over passes of the full model's median time over the row's in that "
                                  "pass (range over passes in brackets), 2 threads, measured alone on the "
                                  "machine, once per distinct architecture; params and MACs re-measured on the "
                                  "loaded architecture" + ("; *compiled*: the same calls under torch.compile "
                                  "(inductor, static shapes), paired with the compiled full model, each compiled "
                                  "output checked against eager first" if compiled else ""))
        report["architecture_remeasured"] = True
        path.write_text(json.dumps(report, indent=1))
        print(f"{model}: latency measured for {len(measured) - 1} architectures")
        _remeasure_recipe(model, costs, call)


def _remeasure_recipe(model: str, costs: dict[tuple, tuple[int, int]], call) -> None:
    """Params and MACs of the merged rows of ``recipe.json`` on today's merged ops (no timing). ``costs``: the
    latency pass's (params, MACs) per call by architecture key, the full model's under ``("full",)``; a row
    whose architecture it lacks is loaded and counted here."""
    from dipgo import load_pruned
    from dipgo.layers.candidates import total_cost
    from dipgo.models.pipelines import denoiser_of

    path = OUT / "recipe.json"
    if not path.exists():
        return
    rows = json.loads(path.read_text())
    for row in rows:
        if row["model"] != model or row.get("mode") not in ("progressive", "abrupt"):
            continue
        cost = costs.get((False, tuple(row["layers"])))
        if cost is None and (MODELS / row["folder"]).exists():
            cost = total_cost(denoiser_of(load_pruned(MODELS / row["folder"])), call)
        if cost is not None:
            row["params"], row["macs_speedup"] = cost[0], costs[("full",)][1] / cost[1]
    path.write_text(json.dumps(rows, indent=1))


def _latency_cells(r: dict, lat_full: dict, compiled: bool) -> str:
    """The latency columns of one row: eager batch 1 (with the stock-embedding figure) and 16 images, then, if
    the report has them, the compiled ones; each a paired speedup with its range over passes."""
    ls, rng, paired = r.get("latency_speedup") or {}, r.get("latency_range_ms") or {}, r.get("latency_speedup_range")

    def cell(b: str) -> str:
        if not ls:
            return "-"
        if paired:
            return f"{ls[b]:.2f}x ({paired[b][0]:.2f}-{paired[b][1]:.2f})"
        if b not in rng:
            return f"{ls[b]:.2f}x"
        return f"{ls[b]:.2f}x ({lat_full[b] / rng[b][1]:.2f}-{lat_full[b] / rng[b][0]:.2f})"

    b1 = cell("1")
    if r.get("latency_speedup_stock_embedding"):
        b1 += f"; stock embedding {r['latency_speedup_stock_embedding']['1']:.2f}x"
    cells = [b1, cell("16")]
    if compiled:
        cs, cr = r.get("latency_speedup_compiled"), r.get("latency_speedup_compiled_range")
        cells += [f"{cs[b]:.2f}x ({cr[b][0]:.2f}-{cr[b][1]:.2f})" if cs else "-" for b in ("1", "16")]
    return " | ".join(cells)


def _table_head(compiled: bool, extra: str = "") -> list[str]:
    head = " b1 compiled | b16 compiled |" if compiled else ""
    return ["| blocks pruned | row | params | MACs speedup | latency speedup b1 (range over passes) | b16 |" + head
            + f" FID | accuracy | PSNR vs full |{extra}",
            "|---|---|---|---|---|---|" + "---|" * (2 * compiled) + "---|---|---|" + "---|" * bool(extra)]


def _recipe_rows(model: str) -> tuple[list[dict], list[dict]]:
    """``recipe.json``'s depth rows for ``model`` at today's recipe (3000 steps, unconditional 10 %): the main
    runs (the default ramp, training seed 0) and the others (another ramp or seed) of the same points."""
    path = OUT / "recipe.json"
    rows = [r for r in json.loads(path.read_text()) if r["model"] == model and r.get("method") == "depth"
            and r.get("p_uncond")] if path.exists() else []
    main = [r for r in rows if not r.get("ramp") and not r.get("seed")]
    order = {m: i for i, m in enumerate(MODES)}
    main.sort(key=lambda r: (r["ratio"], order[r["mode"]]))
    return main, [r for r in rows if r not in main]


def write_report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# UPDP depth pruning (issue 11)", ""]
    reports = [json.loads((OUT / f"{m}.json").read_text()) for m in RATIOS if (OUT / f"{m}.json").exists()]
    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4), squeeze=False)
    for ax, rep in zip(axes[0], reports, strict=True):
        f = rep["full"]
        lat_full, cf = f.get("latency_ms", {}), f.get("latency_compiled_ms", {})
        comp = any(r.get("latency_speedup_compiled") for r in rep["rows"])
        n_cand = len(rep["candidates"])
        lines += [f"## {rep['model']}", "",
                  f"Full model: {f['params'] / 1e6:.3f} M parameters, FID {f['fid']:.2f}, accuracy {f['cond_acc']:.1%} "
                  f"({rep['n']} images, DDIM-{rep['steps']}); denoiser call "
                  + (f"{lat_full['1']:.2f} ms at batch 1, {lat_full['16']:.2f} ms at 16 images" if lat_full else "")
                  + (f" (compiled: {cf['1']:.2f} ms and {cf['16']:.2f} ms)" if cf else "") + ". Latency: "
                  + rep.get("latency_note", "not measured") + ".", ""]
        if any(r.get("latency_speedup_stock_embedding") for r in rep["rows"]):
            lines += ["Merged DiT blocks compute their conditioning through a fast path (the sinusoid's frequencies "
                      "computed once, functional calls; the same map). *Stock embedding*: the same merged model "
                      "timed with diffusers' own embedding module, i.e. without that part of the speed-up, which "
                      "would speed up the full model's blocks as well.", ""]
        if comp:
            lines += ["*Compiled*: the same denoiser calls under `torch.compile` (inductor, static shapes), each "
                      "speedup paired with the compiled full model in the same pass. Eager PyTorch pays a fixed "
                      "dispatch cost per op, which a merged block's few small ops feel most at batch 1; a compiled "
                      "runtime fuses them, as a deployment would.", ""]
        # latency belongs to an architecture: the same blocks in the same form, whatever the training
        arch = {(r["mode"], tuple(r["blocks"])): r for r in rep["rows"] + rep.get("recipe_architectures", [])
                if r["mode"] in MODES}
        main, others = _recipe_rows(rep["model"])
        if main:
            r0 = main[0]
            lines += [f"### Today's recipe: {r0['retrain_steps']} steps x batch {r0['batch']}, lr {r0['lr']:g}, "
                      f"{NEW_RECIPE}, unconditional {r0['p_uncond']:.0%}", "",
                      "From `recipe.json` (`benchmarks/layers_recipe.py --method depth`), evaluated as below; the "
                      "latency columns are those of the same architecture in the table below.", ""]
            lines += _table_head(comp, " training |")
            for r in main:
                timed = arch.get((r["mode"], tuple(r["layers"])), {})
                lines.append(f"| {len(r['layers'])}/{n_cand} | {r['label'].split(',')[0]} | {r['params'] / 1e6:.3f} M "
                             f"| {r['macs_speedup']:.2f}x | {_latency_cells(timed, lat_full, comp)} | {r['fid']:.2f} | "
                             f"{r['cond_acc']:.1%} | {r['psnr_vs_full']:.2f} dB | "
                             f"{r['retrain_seconds'] / 60:.1f} min |")
            lines.append("")
            if others:
                lines += ["Other runs of the same points (the spread a single run carries):", ""]
                lines += [f"- {len(r['layers'])}/{n_cand}, {r['label'].split(',')[0]}, "
                          + ", ".join(x.strip() for x in r["label"].split(",")[5:])
                          + f": FID {r['fid']:.2f}, accuracy {r['cond_acc']:.1%}, PSNR {r['psnr_vs_full']:.2f} dB"
                          for r in others]
                lines.append("")
            lines += [f"### The first recipe: {rep['train_steps']} steps", ""]
        lines += [f"Training: {rep['train_steps']} steps x batch {rep['batch']}, lr {rep['lr']}, "
                  f"{rep.get('recipe', OLD_RECIPE)}, progressive ramp over the first {rep['ramp']:.0%}, on the zoo's "
                  "training data.", ""]
        lines += _table_head(comp)
        for r in rep["rows"]:
            lines.append(f"| {len(r['blocks'])}/{n_cand} | {r['label']} | {r['params'] / 1e6:.3f} M | "
                         f"{r['macs_speedup']:.2f}x | {_latency_cells(r, lat_full, comp)} | {r['fid']:.2f} | "
                         f"{r['cond_acc']:.1%} | {r['psnr_vs_full']:.2f} dB |")
        lines.append("")
        if rep.get("architecture_remeasured") and any(r["label"].startswith("DiP-GO") for r in rep["rows"]):
            lines += ["The DiP-GO row was measured before merged DiT blocks folded their norm into the adaLN map "
                      "(its params and MACs are of the merged op of then, with 0.15 M more parameters and the "
                      "attention's modulation still computed); the latency pass re-measured only the static rows.", ""]
        for mode, marker in (("progressive", "o-"), ("abrupt", "s--"), ("remove", "^:")):
            rows = [r for r in (main or rep["rows"]) if r["mode"] == mode]
            blocks = [len(r.get("layers") or r["blocks"]) / n_cand for r in rows]
            ax.plot(blocks, [r["fid"] for r in rows], marker, label=mode)
        ax.axhline(f["fid"], color="k", lw=0.8, label="full model")
        ax.axhline(1.1 * f["fid"], color="k", lw=0.8, ls="--", label="full + 10 %")
        ax.set_xlabel("share of candidate blocks pruned")
        ax.set_ylabel(f"FID ({rep['n']} images" + (", today's recipe)" if main else ")"))
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
    p.add_argument("--no-compile", action="store_true", help="latency pass: eager only (no torch.compile columns)")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if args.latency:
        latency_pass(compiled=not args.no_compile, models=[args.model] if args.model else None)
    elif args.report:
        write_report()
    else:
        quality_pass(args.model or "mnist-dit", args)


if __name__ == "__main__":
    main()
