"""Rewrite a bench folder's Markdown and plot from its JSON, with the layer- and depth-pruned models that
their own benchmarks measured (``benchmarks/results/layers`` and ``depth``) beside the bench points in
the NTIRE-style ranking.

    python -m benchmarks.bench_pages benchmarks/results/bench
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import harness as h
from benchmarks.bracket_baselines import bench_report


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("folder", help="a bench results folder holding <tag>.json")
    p.add_argument("--tag", default=None, help="the report's tag (default: the folder's only *.json report)")
    args = p.parse_args()

    from dipgo.evaluate.bench import write_reports

    folder = Path(args.folder)
    report = h.read_json(bench_report(folder, args.tag))
    for path in write_reports(report, folder, h.pruned_entries(h.RESULTS)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
