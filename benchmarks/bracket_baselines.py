"""Measure the baseline points that bracket each dipgo point of a finished bench, and rewrite its reports.

    python -m benchmarks.bracket_baselines benchmarks/results/bench

The target check compares dipgo with each baseline's curve at dipgo's own MACs. Where dipgo lands beyond
the baseline's measured points, the check would otherwise take the nearest point, which spends other MACs.
``dipgo bench`` measures the far-side setting itself (``BenchConfig.bracket``); this adds it to reports
made without it, without re-running anything else. Wall-clock columns of the added rows are only
meaningful if the machine was otherwise idle.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks import harness as h


def bench_report(folder: Path, tag: str | None) -> Path:
    """The folder's one bench report (``<tag>.json``, or the only JSON with records)."""
    reports = [folder / f"{tag}.json"] if tag else [f for f in folder.glob("*.json")
                                                    if "records" in json.loads(f.read_text())]
    if len(reports) != 1:
        sys.exit(f"{folder}: expected one bench report, found {[r.name for r in reports]}; pass --tag")
    return reports[0]


def add_brackets(report: dict, progress: bool = True) -> dict:
    """A finished bench report with its bracketing baseline points measured and added (same images, seeds and
    batch as the report; the full model is re-run for the PSNR reference). For reports made before
    ``BenchConfig.bracket`` existed."""
    from dipgo import zoo
    from dipgo.evaluate.baselines import Full
    from dipgo.evaluate.bench import BenchConfig, bracket_points, machine, measure_brackets
    from dipgo.evaluate.evaluation import Evaluator, Judge
    from dipgo.models.pipelines import default_calibration, set_scheduler

    cfg = BenchConfig(**{k: v for k, v in report["config"].items() if k in BenchConfig.__dataclass_fields__})
    records = list(report["records"])
    t0 = time.perf_counter()
    for model in dict.fromkeys(r["model"] for r in records):
        pipe, source = zoo.load(model, cfg.dtype, cfg.device)
        set_scheduler(pipe, cfg.scheduler)
        guidance = source.guidance_scale
        ev = Evaluator(pipe, cfg.n, cfg.seed, guidance, cfg.batch, default_calibration(pipe, defaults=source.defaults),
                       Judge.from_source(source))
        try:
            for base in dict.fromkeys(r["base"] for r in records if r["model"] == model):
                todo = bracket_points(pipe, base, guidance, [r for r in records if r["model"] == model
                                                             and r["base"] == base])
                if not todo:
                    continue
                full = ev.run(Full().bind(pipe, base, guidance), progress)
                q_full = ev.quality(full, None, progress)
                records += measure_brackets(ev, todo, model, base, full, q_full, cfg.scheduler, progress)
        finally:
            ev.close()
    return dict(report, records=records, bracket_seconds=round(time.perf_counter() - t0, 1),
                bracket_machine=machine())


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("folder", help="a bench results folder holding <tag>.json")
    p.add_argument("--tag", default=None, help="the report's tag (default: the folder's only *.json report)")
    h.add_threads(p, 2)
    args = p.parse_args()

    from dipgo.evaluate.bench import target_check, write_reports
    from dipgo.malloc import tune_malloc

    tune_malloc()
    h.set_threads(args.threads)
    folder = Path(args.folder)
    report = h.read_json(bench_report(folder, args.tag))
    before = target_check(report["records"])
    report = add_brackets(report)
    after = target_check(report["records"])
    write_reports(report, folder, h.pruned_entries(h.RESULTS))
    for b, a in zip(before, after, strict=True):
        if (b["other_psnr"], b["other_fid"]) != (a["other_psnr"], a["other_fid"]):
            print(f"{a['model']} {a['base']} {a['budget']:g}x vs {a['versus']}: PSNR {b['other_psnr']:.2f} -> "
                  f"{a['other_psnr']:.2f}, FID {b['other_fid']:.2f} -> {a['other_fid']:.2f}, "
                  f"met {b['met']} -> {a['met']}")
    print(f"met {sum(c['met'] for c in before)} -> {sum(c['met'] for c in after)} of {len(after)}")


if __name__ == "__main__":
    main()
