"""Issue 13, one search for every budget: a single DiP-GO search over a range of budgets
(``SearchConfig.ratios``), cut at 2x / 3x / 4.4x / 5.5x fewer MACs, against the dedicated per-budget
searches of ``dipgo bench`` and the fewer-steps / DeepCache curves at the same MACs.

    python benchmarks/budget_range_bench.py mnist-sd 20      # one model and base per process
    python benchmarks/budget_range_bench.py --report         # -> benchmarks/results/bench/budget-range.md

The range search uses the bench's iterations and batch for that model and base; its file is saved next
to the bench's searches. Quality is measured exactly as ``dipgo bench`` does (256 images, seed 0, batch
32, balanced digits); dedicated and baseline figures come from ``bench.json`` (same seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
BENCH = ROOT / "benchmarks" / "results" / "bench"
BUDGETS = (2.0, 3.0, 4.4, 5.5)
RANGE = (0.5, 1 - 1 / 5.5)


def measure(model: str, base: int, threads: int) -> None:
    import torch

    from dipgo import zoo
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.cache.search import Search, SearchConfig, load_result, save_result
    from dipgo.evaluate.baselines import AppliedSchedule, Full
    from dipgo.evaluate.bench import SEARCH_ITERATIONS, at_macs, search_batch
    from dipgo.evaluate.evaluation import Evaluator, Judge, compare
    from dipgo.models.pipelines import default_calibration, set_scheduler

    torch.set_num_threads(threads)
    bench = json.loads((BENCH / "bench.json").read_text())
    cfg = bench["config"]
    pipe, source = zoo.load(model)
    set_scheduler(pipe, "ddim")
    guidance = source.guidance_scale
    cal = default_calibration(pipe, defaults=source.defaults)
    path = BENCH / "searches" / f"{model}-ddim{base}-range.json"
    if not path.exists():
        sc = SearchConfig(ratios=RANGE, ratio=RANGE[1], num_inference_steps=base, guidance_scale=guidance,
                          iterations=SEARCH_ITERATIONS, batch=search_batch(pipe, base))
        ckpt = path.with_name(path.name + ".search.pt")
        save_result(Search(pipe, sc, checkpoint_path=ckpt, calibration=cal).run(progress=True), path)
        ckpt.unlink(missing_ok=True)
    result = load_result(path, pipe)
    recs = [r for r in bench["records"] if r["model"] == model and r["base"] == base]
    dedicated_seconds = {b: bench["searches"][f"{model}-ddim{base}-x{b:g}"]["seconds"] for b in BUDGETS
                         if f"{model}-ddim{base}-x{b:g}" in bench["searches"]}
    out_path = BENCH / "budget-range.json"
    report = json.loads(out_path.read_text()) if out_path.exists() else {"rows": [], "searches": {}}
    report["rows"] = [r for r in report["rows"] if not (r["model"] == model and r["base"] == base)]
    report["searches"][f"{model}-ddim{base}"] = {"seconds": result.seconds, "iterations": result.config.iterations,
                                                 "batch": result.config.batch, "range": list(RANGE),
                                                 "dedicated_seconds_per_budget_both_inits": dedicated_seconds}
    ev = Evaluator(pipe, cfg["n"], cfg["seed"], guidance, cfg["batch"], cal, Judge.from_source(source))
    t0 = time.perf_counter()
    try:
        full = ev.run(Full().bind(pipe, base, guidance), progress=False)
        q_full = ev.quality(full, None, progress=False)
        for budget in BUDGETS:
            schedule = schedule_at_ratio(result, 1 - 1 / budget)
            run = ev.run(AppliedSchedule(pipe, schedule, f"dipgo range {budget:g}x"), progress=False)
            rec = compare(ev, run, full, ev.quality(run, full, progress=False), q_full)
            row = {"model": model, "base": base, "budget": budget, "macs_speedup": rec["macs_speedup"],
                   "psnr_vs_full": rec["psnr_vs_full"], "fid": rec["fid"], "fid_full": rec["fid_full"]}
            ded = next((r for r in recs if r["family"] == "dipgo" and r["budget"] == budget), None)
            if ded is not None:
                row["dedicated"] = {k: ded[k] for k in ("macs_speedup", "psnr_vs_full", "fid")}
            for fam in ("fewer steps", "DeepCache"):
                curve = [r for r in recs if r["family"] in (fam, "full")]
                row[fam] = {m: at_macs(curve, rec["macs_speedup"], m)[0] for m in ("psnr_vs_full", "fid")}
                row[fam]["extrapolated"] = not at_macs(curve, rec["macs_speedup"], "fid")[1]
            report["rows"].append(row)
            print(f"{model} DDIM-{base} {budget:g}x: MACs {row['macs_speedup']:.2f}x PSNR {row['psnr_vs_full']:.2f} "
                  f"FID {row['fid']:.2f}" + (f" (dedicated {ded['psnr_vs_full']:.2f} dB)" if ded else ""), flush=True)
            out_path.write_text(json.dumps(report, indent=1))
    finally:
        ev.close()
    report["eval_seconds"] = round(time.perf_counter() - t0, 1)
    out_path.write_text(json.dumps(report, indent=1))


def write_report() -> None:
    report = json.loads((BENCH / "budget-range.json").read_text())
    lines = ["# One search for every budget (issue 13)", "",
             f"One DiP-GO search per model and base over the budget range {RANGE[0]:.2f}-{RANGE[1]:.3f} of MACs pruned "
             "(2x-5.5x): each iteration draws a budget and cuts the current scores at it, starting from a graded "
             "fewer-steps prior. Its schedules at each budget against the dedicated search made for that budget "
             "alone (`dipgo bench`, best of two initialisations) and the baselines' curves at the same MACs. "
             "256 images, seed 0, PSNR against the full model.", "",
             "| model | base | budget | range search: MACs, PSNR / FID | dedicated: MACs, PSNR / FID | PSNR gap | "
             "fewer steps at MACs: PSNR / FID | DeepCache at MACs: PSNR / FID |", "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        d = r.get("dedicated")
        ded = f"{d['macs_speedup']:.2f}x, {d['psnr_vs_full']:.2f} dB / {d['fid']:.2f}" if d else "- (none)"
        gap = f"{r['psnr_vs_full'] - d['psnr_vs_full']:+.2f} dB" if d else "-"

        def base(f, r=r):
            x = r[f]
            return f"{x['psnr_vs_full']:.2f} dB / {x['fid']:.2f}" + (" (nearest point)" if x["extrapolated"] else "")

        lines.append(f"| {r['model']} | DDIM-{r['base']} | {r['budget']:g}x | {r['macs_speedup']:.2f}x, "
                     f"{r['psnr_vs_full']:.2f} dB / {r['fid']:.2f} | {ded} | {gap} | {base('fewer steps')} | "
                     f"{base('DeepCache')} |")
    lines += ["", "Search time (1 thread; other benchmark processes shared the machine, so compare loosely):"]
    for k, v in report["searches"].items():
        ded = v["dedicated_seconds_per_budget_both_inits"]
        lines.append(f"- {k}: one range search {v['seconds']:.0f} s ({v['iterations']} iterations x batch "
                     f"{v['batch']}); the dedicated searches took {sum(ded.values()):.0f} s for {len(ded)} "
                     "budgets (two initialisations each)")
    (BENCH / "budget-range.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="mnist-sd")
    p.add_argument("base", nargs="?", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if not args.report:
        measure(args.model, args.base, args.threads)
    write_report()


if __name__ == "__main__":
    main()
