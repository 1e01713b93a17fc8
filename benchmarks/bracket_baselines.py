"""Measure the baseline points that bracket each dipgo point of a finished bench, and rewrite its reports.

    python benchmarks/bracket_baselines.py benchmarks/results/bench-refine

The target check compares dipgo with each baseline's curve at dipgo's own MACs. Where dipgo lands beyond
the baseline's measured points, the check used to take the nearest point, which spends other MACs (5 %
more at mnist-dit DDIM-20 4.4x). ``dipgo bench`` now measures the far-side setting itself
(``BenchConfig.bracket``); this adds it to reports made before that, without re-running anything else.
Wall-clock columns of the added rows are only meaningful if the machine was otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a bench results folder holding <tag>.json")
    p.add_argument("--tag", default=None, help="the report's tag (default: the folder's only *.json report)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from dipgo.evaluate.bench import add_brackets, target_check, write_reports
    from dipgo.malloc import tune_malloc

    tune_malloc()
    torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    reports = [folder / f"{args.tag}.json"] if args.tag else [f for f in folder.glob("*.json")
                                                              if "records" in json.loads(f.read_text())]
    if len(reports) != 1:
        sys.exit(f"{folder}: expected one bench report, found {[r.name for r in reports]}; pass --tag")
    report = json.loads(reports[0].read_text())
    before = target_check(report["records"])
    report = add_brackets(report)
    after = target_check(report["records"])
    write_reports(report, folder)
    for b, a in zip(before, after, strict=True):
        if (b["other_psnr"], b["other_fid"]) != (a["other_psnr"], a["other_fid"]):
            print(f"{a['model']} {a['base']} {a['budget']:g}x vs {a['versus']}: PSNR {b['other_psnr']:.2f} -> "
                  f"{a['other_psnr']:.2f}, FID {b['other_fid']:.2f} -> {a['other_fid']:.2f}, "
                  f"met {b['met']} -> {a['met']}")
    print(f"met {sum(c['met'] for c in before)} -> {sum(c['met'] for c in after)} of {len(after)}")


if __name__ == "__main__":
    main()
