"""UPDP depth pruning on the zoo models at 2-3 depth reductions, progressive against abrupt linearisation and
plain block removal at the same training budget.

    python -m benchmarks.depth_pruning mnist-dit            # quality pass (one model per process)
    python -m benchmarks.depth_pruning mnist-sd
    python -m benchmarks.depth_pruning --latency            # latency pass: alone on the machine
    python -m benchmarks.depth_pruning --report             # md + png from the JSON files

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
batch), eager and under torch.compile, paired with the full model (alternating chunks of calls, PASSES
passes), 2 threads, alone on the machine.
"""

from __future__ import annotations

import statistics
import time

from benchmarks import harness as h

OUT = h.RESULTS / "depth"
OLD_RECIPE = ("constant learning rate, the last weights, features taught at every block (measured before the "
              "recipe of recipe.md)")
NEW_RECIPE = "cosine learning rate with warm-up, EMA 0.999 weights, features taught at the end of each removed run"
MODELS = h.WORK / "depth-bench"  # pruned model folders (not committed: sizes)
RATIOS = {"mnist-dit": (0.25, 0.375, 0.5), "mnist-sd": (0.25, 0.5)}
MODES = ("progressive", "abrupt", "remove")
LABELS = {"progressive": "progressive UPDP", "abrupt": "abrupt linearisation", "remove": "remove + KD"}
SETTINGS = ("n", "steps", "train_steps", "batch", "lr", "ramp", "recipe")
PASSES = 9
BATCHES = (1, 16)  # images per call; CFG doubles the rows
RUNS = {1: 200, 16: 20}  # calls timed per pass and row (more where a call is cheaper)
CHUNKS = 10  # a row and the full model alternate every RUNS / CHUNKS calls
WARMUP = 3


# ----------------------------------------------------------------------------------------- quality pass
def quality_pass(model: str, args) -> None:
    from dipgo.depth import depth_scores, prune_depth, save_depth
    from dipgo.layers import save_pruned
    from dipgo.models.pipelines import denoiser_of

    h.set_threads(args.threads)
    m = h.Model(model)
    common = dict(n_images=8, num_inference_steps=20, guidance_scale=m.guidance)
    report: dict = {"model": model, "n": args.n, "steps": args.steps, "train_steps": args.train_steps,
                    "batch": args.batch, "lr": args.lr, "ramp": args.ramp, "threads": args.threads, "rows": [],
                    "recipe": NEW_RECIPE}
    rows = h.RowReport(OUT / f"{model}.json", report, SETTINGS)
    q = h.QualityPass(m, args.n, args.steps)
    report["full"] = dict(q.q_full, params=sum(p.numel() for p in denoiser_of(m.pipe).parameters()),
                          macs=q.full.macs)
    t0 = time.perf_counter()
    scored = depth_scores(m.pipe, m.calibration, progress=False, **common)
    report["criterion_seconds"] = round(time.perf_counter() - t0, 1)
    report["scores"] = scored[1]
    report["candidates"] = [{"name": c.name, "kind": c.kind, "params_saved": c.params, "macs_saved": c.macs}
                            for c in scored[0]]
    rows.save()
    data = m.source.training_set(m.pipe, m.calibration)
    for ratio in RATIOS[model]:
        for mode in MODES:
            if rows.find(label=LABELS[mode], ratio=ratio):
                continue
            tag = f"{model}-r{ratio:g}-{mode}"
            res = prune_depth(m.pipe, ratio, mode=mode, train_steps=args.train_steps, calibration=m.calibration,
                              data=data, distill_kwargs={"batch": args.batch, "lr": args.lr}, ramp_share=args.ramp,
                              scored=scored, checkpoint=str(MODELS / f"{tag}.distill.pt"), progress=True,
                              num_inference_steps=20, guidance_scale=m.guidance)
            (save_pruned if mode == "remove" else save_depth)(res.pipe, MODELS / tag, res.info())
            rows.add(q.record(pipe=res.pipe, ratio=ratio, mode=mode, params=res.params, blocks=res.selection.names,
                              folder=tag, train_seconds=res.seconds.get("train"),
                              final_loss=res.history[-1] if res.history else None, label=LABELS[mode]), f"{model} ")
    if model == "mnist-dit" and not any(r["label"].startswith("DiP-GO") for r in rows.rows):
        combined(q, rows, args.steps)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    rows.save()


