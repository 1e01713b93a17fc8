"""Step-count transfer: a schedule searched for T steps, mapped to T' steps over normalised time
(``Schedule.transferred``, the opt-in ``dipgo.apply(pipe, s, num_inference_steps=T')``), against the
schedule searched for T' directly at the same budget, and against fewer steps at the transferred
schedule's MACs.

    python -m benchmarks.step_transfer             # -> benchmarks/results/bench/transfer.{md,json}
    python -m benchmarks.step_transfer --report    # rewrite transfer.md from transfer.json

The source and dedicated schedules come from the committed bench searches (``benchmarks/results/bench/
searches``, DDIM-50 and DDIM-20 at 2x / 3x / 4.4x; of the two initialisations, the lower final consistency).
Quality is measured exactly as ``dipgo bench`` does (256 images, seed 0, batch 32, balanced digits,
DDIM-T'); the dedicated and fewer-steps figures are read from ``bench.json`` (one dedicated point is
re-measured here to check that the two runs agree).
"""

from __future__ import annotations

import time

from benchmarks import harness as h

BENCH = h.RESULTS / "bench"
JSON = BENCH / "transfer.json"
PAIRS = ((50, 20), (20, 50))
BUDGETS = (2.0, 3.0, 4.4)
CHECK_BUDGET = 3.0


def schedule_for(m: h.Model, base: int, budget: float):
    """The committed bench search's schedule for ``base`` steps at ``budget``."""
    from dipgo.cache.postprocess import schedule_at_ratio

    result, _ = h.committed_search(m, base, budget)
    return schedule_at_ratio(result, 1 - 1 / budget)


def transfer_row(q: h.QualityPass, recs: list[dict], src: int, dst: int, budget: float) -> dict:
    """The ``src``-step schedule moved to ``dst`` steps, against the dedicated one and fewer steps."""
    from dipgo.evaluate.baselines import AppliedSchedule
    from dipgo.evaluate.bench import at_macs
    from dipgo.models.pipelines import num_calls

    m = q.model
    schedule = schedule_for(m, src, budget)
    moved = schedule.transferred(dst, num_calls(m.pipe, dst))
    rec = q.record(AppliedSchedule(m.pipe, moved, f"dipgo {src}->{dst}"))
    dedicated = next(r for r in recs if r["base"] == dst and r["family"] == "dipgo" and r["budget"] == budget)
    steps_curve = [r for r in recs if r["base"] == dst and r["family"] in ("fewer steps", "full")]
    few_psnr, _ = at_macs(steps_curve, rec["macs_speedup"], "psnr_vs_full")
    few_fid, _ = at_macs(steps_curve, rec["macs_speedup"], "fid")
    row = {"model": m.name, "from": src, "to": dst, "budget": budget,
           "source_macs_speedup": schedule.macs_full / schedule.macs,
           "macs_speedup": rec["macs_speedup"], "psnr_vs_full": rec["psnr_vs_full"],
           "fid": rec["fid"], "fid_full": rec["fid_full"],
           "dedicated": {k: dedicated[k] for k in ("macs_speedup", "psnr_vs_full", "fid")},
           "fewer_steps_at_macs": {"psnr_vs_full": few_psnr, "fid": few_fid}}
    print(f"{m.name} {src}->{dst} {budget:g}x: MACs {row['macs_speedup']:.2f}x, PSNR {row['psnr_vs_full']:.2f} dB "
          f"(dedicated {dedicated['psnr_vs_full']:.2f} dB at {dedicated['macs_speedup']:.2f}x), "
          f"FID {row['fid']:.2f}", flush=True)
    return row


def consistency_check(q: h.QualityPass, recs: list[dict], base: int) -> dict:
    """One dedicated schedule re-measured here, beside bench.json's figures for it."""
    from dipgo.evaluate.baselines import AppliedSchedule

    rec = q.record(AppliedSchedule(q.model.pipe, schedule_for(q.model, base, CHECK_BUDGET), "dedicated"))
    was = next(r for r in recs if r["base"] == base and r["family"] == "dipgo" and r["budget"] == CHECK_BUDGET)
    return {"model": q.model.name, "base": base, "budget": CHECK_BUDGET, "psnr_here": rec["psnr_vs_full"],
            "psnr_bench": was["psnr_vs_full"], "fid_here": rec["fid"], "fid_bench": was["fid"]}


