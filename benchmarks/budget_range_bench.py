"""Issue 13, one search for every budget: a single DiP-GO search over a range of budgets
(``SearchConfig.ratios``), cut at 2x / 3x / 4.4x / 5.5x fewer MACs, against the dedicated per-budget
searches of ``dipgo bench`` and the fewer-steps / DeepCache curves at the same MACs.

    python benchmarks/budget_range_bench.py mnist-sd 20      # one model and base per process
    python benchmarks/budget_range_bench.py mnist-sd 20 --refine 300 --threads 2   # + held-out refinement
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


def measure(model: str, base: int, threads: int, refine_runs: int = 0) -> None:
    import torch

    from dipgo import zoo
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.cache.refine import RefineConfig, refine
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
    old_rows = {(r["model"], r["base"], r["budget"]): r for r in report["rows"]}
    report["rows"] = [r for r in report["rows"] if not (r["model"] == model and r["base"] == base)]
    refined_bench = BENCH.parent / "bench-refine" / "bench.json"  # dedicated searches + refinement
    refined_recs = []
    if refine_runs and refined_bench.exists():
        refined_recs = [r for r in json.loads(refined_bench.read_text())["records"]
                        if r["model"] == model and r["base"] == base and r["family"] == "dipgo"]
    def save() -> None:  # re-read first: another process may be measuring another model into the same file
        current = json.loads(out_path.read_text()) if out_path.exists() else {"rows": [], "searches": {}}
        current["rows"] = [r for r in current["rows"] if not (r["model"] == model and r["base"] == base)] + \
            [r for r in report["rows"] if r["model"] == model and r["base"] == base]
        current["searches"][f"{model}-ddim{base}"] = report["searches"][f"{model}-ddim{base}"]
        current.update({k: v for k, v in report.items() if k not in ("rows", "searches")})
        out_path.write_text(json.dumps(current, indent=1))

    report["searches"][f"{model}-ddim{base}"] = {"seconds": result.seconds, "iterations": result.config.iterations,
                                                 "batch": result.config.batch, "range": list(RANGE),
                                                 "dedicated_seconds_per_budget_both_inits": dedicated_seconds}
    ev = Evaluator(pipe, cfg["n"], cfg["seed"], guidance, cfg["batch"], cal, Judge.from_source(source))
    t0 = time.perf_counter()
    try:
        full = ev.run(Full().bind(pipe, base, guidance), progress=False)
        q_full = ev.quality(full, None, progress=False)
        for budget in BUDGETS:
            old = old_rows.get((model, base, budget))
            if refine_runs and old is not None:  # the range cut itself was measured before: keep it
                row = {k: v for k, v in old.items() if k not in ("refined", "dedicated_refined")}
                rec = {"macs_speedup": row["macs_speedup"]}
            else:
                schedule = schedule_at_ratio(result, 1 - 1 / budget)
                run = ev.run(AppliedSchedule(pipe, schedule, f"dipgo range {budget:g}x"), progress=False)
                rec = compare(ev, run, full, ev.quality(run, full, progress=False), q_full)
                row = {"model": model, "base": base, "budget": budget, "macs_speedup": rec["macs_speedup"],
                       "psnr_vs_full": rec["psnr_vs_full"], "fid": rec["fid"], "fid_full": rec["fid_full"]}
            if refine_runs:
                t1 = time.perf_counter()
                done = refine(pipe, result, 1 - 1 / budget, cal, RefineConfig(evaluations=refine_runs),
                              guidance_scale=guidance, progress=False)
                seconds = time.perf_counter() - t1
                run = ev.run(AppliedSchedule(pipe, done.schedule, f"dipgo range+refine {budget:g}x"), progress=False)
                r2 = compare(ev, run, full, ev.quality(run, full, progress=False), q_full)
                row["refined"] = {"macs_speedup": r2["macs_speedup"], "psnr_vs_full": r2["psnr_vs_full"],
                                  "fid": r2["fid"], "start": done.start, "held_out_psnr": done.psnr,
                                  "starts": done.starts, "evaluations": done.evaluations, "seconds": seconds}
                ded_r = next((r for r in refined_recs if r["budget"] == budget), None)
                if ded_r is not None:
                    row["dedicated_refined"] = {k: ded_r[k] for k in ("macs_speedup", "psnr_vs_full", "fid", "method")}
                print(f"  refined: MACs {r2['macs_speedup']:.2f}x PSNR {r2['psnr_vs_full']:.2f} FID {r2['fid']:.2f} "
                      f"from {done.start}" + (f" (dedicated+refine {ded_r['psnr_vs_full']:.2f} dB)" if ded_r else ""),
                      flush=True)
            ded = next((r for r in recs if r["family"] == "dipgo" and r["budget"] == budget), None)
            if ded is not None:
                row["dedicated"] = {k: ded[k] for k in ("macs_speedup", "psnr_vs_full", "fid")}
            for fam in ("fewer steps", "DeepCache"):
                curve = [r for r in recs if r["family"] in (fam, "full")]
                row[fam] = {m: at_macs(curve, rec["macs_speedup"], m)[0] for m in ("psnr_vs_full", "fid")}
                row[fam]["extrapolated"] = not at_macs(curve, rec["macs_speedup"], "fid")[1]
            report["rows"].append(row)
            print(f"{model} DDIM-{base} {budget:g}x: range cut MACs {row['macs_speedup']:.2f}x PSNR "
                  f"{row['psnr_vs_full']:.2f} FID {row['fid']:.2f}"
                  + (f" (dedicated {ded['psnr_vs_full']:.2f} dB)" if ded else ""), flush=True)
            save()
    finally:
        ev.close()
    report["searches"][f"{model}-ddim{base}"]["eval_seconds"] = round(time.perf_counter() - t0, 1)
    save()


def _gap_at_macs(rows: list[dict], r: dict, mine: str, theirs: str) -> str:
    """PSNR of ``r[mine]`` minus the dedicated curve's (``theirs`` over all budgets of the same model and
    base) at ``r[mine]``'s own MACs, linear in log speedup as the bench's target check compares."""
    from dipgo.evaluate.bench import at_macs

    curve = [x[theirs] for x in rows if (x["model"], x["base"]) == (r["model"], r["base"]) and x.get(theirs)]
    x = r[mine] if mine else r
    if not curve or not r.get(theirs):  # no dedicated search at this budget: nothing to compare with
        return "-"
    value, inside = at_macs(curve, x["macs_speedup"], "psnr_vs_full")
    return f"{x['psnr_vs_full'] - value:+.2f} dB" + ("" if inside else " (nearest)")


def write_report() -> None:
    report = json.loads((BENCH / "budget-range.json").read_text())
    lines = ["# One search for every budget (issue 13)", "",
             f"One DiP-GO search per model and base over the budget range {RANGE[0]:.2f}-{RANGE[1]:.3f} of MACs pruned "
             "(2x-5.5x): each iteration draws a budget and cuts the current scores at it, starting from a graded "
             "fewer-steps prior. Its schedules at each budget against the dedicated search made for that budget "
             "alone (`dipgo bench`, best of two initialisations) and the baselines' curves at the same MACs. "
             "256 images, seed 0, PSNR against the full model.", "",
             "`PSNR gap`: against the dedicated schedule as it landed; `at equal MACs`: against the dedicated "
             "schedules' curve at the range search's own MACs (linear in log MACs speedup between the two dedicated "
             "points that bracket it, as the bench's target check compares with baselines).", "",
             "| model | base | budget | range search: MACs, PSNR / FID | dedicated: MACs, PSNR / FID | PSNR gap | "
             "at equal MACs | fewer steps at MACs: PSNR / FID | DeepCache at MACs: PSNR / FID |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        d = r.get("dedicated")
        ded = f"{d['macs_speedup']:.2f}x, {d['psnr_vs_full']:.2f} dB / {d['fid']:.2f}" if d else "- (none)"
        gap = f"{r['psnr_vs_full'] - d['psnr_vs_full']:+.2f} dB" if d else "-"

        def base(f, r=r):
            x = r[f]
            return f"{x['psnr_vs_full']:.2f} dB / {x['fid']:.2f}" + (" (nearest point)" if x["extrapolated"] else "")

        lines.append(f"| {r['model']} | DDIM-{r['base']} | {r['budget']:g}x | {r['macs_speedup']:.2f}x, "
                     f"{r['psnr_vs_full']:.2f} dB / {r['fid']:.2f} | {ded} | {gap} | "
                     f"{_gap_at_macs(report['rows'], r, '', 'dedicated')} | {base('fewer steps')} | "
                     f"{base('DeepCache')} |")
    refined = [r for r in report["rows"] if "refined" in r]
    if refined:
        lines += ["", "## With the held-out refinement (`dipgo prune --refine N`)", "",
                  "The same range search, then `cache/refine.py` at each budget (its starts: the range search's cut, "
                  "uniform spreads and DeepCache/FORA spacing next to the budget; held-out seeds from 1,000,000). "
                  "Against the dedicated searches refined the same way (`benchmarks/results/bench-refine/`), where "
                  "that run exists. Same 256 evaluation images.", "",
                  "| model | base | budget | range + refine: MACs, PSNR / FID (winning start) | dedicated + refine: "
                  "MACs, PSNR / FID | PSNR gap | at equal MACs | refine time (2 processes side by side, 1 thread "
                  "each) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in refined:
            x, d = r["refined"], r.get("dedicated_refined")
            ded = f"{d['macs_speedup']:.2f}x, {d['psnr_vs_full']:.2f} dB / {d['fid']:.2f}" if d else "- (not run)"
            gap = f"{x['psnr_vs_full'] - d['psnr_vs_full']:+.2f} dB" if d else "-"
            lines.append(f"| {r['model']} | DDIM-{r['base']} | {r['budget']:g}x | {x['macs_speedup']:.2f}x, "
                         f"{x['psnr_vs_full']:.2f} dB / {x['fid']:.2f} ({x['start']}) | {ded} | {gap} | "
                         f"{_gap_at_macs(report['rows'], r, 'refined', 'dedicated_refined')} | "
                         f"{x['seconds']:.0f} s, {x['evaluations']} runs |")
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
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="also refine each budget's schedule with N held-out sampling runs (keeps the measured cuts)")
    args = p.parse_args()
    if not args.report:
        measure(args.model, args.base, args.threads, args.refine)
    write_report()


if __name__ == "__main__":
    main()
