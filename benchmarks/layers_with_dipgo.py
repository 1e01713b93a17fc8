"""Layer pruning composed with DiP-GO, against DiP-GO alone at about the same MACs.

    python -m benchmarks.layers_with_dipgo mnist-dit FOLDER --dipgo-ratio 0.74 [--alone]
    python -m benchmarks.layers_with_dipgo --report

FOLDER is a layer-pruned pipeline (``dipgo layers`` / ``retrain_recipe`` output, under
``out/layers-bench/`` unless a path is given). DiP-GO searches a schedule on the pruned pipeline at
``--steps`` DDIM steps with the CLI's default settings, then the full model, the pruned model and the
pruned model with its schedule are evaluated the same way (``--n`` images, the same seeds, FID, accuracy,
PSNR against the full model at the same step count). ``--alone`` adds DiP-GO searched on the full model at
the combined MACs, so the table says whether the layer pruning earns its place. Quality only: no timing.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks import harness as h

OUT = h.RESULTS / "layers"
MODELS = h.WORK / "layers-bench"


def search(m: h.Model, pipe, ratio: float, steps: int):
    """DiP-GO with the CLI's defaults on ``pipe``: ``(schedule, seconds)``."""
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.cache.search import Search, SearchConfig

    cfg = SearchConfig(ratio=ratio, num_inference_steps=steps, guidance_scale=m.guidance)
    t0 = time.perf_counter()
    result = Search(pipe, cfg, calibration=m.calibration).run(progress=True)
    return schedule_at_ratio(result, ratio), round(time.perf_counter() - t0, 1)


def run(args) -> None:
    from dipgo import zoo
    from dipgo.evaluate.baselines import AppliedSchedule
    from dipgo.models.pipelines import set_scheduler

    h.set_threads(args.threads)
    folder = Path(args.folder) if Path(args.folder).exists() else MODELS / args.folder
    m = h.Model(args.model)
    pruned, _ = zoo.load(str(folder))
    set_scheduler(pruned, "ddim")
    q = h.QualityPass(m, args.n, args.steps)
    rows = []

    def evaluate(pipe, applied, label: str, **extra) -> None:
        rec = q.record(applied, pipe, **extra, label=label, model=args.model, steps=args.steps,
                       folder=folder.name if pipe is pruned else None)
        print(f"{label}: {h.summary(rec)} (full FID {q.q_full['fid']:.2f})", flush=True)
        rows.append(rec)

    evaluate(pruned, None, "layer-pruned")
    schedule, seconds = search(m, pruned, args.dipgo_ratio, args.steps)
    schedule.save(OUT / f"{args.model}-combined-{args.steps}.schedule.json")
    evaluate(pruned, AppliedSchedule(pruned, schedule, "dipgo"), f"layer-pruned + DiP-GO {args.dipgo_ratio:g}",
             dipgo_ratio=args.dipgo_ratio, search_seconds=seconds)
    if args.alone:
        ratio = round(1.0 - 1.0 / rows[-1]["macs_speedup"], 4)  # the combined MACs, from DiP-GO alone
        schedule, seconds = search(m, m.pipe, ratio, args.steps)
        evaluate(m.pipe, AppliedSchedule(m.pipe, schedule, "dipgo"), f"DiP-GO {ratio:g} alone (full model)",
                 dipgo_ratio=ratio, search_seconds=seconds)
    path = OUT / "combined.json"
    old = h.read_json(path, {})
    key = f"{args.model}-{args.steps}"  # the first pruned model of each; later ones are kept beside it
    if key in old and old[key]["rows"][0].get("folder") != folder.name:
        key = f"{key}-{folder.name}"
    old[key] = {"full": dict(q.q_full, macs=q.full.macs), "rows": rows}
    h.write_json(path, old)


def report() -> None:
    data = h.read_json(OUT / "combined.json")
    lines = ["# Layer pruning + DiP-GO", "",
             f"`{h.how_to_run('layers_with_dipgo')}`: DiP-GO searched (CLI defaults) on a layer-pruned model, "
             "against DiP-GO alone on the full model at about the same MACs. 256 images, the same seeds, DDIM; FID "
             "against the shipped statistics, PSNR against the full model at the same step count. Target: >= 6x "
             "fewer MACs with FID within 20 % of the full model.", ""]
    rows = []
    for rep in data.values():
        f = rep["full"]
        for r in rep["rows"]:
            where = f" (`{r['folder']}`)" if r.get("folder") else ""
            rows.append([r["model"], f"DDIM-{r['steps']}", f"{r['label']}{where}", f"{r['macs_speedup']:.2f}x",
                         f"{r['fid']:.2f} ({f['fid']:.2f})", f"{r['fid'] / f['fid'] - 1:+.1%}",
                         f"{r['cond_acc']:.1%} ({f['cond_acc']:.1%})", f"{r['psnr_vs_full']:.2f} dB"])
    lines += h.table(("model", "steps", "row", "MACs", "FID (full)", "FID change", "accuracy (full)",
                      "PSNR vs full"), rows)
    h.write_markdown(OUT / "combined.md", lines)


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("model", nargs="?", default="mnist-dit")
    p.add_argument("folder", nargs="?", default=None)
    p.add_argument("--dipgo-ratio", type=float, default=0.75)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--n", type=int, default=256)
    h.add_threads(p, 2)
    p.add_argument("--alone", action="store_true", help="add DiP-GO alone on the full model at the combined MACs")
    h.add_report(p, "combined.md")
    args = p.parse_args()
    if args.report:
        report()
    elif args.folder is None:
        p.error("give MODEL FOLDER (a layer-pruned pipeline folder)")
    else:
        run(args)


if __name__ == "__main__":
    main()