def measure(threads: int) -> None:
    h.set_threads(threads)
    bench = h.read_json(BENCH / "bench.json")
    cfg = bench["config"]
    report = h.read_json(JSON, {"rows": []})
    report.update(n=cfg["n"], seed=cfg["seed"], batch=cfg["batch"], threads=threads)
    t0 = time.perf_counter()
    for model in cfg["models"]:
        m = h.Model(model)
        recs = [r for r in bench["records"] if r["model"] == model]
        for src, dst in PAIRS:
            todo = [b for b in BUDGETS if not any((r["model"], r["from"], r["to"], r["budget"]) == (model, src, dst, b)
                                                  for r in report["rows"])]
            if not todo:
                continue
            q = h.QualityPass(m, cfg["n"], dst, cfg["seed"], cfg["batch"])
            for budget in todo:
                report["rows"].append(transfer_row(q, recs, src, dst, budget))
                h.write_json(JSON, report)
            if model == cfg["models"][0] and dst == 20 and "check" not in report:
                report["check"] = consistency_check(q, recs, dst)
                h.write_json(JSON, report)
    report["seconds"] = round(time.perf_counter() - t0, 1) + report.get("seconds", 0)
    h.write_json(JSON, report)


def write_report() -> None:
    report = h.read_json(JSON)
    lines = ["# Step-count transfer", "",
             "A schedule searched for T DDIM steps, mapped to T' steps over normalised time (each new call's mass for "
             "a block is the share of its span the source computed it in; one threshold on that mass for every block, "
             "set so the computed MACs share matches the source's), against the "
             f"schedule searched for T' directly at the same budget, and fewer steps at the transferred schedule's "
             f"MACs (interpolated on the bench's curve). {report['n']} images, seed {report['seed']}, balanced digits, "
             "PSNR against the full model at T' steps; FID is biased upward at this sample size (compare within "
             f"the table). `{h.how_to_run('step_transfer')}`.", ""]
    rows = report["rows"]
    lines += h.table(("model", "T -> T'", "budget", "MACs speedup (source)", "transferred: PSNR / FID",
                      "dedicated T' search: MACs, PSNR / FID", "fewer steps at same MACs: PSNR / FID"),
                     [[r["model"], f"{r['from']} -> {r['to']}", f"{r['budget']:g}x",
                       f"{r['macs_speedup']:.2f}x ({r['source_macs_speedup']:.2f}x)",
                       f"{r['psnr_vs_full']:.2f} dB / {r['fid']:.2f}",
                       f"{r['dedicated']['macs_speedup']:.2f}x, {r['dedicated']['psnr_vs_full']:.2f} dB / "
                       f"{r['dedicated']['fid']:.2f}",
                       f"{r['fewer_steps_at_macs']['psnr_vs_full']:.2f} dB / {r['fewer_steps_at_macs']['fid']:.2f}"]
                      for r in rows])
    if rows:
        gap = [r["psnr_vs_full"] - r["dedicated"]["psnr_vs_full"] for r in rows]
        beat = sum(r["psnr_vs_full"] > r["fewer_steps_at_macs"]["psnr_vs_full"] for r in rows)
        lines += ["", f"Transferred minus dedicated PSNR: mean {sum(gap) / len(gap):+.2f} dB, "
                  f"worst {min(gap):+.2f} dB, best {max(gap):+.2f} dB. Transferred schedules beat fewer steps "
                  f"(PSNR, at their own MACs) in {beat} of {len(rows)} points."]
    c = report.get("check")
    if c:
        lines += ["", f"Consistency check: the dedicated {c['model']} DDIM-{c['base']} {c['budget']:g}x schedule "
                  f"re-measured here gives PSNR {c['psnr_here']:.2f} dB / FID {c['fid_here']:.2f}; bench.json has "
                  f"{c['psnr_bench']:.2f} dB / {c['fid_bench']:.2f}."]
    h.write_markdown(BENCH / "transfer.md", lines)


def main() -> None:
    p = h.parser(__doc__)
    h.add_threads(p, 1)
    h.add_report(p, "transfer.md")
    args = p.parse_args()
    if not args.report:
        measure(args.threads)
    write_report()


if __name__ == "__main__":
    main()