def combined(q: h.QualityPass, rows: h.RowReport, steps: int) -> None:
    """DiP-GO (ratio 0.6) searched on the progressive model at the middle ratio."""
    from dipgo import load_pruned
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.cache.search import Search, SearchConfig
    from dipgo.evaluate.baselines import AppliedSchedule
    from dipgo.models.pipelines import set_scheduler

    m = q.model
    ratio = RATIOS[m.name][1]
    rec = rows.find(label=LABELS["progressive"], ratio=ratio)
    pruned = load_pruned(MODELS / rec["folder"])
    set_scheduler(pruned, "ddim")
    cfg = SearchConfig(ratio=0.6, num_inference_steps=steps, guidance_scale=m.guidance, iterations=60, batch=2)
    result = Search(pruned, cfg, calibration=m.calibration).run(progress=False)
    schedule = schedule_at_ratio(result, 0.6)
    schedule.save(OUT / f"{m.name}-combined.schedule.json")
    rows.add(q.record(AppliedSchedule(pruned, schedule, "dipgo"), pruned, ratio=ratio, mode="progressive+dipgo",
                      params=rec["params"], blocks=rec["blocks"], search_seconds=round(result.seconds, 1),
                      label="DiP-GO 0.6 on progressive UPDP"), f"{m.name} ")


# ----------------------------------------------------------------------------------------- latency pass
def _stock_embedding(pipe) -> bool:
    """Switch the merged DiT blocks of ``pipe`` to the stock conditioning embedding (diffusers' own module
    instead of the merged op's fast path); False if it has none."""
    from dipgo.models.pipelines import denoiser_of

    fast = [m for m in denoiser_of(pipe).modules() if getattr(m, "fast", False) is True]
    for m in fast:
        m.fast = False
    return bool(fast)


def _arch_key(row: dict) -> tuple:
    """Latency belongs to an architecture: the same blocks in the same form, whatever the training."""
    return row["mode"] == "remove", tuple(row["blocks"])


def architectures(pipe, report: dict, extra: list[dict]) -> dict[tuple, object]:
    """The full model, every distinct architecture of the report's rows and of ``extra`` (today's recipe rows),
    and each merged DiT one again with the stock embedding (key + ``("stock",)``)."""
    import copy

    from dipgo import load_pruned

    archs: dict[tuple, object] = {("full",): pipe}
    for row in report["rows"] + extra:
        if row["mode"] in MODES and _arch_key(row) not in archs:
            key = _arch_key(row)
            archs[key] = load_pruned(MODELS / row["folder"])
            stock = copy.deepcopy(archs[key])
            if _stock_embedding(stock):
                archs[key + ("stock",)] = stock
    return archs


def compiled(archs: dict, calls: dict) -> dict[tuple, dict]:
    """The architectures (not the stock-embedding copies) under torch.compile (inductor, static shapes, one
    compiled callable per batch): a runtime that fuses elementwise ops and drops per-op dispatch, as deployments
    use. Every compiled call is checked against the eager one before it is timed."""
    import torch

    from dipgo.models.pipelines import denoiser_of

    out: dict[tuple, dict] = {}
    for key in [k for k in archs if "stock" not in k]:
        for b in BATCHES:
            eager = denoiser_of(archs[key])
            fn = torch.compile(eager, dynamic=False)
            args, kwargs = calls[b]
            with torch.no_grad():
                got, ref = fn(*args, **kwargs), eager(*args, **kwargs)
            got, ref = (o.sample if hasattr(o, "sample") else o[0] for o in (got, ref))
            err = float((got - ref).abs().max() / ref.abs().max())
            if err > 1e-3:
                raise RuntimeError(f"compiled {key[:1]} at {b} images differs from eager by {err:.2e}")
            out.setdefault(key + ("compiled",), {})[b] = fn
    return out


