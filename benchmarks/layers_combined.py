"""Issue 10: layer pruning composed with DiP-GO, against DiP-GO alone at about the same MACs.

    python benchmarks/layers_combined.py mnist-dit FOLDER --dipgo-ratio 0.74 [--alone]
    python benchmarks/layers_combined.py --report

FOLDER is a layer-pruned pipeline (``dipgo layers`` / ``layers_recipe.py`` output, under
``out/layers-bench/`` unless a path is given). DiP-GO searches a schedule on the pruned pipeline at
``--steps`` DDIM steps with the CLI's default settings, then the full model, the pruned model and the
pruned model with its schedule are evaluated the same way (``--n`` images, the same seeds, FID, accuracy,
PSNR against the full model at the same step count). ``--alone`` adds DiP-GO searched on the full model at
the combined MACs, so the table says whether the layer pruning earns its place. Quality only: no timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "benchmarks" / "results" / "layers"
MODELS = ROOT / "out" / "layers-bench"


def run(args) -> None:
    import torch

    from dipgo import zoo
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.cache.search import Search, SearchConfig
    from dipgo.evaluate.baselines import AppliedSchedule, Full
    from dipgo.evaluate.evaluation import Evaluator, Judge, compare
    from dipgo.models.pipelines import default_calibration, set_scheduler

    torch.set_num_threads(args.threads)
    folder = Path(args.folder) if Path(args.folder).exists() else MODELS / args.folder
    pipe, source = zoo.load(args.model)
    pruned, _ = zoo.load(str(folder))
    for p in (pipe, pruned):
        set_scheduler(p, "ddim")
    cal = default_calibration(pipe, defaults=source.defaults)
    guidance = source.guidance_scale
    judge = Judge.from_source(source)
    ev_full = Evaluator(pipe, args.n, 0, guidance, 32, cal, judge)
    full_run = ev_full.run(Full().bind(pipe, args.steps, guidance), progress=False)
    q_full = ev_full.quality(full_run, None, progress=False)
    ev_full.close()
    rows = []

    def evaluate(p, applied, label: str, extra: dict) -> None:
        ev = Evaluator(p, args.n, 0, guidance, 32, cal, judge)
        try:
            r = ev.run(applied, progress=False)
            q = ev.quality(r, full_run, progress=False)
        finally:
            ev.close()
        rec = compare(ev_full, r, full_run, q, q_full)
        rec.update(extra, label=label, model=args.model, steps=args.steps, macs_speedup=full_run.macs / r.macs,
                   folder=folder.name if p is pruned else None)
        print(f"{label}: MACs {rec['macs_speedup']:.2f}x, FID {rec['fid']:.2f} (full {q_full['fid']:.2f}), "
              f"acc {rec['cond_acc']:.3f}, PSNR {rec['psnr_vs_full']:.2f}", flush=True)
        rows.append(rec)

    def search(p, ratio: float):
        cfg = SearchConfig(ratio=ratio, num_inference_steps=args.steps, guidance_scale=guidance)
        t0 = time.perf_counter()
        result = Search(p, cfg, calibration=cal).run(progress=True)
        return schedule_at_ratio(result, ratio), round(time.perf_counter() - t0, 1)

    evaluate(pruned, Full().bind(pruned, args.steps, guidance), "layer-pruned", {})
    schedule, seconds = search(pruned, args.dipgo_ratio)
    schedule.save(OUT / f"{args.model}-combined-{args.steps}.schedule.json")
    evaluate(pruned, AppliedSchedule(pruned, schedule, "dipgo"), f"layer-pruned + DiP-GO {args.dipgo_ratio:g}",
             {"dipgo_ratio": args.dipgo_ratio, "search_seconds": seconds})
    if args.alone:
        ratio = round(1.0 - 1.0 / rows[-1]["macs_speedup"], 4)  # the combined MACs, from DiP-GO alone
        schedule, seconds = search(pipe, ratio)
        evaluate(pipe, AppliedSchedule(pipe, schedule, "dipgo"), f"DiP-GO {ratio:g} alone (full model)",
                 {"dipgo_ratio": ratio, "search_seconds": seconds})
    path = OUT / "combined.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    key = f"{args.model}-{args.steps}"  # the first pruned model of each; later ones are kept beside it
    if key in old and old[key]["rows"][0].get("folder") != folder.name:
        key = f"{key}-{folder.name}"
    old[key] = {"full": dict(q_full, macs=full_run.macs), "rows": rows}
    path.write_text(json.dumps(old, indent=1))


def report() -> None:
    data = json.loads((OUT / "combined.json").read_text())
    lines = ["# Layer pruning + DiP-GO (issue 10)", "",
             "`benchmarks/layers_combined.py`: DiP-GO searched (CLI defaults) on a layer-pruned model, against DiP-GO "
             "alone on the full model at about the same MACs. 256 images, the same seeds, DDIM; FID against the "
             "shipped statistics, PSNR against the full model at the same step count. Target: >= 6x fewer MACs "
             "with FID within 20 % of the full model.", "",
             "| model | steps | row | MACs | FID (full) | FID change | accuracy (full) | PSNR vs full |",
             "|---|---|---|---|---|---|---|---|"]
    for rep in data.values():
        f = rep["full"]
        for r in rep["rows"]:
            where = f" (`{r['folder']}`)" if r.get("folder") else ""
            lines.append(f"| {r['model']} | DDIM-{r['steps']} | {r['label']}{where} | "
                         f"{r['macs_speedup']:.2f}x | "
                         f"{r['fid']:.2f} ({f['fid']:.2f}) | {r['fid'] / f['fid'] - 1:+.1%} | "
                         f"{r['cond_acc']:.1%} ({f['cond_acc']:.1%}) | {r['psnr_vs_full']:.2f} dB |")
    (OUT / "combined.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="mnist-dit")
    p.add_argument("folder", nargs="?", default=None)
    p.add_argument("--dipgo-ratio", type=float, default=0.75)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--alone", action="store_true")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if args.report:
        report()
    elif args.folder is None:
        p.error("give MODEL FOLDER (a layer-pruned pipeline folder)")
    else:
        run(args)


if __name__ == "__main__":
    main()
