"""Issue 13, step-count transfer: a schedule searched for T steps, mapped to T' steps over normalised time
(``Schedule.transferred``, the opt-in ``dipgo.apply(pipe, s, num_inference_steps=T')``), against the
schedule searched for T' directly at the same budget, and against fewer steps at the transferred
schedule's MACs.

    python benchmarks/transfer_bench.py            # -> benchmarks/results/bench/transfer.{md,json}

The source and dedicated schedules come from the committed bench searches (``benchmarks/results/bench/
searches``, DDIM-50 and DDIM-20 at 2x / 3x / 4.4x; the same initialisation choice as ``dipgo bench``).
Quality is measured exactly as ``dipgo bench`` does (256 images, seed 0, batch 32, balanced digits,
DDIM-T'); the dedicated and fewer-steps figures are read from ``bench.json`` (one dedicated point is
re-measured here to check that the two runs agree).
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
PAIRS = ((50, 20), (20, 50))
BUDGETS = (2.0, 3.0, 4.4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only rewrite transfer.md from transfer.json")
    args = p.parse_args()
    if not args.report:
        measure(args.threads)
    write_report()


def measure(threads: int) -> None:
    import torch

    from dipgo import zoo
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.evaluate.baselines import AppliedSchedule, Full
    from dipgo.evaluate.bench import at_macs, search_for_budget
    from dipgo.evaluate.evaluation import Evaluator, Judge, compare
    from dipgo.models.pipelines import default_calibration, num_calls, set_scheduler

    torch.set_num_threads(threads)
    bench = json.loads((BENCH / "bench.json").read_text())
    cfg = bench["config"]
    out_path = BENCH / "transfer.json"
    report = json.loads(out_path.read_text()) if out_path.exists() else {"rows": []}
    report.update(n=cfg["n"], seed=cfg["seed"], batch=cfg["batch"], threads=threads)
    t0 = time.perf_counter()
    for model in cfg["models"]:
        pipe, source = zoo.load(model)
        set_scheduler(pipe, "ddim")
        guidance = source.guidance_scale
        cal = default_calibration(pipe, defaults=source.defaults)
        judge = Judge.from_source(source)
        recs = [r for r in bench["records"] if r["model"] == model]
        for src, dst in PAIRS:
            todo = [b for b in BUDGETS if not any(r["model"] == model and r["from"] == src and r["to"] == dst
                                                  and r["budget"] == b for r in report["rows"])]
            if not todo:
                continue
            ev = Evaluator(pipe, cfg["n"], cfg["seed"], guidance, cfg["batch"], cal, judge)
            try:
                full = ev.run(Full().bind(pipe, dst, guidance), progress=False)
                q_full = ev.quality(full, None, progress=False)
                for budget in todo:
                    result, _ = search_for_budget(pipe, model, src, guidance, budget, BENCH / "searches",
                                                  progress=False)
                    schedule = schedule_at_ratio(result, 1 - 1 / budget)
                    moved = schedule.transferred(dst, num_calls(pipe, dst))
                    run = ev.run(AppliedSchedule(pipe, moved, f"dipgo {src}->{dst}"), progress=False)
                    rec = compare(ev, run, full, ev.quality(run, full, progress=False), q_full)
                    dedicated = next(r for r in recs if r["base"] == dst and r["family"] == "dipgo"
                                     and r["budget"] == budget)
                    steps_curve = [r for r in recs if r["base"] == dst and r["family"] in ("fewer steps", "full")]
                    few_psnr, _ = at_macs(steps_curve, rec["macs_speedup"], "psnr_vs_full")
                    few_fid, _ = at_macs(steps_curve, rec["macs_speedup"], "fid")
                    row = {"model": model, "from": src, "to": dst, "budget": budget,
                           "source_macs_speedup": schedule.macs_full / schedule.macs,
                           "macs_speedup": rec["macs_speedup"], "psnr_vs_full": rec["psnr_vs_full"],
                           "fid": rec["fid"], "fid_full": rec["fid_full"],
                           "dedicated": {k: dedicated[k] for k in ("macs_speedup", "psnr_vs_full", "fid")},
                           "fewer_steps_at_macs": {"psnr_vs_full": few_psnr, "fid": few_fid}}
                    report["rows"].append(row)
                    print(f"{model} {src}->{dst} {budget:g}x: MACs {row['macs_speedup']:.2f}x, PSNR "
                          f"{row['psnr_vs_full']:.2f} dB (dedicated {dedicated['psnr_vs_full']:.2f} dB at "
                          f"{dedicated['macs_speedup']:.2f}x), FID {row['fid']:.2f}", flush=True)
                    out_path.write_text(json.dumps(report, indent=1))
                if model == cfg["models"][0] and dst == 20 and "check" not in report:
                    result, _ = search_for_budget(pipe, model, dst, guidance, 3.0, BENCH / "searches", progress=False)
                    s = schedule_at_ratio(result, 1 - 1 / 3.0)
                    run = ev.run(AppliedSchedule(pipe, s, "dedicated"), progress=False)
                    rec = compare(ev, run, full, ev.quality(run, full, progress=False), q_full)
                    was = next(r for r in recs if r["base"] == dst and r["family"] == "dipgo" and r["budget"] == 3.0)
                    report["check"] = {"model": model, "base": dst, "budget": 3.0, "psnr_here": rec["psnr_vs_full"],
                                       "psnr_bench": was["psnr_vs_full"], "fid_here": rec["fid"],
                                       "fid_bench": was["fid"]}
                    out_path.write_text(json.dumps(report, indent=1))
            finally:
                ev.close()
    report["seconds"] = round(time.perf_counter() - t0, 1) + report.get("seconds", 0)
    out_path.write_text(json.dumps(report, indent=1))


def write_report() -> None:
    report = json.loads((BENCH / "transfer.json").read_text())
    lines = ["# Step-count transfer (issue 13)", "",
             "A schedule searched for T DDIM steps, mapped to T' steps over normalised time (each new call's mass for "
             "a block is the share of its span the source computed it in; one threshold on that mass for every block, "
             "set so the computed MACs share matches the source's), against the "
             f"schedule searched for T' directly at the same budget, and fewer steps at the transferred schedule's "
             f"MACs (interpolated on the bench's curve). {report['n']} images, seed {report['seed']}, balanced digits, "
             "PSNR against the full model at T' steps; FID is biased upward at this sample size (compare within "
             "the table).", "",
             "| model | T -> T' | budget | MACs speedup (source) | transferred: PSNR / FID | dedicated T' search: "
             "MACs, PSNR / FID | fewer steps at same MACs: PSNR / FID |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        d, f = r["dedicated"], r["fewer_steps_at_macs"]
        lines.append(f"| {r['model']} | {r['from']} -> {r['to']} | {r['budget']:g}x | {r['macs_speedup']:.2f}x "
                     f"({r['source_macs_speedup']:.2f}x) | {r['psnr_vs_full']:.2f} dB / {r['fid']:.2f} | "
                     f"{d['macs_speedup']:.2f}x, {d['psnr_vs_full']:.2f} dB / {d['fid']:.2f} | "
                     f"{f['psnr_vs_full']:.2f} dB / {f['fid']:.2f} |")
    rows = report["rows"]
    if rows:
        gap = [r["psnr_vs_full"] - r["dedicated"]["psnr_vs_full"] for r in rows]
        beat = sum(r["psnr_vs_full"] > r["fewer_steps_at_macs"]["psnr_vs_full"] for r in rows)
        lines += ["", f"Transferred minus dedicated PSNR: mean {sum(gap) / len(gap):+.2f} dB, "
                  f"worst {min(gap):+.2f} dB, best {max(gap):+.2f} dB. Transferred schedules beat fewer steps "
                  "(PSNR, at their own MACs) in "
                  f"{beat} of {len(rows)} points."]
    c = report.get("check")
    if c:
        lines += ["", f"Consistency check: the dedicated {c['model']} DDIM-{c['base']} {c['budget']:g}x schedule "
                  f"re-measured here gives PSNR {c['psnr_here']:.2f} dB / FID {c['fid_here']:.2f}; bench.json has "
                  f"{c['psnr_bench']:.2f} dB / {c['fid_bench']:.2f}."]
    (BENCH / "transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