def _on(fn, call: tuple[tuple, dict]):
    """``fn`` called on the captured inputs ``call``, as a callable of no arguments."""
    return lambda: fn(*call[0], **call[1])


def time_paired(timed: dict[tuple, dict], calls: dict) -> tuple[dict, dict]:
    """Short calls drift over seconds (thread wake-ups, allocator, caches): every architecture is timed
    against the full model (eager or compiled alike) in short alternating chunks, PASSES times over; each
    pass's speedup is the full model's median over the architecture's.
    Returns the per-pass ms of every key and the per-pass speedups, by batch."""
    import torch

    base = {k: ("full", "compiled") if "compiled" in k else ("full",) for k in timed}
    passes: dict[tuple, dict[int, list[float]]] = {k: {b: [] for b in BATCHES} for k in timed}
    ratios: dict[tuple, dict[int, list[float]]] = {k: {b: [] for b in BATCHES} for k in timed}
    for _ in range(PASSES):
        for key, fns in timed.items():
            if key == base[key]:
                continue
            for b in BATCHES:
                with torch.no_grad():
                    s0, s1 = h.paired_pass(_on(timed[base[key]][b], calls[b]), _on(fns[b], calls[b]),
                                           chunks=CHUNKS, calls=max(1, RUNS[b] // CHUNKS), warmup=WARMUP)
                passes[key][b].append(1e3 * s1)
                passes[base[key]][b].append(1e3 * s0)
                ratios[key][b].append(s0 / s1)
    return passes, ratios


def store(report: dict, passes: dict, ratios: dict, costs: dict, extra: list[dict]) -> None:
    """The timings and costs into the report's full model, rows and recipe architectures."""
    measured = {k: {b: statistics.median(v[b]) for b in BATCHES} for k, v in passes.items()}
    spread = {k: {b: [min(v[b]), max(v[b])] for b in BATCHES} for k, v in passes.items()}
    med = {k: {b: statistics.median(v[b]) for b in BATCHES} for k, v in ratios.items() if v[BATCHES[0]]}
    rng = {k: {b: [min(v[b]), max(v[b])] for b in BATCHES} for k, v in ratios.items() if v[BATCHES[0]]}
    report["full"]["latency_ms"], report["full"]["latency_range_ms"] = measured[("full",)], spread[("full",)]
    if ("full", "compiled") in measured:
        report["full"]["latency_compiled_ms"] = measured[("full", "compiled")]
    known = {_arch_key(r) for r in report["rows"] if r["mode"] in MODES}
    report["recipe_architectures"] = [e for e in extra if _arch_key(e) not in known]
    for row in report["rows"] + report["recipe_architectures"]:
        if row["mode"] not in MODES:
            continue
        key = _arch_key(row)
        row["latency_ms"], row["latency_range_ms"] = measured[key], spread[key]
        row["latency_speedup"], row["latency_speedup_range"] = med[key], rng[key]
        if key + ("stock",) in measured:
            row["latency_speedup_stock_embedding"] = med[key + ("stock",)]
        if key + ("compiled",) in measured:
            c = key + ("compiled",)
            row["latency_compiled_ms"] = measured[c]
            row["latency_speedup_compiled"], row["latency_speedup_compiled_range"] = med[c], rng[c]
        # architecture facts of today's merged ops (a call's MACs: every call of a static model is alike)
        row["params"] = costs[key][0]
        row["macs_speedup"] = costs[("full",)][1] / costs[key][1]


def latency_note(cfg: int, with_compiled: bool) -> str:
    return (f"denoiser call at 1 and 16 images (x{cfg} for CFG); in each of {PASSES} passes the row and the full "
            f"model are timed {RUNS[1]} (batch 1) or {RUNS[16]} (16 images) calls each, in {CHUNKS} alternating "
            f"chunks after {WARMUP} warm-up calls; the speedup is the median over passes of the full model's median "
            "time over the row's in that pass (range over passes in brackets), 2 threads, measured alone on the "
            "machine, once per distinct architecture; params and MACs re-measured on the loaded architecture"
            + ("; *compiled*: the same calls under torch.compile (inductor, static shapes), paired with the "
               "compiled full model, each compiled output checked against eager first" if with_compiled else ""))


def latency_model(model: str, with_compiled: bool) -> None:
    from dipgo.models.pipelines import denoiser_of
    from dipgo.models.surgery import total_cost

    report = h.read_json(OUT / f"{model}.json")
    if report is None:
        return
    m = h.Model(model, scheduler=None)
    cfg = 2 if (m.guidance or 1.0) > 1.0 else 1
    call = h.denoiser_call(m.pipe, m.calibration)
    calls = {b: h.denoiser_call(m.pipe, m.calibration, b * cfg) for b in BATCHES}
    recipe = [r for r in _recipe_rows(model)[0] if (MODELS / r["folder"]).exists()]
    extra = [{"mode": r["mode"], "blocks": r["layers"], "folder": r["folder"]} for r in recipe]
    archs = architectures(m.pipe, report, extra)
    costs = {k: total_cost(denoiser_of(p), call) for k, p in archs.items()}
    timed = {k: {b: denoiser_of(p) for b in BATCHES} for k, p in archs.items()}
    if with_compiled:
        timed.update(compiled(archs, calls))
        print(f"{model}: compiled {len(timed) - len(archs)} architectures", flush=True)
    passes, ratios = time_paired(timed, calls)
    store(report, passes, ratios, costs, extra)
    report["latency_note"] = latency_note(cfg, with_compiled)
    report["architecture_remeasured"] = True
    h.write_json(OUT / f"{model}.json", report)
    print(f"{model}: latency measured for {len(passes) - 1} architectures")
    _remeasure_recipe(model, costs, call)


def latency_pass(with_compiled: bool = True, models: list[str] | None = None) -> None:
    import torch._dynamo

    # every (architecture, batch) is its own compiled variant of the same forward: allow them all, and fail
    # rather than fall back to eager silently
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 1024
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    h.set_threads(2)
    for model in models or RATIOS:
        latency_model(model, with_compiled)


def _remeasure_recipe(model: str, costs: dict[tuple, tuple[int, int]], call) -> None:
    """Params and MACs of the merged rows of ``recipe.json`` on today's merged ops (no timing). ``costs``: the
    latency pass's (params, MACs) per call by architecture key, the full model's under ``("full",)``; a row
    whose architecture it lacks is loaded and counted here."""
    from dipgo import load_pruned
    from dipgo.models.pipelines import denoiser_of
    from dipgo.models.surgery import total_cost

    path = OUT / "recipe.json"
    rows = h.read_json(path)
    if rows is None:
        return
    for row in rows:
        if row["model"] != model or row.get("mode") not in ("progressive", "abrupt"):
            continue
        cost = costs.get((False, tuple(row["layers"])))
        if cost is None and (MODELS / row["folder"]).exists():
            cost = total_cost(denoiser_of(load_pruned(MODELS / row["folder"])), call)
        if cost is not None:
            row["params"], row["macs_speedup"] = cost[0], costs[("full",)][1] / cost[1]
    h.write_json(path, rows)


# ----------------------------------------------------------------------------------------- report
def _latency_cells(r: dict, lat_full: dict, with_compiled: bool) -> list[str]:
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
    if with_compiled:
        cs, cr = r.get("latency_speedup_compiled"), r.get("latency_speedup_compiled_range")
        cells += [f"{cs[b]:.2f}x ({cr[b][0]:.2f}-{cr[b][1]:.2f})" if cs else "-" for b in ("1", "16")]
    return cells


def _head(with_compiled: bool, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return ("blocks pruned", "row", "params", "MACs speedup", "latency speedup b1 (range over passes)", "b16",
            *(("b1 compiled", "b16 compiled") if with_compiled else ()), "FID", "accuracy", "PSNR vs full", *extra)


def _recipe_rows(model: str) -> tuple[list[dict], list[dict]]:
    """``recipe.json``'s depth rows for ``model`` at today's recipe (3000 steps, unconditional 10 %): the main
    runs (the default ramp, training seed 0) and the others (another ramp or seed) of the same points."""
    rows = [r for r in h.read_json(OUT / "recipe.json", []) if r["model"] == model and r.get("method") == "depth"
            and r.get("p_uncond")]
    main = [r for r in rows if not r.get("ramp") and not r.get("seed")]
    order = {m: i for i, m in enumerate(MODES)}
    main.sort(key=lambda r: (r["ratio"], order[r["mode"]]))
    return main, [r for r in rows if r not in main]


def _model_intro(rep: dict, with_compiled: bool) -> list[str]:
    f = rep["full"]
    lat_full, cf = f.get("latency_ms", {}), f.get("latency_compiled_ms", {})
    lines = [f"## {rep['model']}", "",
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
    if with_compiled:
        lines += ["*Compiled*: the same denoiser calls under `torch.compile` (inductor, static shapes), each "
                  "speedup paired with the compiled full model in the same pass. Eager PyTorch pays a fixed "
                  "dispatch cost per op, which a merged block's few small ops feel most at batch 1; a compiled "
                  "runtime fuses them, as a deployment would.", ""]
    return lines


def _recipe_section(rep: dict, main: list[dict], others: list[dict], with_compiled: bool) -> list[str]:
    """Today's recipe rows (from recipe.json), with the latency of the same architecture in the first table."""
    n_cand, lat_full, r0 = len(rep["candidates"]), rep["full"].get("latency_ms", {}), main[0]
    arch = {(r["mode"], tuple(r["blocks"])): r for r in rep["rows"] + rep.get("recipe_architectures", [])
            if r["mode"] in MODES}
    lines = [f"### Today's recipe: {r0['retrain_steps']} steps x batch {r0['batch']}, lr {r0['lr']:g}, "
             f"{NEW_RECIPE}, unconditional {r0['p_uncond']:.0%}", "",
             f"From `recipe.json` (`{h.how_to_run('retrain_recipe', '--method depth')}`), evaluated as below; the "
             "latency columns are those of the same architecture in the table below.", ""]
    lines += h.table(_head(with_compiled, ("training",)),
                     [[f"{len(r['layers'])}/{n_cand}", r["label"].split(",")[0], f"{r['params'] / 1e6:.3f} M",
                       f"{r['macs_speedup']:.2f}x",
                       *_latency_cells(arch.get((r["mode"], tuple(r["layers"])), {}), lat_full, with_compiled),
                       f"{r['fid']:.2f}", f"{r['cond_acc']:.1%}", f"{r['psnr_vs_full']:.2f} dB",
                       f"{r['retrain_seconds'] / 60:.1f} min"] for r in main])
    lines.append("")
    if others:
        lines += ["Other runs of the same points (the spread a single run carries):", ""]
        lines += [f"- {len(r['layers'])}/{n_cand}, {r['label'].split(',')[0]}, "
                  + ", ".join(x.strip() for x in r["label"].split(",")[5:])
                  + f": FID {r['fid']:.2f}, accuracy {r['cond_acc']:.1%}, PSNR {r['psnr_vs_full']:.2f} dB"
                  for r in others]
        lines.append("")
    return lines + [f"### The first recipe: {rep['train_steps']} steps", ""]


def _first_recipe(rep: dict, with_compiled: bool) -> list[str]:
    n_cand, lat_full = len(rep["candidates"]), rep["full"].get("latency_ms", {})
    lines = [f"Training: {rep['train_steps']} steps x batch {rep['batch']}, lr {rep['lr']}, "
             f"{rep.get('recipe', OLD_RECIPE)}, progressive ramp over the first {rep['ramp']:.0%}, on the zoo's "
             "training data.", ""]
    lines += h.table(_head(with_compiled),
                     [[f"{len(r['blocks'])}/{n_cand}", r["label"], f"{r['params'] / 1e6:.3f} M",
                       f"{r['macs_speedup']:.2f}x", *_latency_cells(r, lat_full, with_compiled), f"{r['fid']:.2f}",
                       f"{r['cond_acc']:.1%}", f"{r['psnr_vs_full']:.2f} dB"] for r in rep["rows"]])
    lines.append("")
    dipgo = next((r for r in rep["rows"] if r["label"].startswith("DiP-GO")), None)
    if rep.get("architecture_remeasured") and dipgo is not None:
        lines += [_dipgo_note(rep, dipgo), ""]
    return lines


def _dipgo_note(rep: dict, dipgo: dict) -> str:
    """Why the DiP-GO row's params differ from its progressive row's: it kept the merged op it was measured with."""
    same = next((r for r in rep["rows"] if r["mode"] == "progressive" and r["blocks"] == dipgo["blocks"]), None)
    more = f"{(dipgo['params'] - same['params']) / 1e6:.2f} M more parameters and " if same else ""
    return ("The DiP-GO row was measured before merged DiT blocks folded their norm into the adaLN map (its params "
            f"and MACs are of the merged op of then, with {more}the attention's modulation still computed); the "
            "latency pass re-measured only the static rows.")


def _plot(ax, rep: dict, main: list[dict]) -> None:
    n_cand, f = len(rep["candidates"]), rep["full"]
    for mode, marker in (("progressive", "o-"), ("abrupt", "s--"), ("remove", "^:")):
        rows = [r for r in (main or rep["rows"]) if r["mode"] == mode]
        ax.plot([len(r.get("layers") or r["blocks"]) / n_cand for r in rows], [r["fid"] for r in rows], marker,
                label=mode)
    ax.axhline(f["fid"], color="k", lw=0.8, label="full model")
    ax.axhline(1.1 * f["fid"], color="k", lw=0.8, ls="--", label="full + 10 %")
    ax.set_xlabel("share of candidate blocks pruned")
    ax.set_ylabel(f"FID ({rep['n']} images" + (", today's recipe)" if main else ")"))
    ax.set_title(rep["model"])
    ax.legend(fontsize=8)


def write_report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# UPDP depth pruning", "", f"`{h.how_to_run('depth_pruning', 'MODEL')}`, then `--latency`.", ""]
    reports = [r for r in (h.read_json(OUT / f"{m}.json") for m in RATIOS) if r is not None]
    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4), squeeze=False)
    for ax, rep in zip(axes[0], reports, strict=True):
        with_compiled = any(r.get("latency_speedup_compiled") for r in rep["rows"])
        main, others = _recipe_rows(rep["model"])
        lines += _model_intro(rep, with_compiled)
        lines += _recipe_section(rep, main, others, with_compiled) if main else []
        lines += _first_recipe(rep, with_compiled)
        _plot(ax, rep, main)
    fig.tight_layout()
    h.write_figure(fig, OUT / "depth.png")
    h.write_markdown(OUT / "depth.md", lines)


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ramp", type=float, default=0.5)
    h.add_threads(p, 1)
    p.add_argument("--latency", action="store_true", help="the latency pass (alone on the machine)")
    p.add_argument("--no-compile", action="store_true", help="latency pass: eager only (no torch.compile columns)")
    h.add_report(p, "depth.md and depth.png")
    args = p.parse_args()
    if args.latency:
        latency_pass(with_compiled=not args.no_compile, models=[args.model] if args.model else None)
    elif args.report:
        write_report()
    else:
        quality_pass(args.model or "mnist-dit", args)


if __name__ == "__main__":
    main()
