"""Re-measure the MACs of the static methods of a bench run with the current execution probe.

A bench report measured with an older probe may count a DiT's MACs wrongly: a probe that counted
``transformer_blocks.0`` as running whenever DiT's final layer called its ``norm1.emb``, or that counted a
call reusing every block as free (true for a UNet, whose whole call the runtime skips, but not for a DiT,
whose embeddings and final layer still run). Both only affect the MACs column of static schedules (dipgo,
DeepCache/FORA) on DiT; images, quality and wall clock are untouched, since the probe only observes. A
static schedule's MACs do not depend on the seeds, so re-running each one for 2 images with the current
probe measures exactly what the full run executed. The report records the correction.

    python -m benchmarks.remeasure_macs benchmarks/results/bench/bench.json --model mnist-dit
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import harness as h

STATIC = ("dipgo", "DeepCache", "DeepCache non-uniform", "fewer steps")


def applied_for(rec: dict, m: h.Model, searches: str):
    """The static method of a bench record, bound as the bench bound it."""
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.evaluate.baselines import AppliedSchedule, FewerSteps
    from dipgo.evaluate.bench import deepcache_for_budget

    base, budget = rec["base"], rec["budget"]
    if rec["family"] == "dipgo":
        result, _ = h.committed_search(m, base, budget, searches)
        schedule = schedule_at_ratio(result, 1 - 1 / budget)
        return AppliedSchedule(m.pipe, schedule, f"dipgo {schedule.macs_full / schedule.macs:.2f}x")
    if rec["family"] == "fewer steps":
        return FewerSteps(max(1, round(base / budget))).bind(m.pipe, base, m.guidance)
    mode = "uniform" if rec["family"] == "DeepCache" else "nonuniform"
    return deepcache_for_budget(m.pipe, base, m.guidance, budget, mode)


def remeasure(report: dict, m: h.Model) -> list[dict]:
    """Re-run every static record of ``m`` for 2 images and correct its MACs; the changes made."""
    from dipgo.evaluate.evaluation import Evaluator

    ev = Evaluator(m.pipe, n=2, guidance_scale=m.guidance, batch=2, calibration=m.calibration)  # MACs only
    changes = []
    try:
        for rec in report["records"]:
            if rec["model"] != m.name or rec["family"] not in STATIC:
                continue
            applied = applied_for(rec, m, report["config"]["searches"])
            assert applied.label == rec["method"], (applied.label, rec["method"])
            macs = ev.run(applied, progress=False).macs
            changes.append({"method": rec["method"], "base": rec["base"], "old_macs": rec["macs"], "macs": macs})
            rec["macs"], rec["macs_speedup"] = macs, rec["macs_full"] / macs
            print(f"DDIM-{rec['base']} {rec['method']}: {changes[-1]['old_macs'] / 1e9:.3f} G -> {macs / 1e9:.3f} G "
                  f"({rec['macs_speedup']:.2f}x)")
    finally:
        ev.close()
    return changes


def main() -> None:
    from dipgo.zoo import zoo_names

    p = h.parser(__doc__)
    p.add_argument("report", help="a bench report (bench.json)")
    p.add_argument("--model", required=True, choices=zoo_names())
    args = p.parse_args()
    path = Path(args.report)
    report = h.read_json(path)
    changes = remeasure(report, h.Model(args.model))  # calibrated as bench.run_bench calibrates
    report.setdefault("corrections", []).append({
        "what": f"MACs of the static methods on {args.model} re-measured with the fixed execution probe "
                f"(`{h.how_to_run('remeasure_macs')}`); quality and wall-clock columns are from the original run",
        "changes": changes})
    h.write_json(path, report)


if __name__ == "__main__":
    main()
