"""Re-measure the MACs of the static methods of a bench run with the current execution probe.

Why this exists: the bench run of 2026-11-23 measured mnist-dit with a probe that (a) counted
``transformer_blocks.0`` as running whenever DiT's final layer called its ``norm1.emb`` and (b)
counted a call that reuses every block as free, which holds for a UNet (the runtime skips the whole
call) but not for a DiT (embeddings and final layer still run). Both only affect the MACs column of
static schedules (dipgo, DeepCache/FORA) on DiT; images, quality and wall-clock are untouched, since
the probe only observes. A static schedule's MACs do not depend on the seeds, so re-running each one
for 2 images with the fixed probe measures exactly what the full run executed.

    python benchmarks/remeasure_macs.py benchmarks/results/bench/bench.json --model mnist-dit
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dipgo.evaluate import bench  # noqa: E402
from dipgo.evaluate.evaluation import Evaluator  # noqa: E402
from dipgo.models.pipelines import default_calibration, set_scheduler  # noqa: E402
from dipgo.zoo import load, zoo_names  # noqa: E402

STATIC = ("dipgo", "DeepCache", "DeepCache non-uniform", "fewer steps")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report")
    p.add_argument("--model", required=True, choices=zoo_names())
    args = p.parse_args()
    path = Path(args.report)
    report = json.loads(path.read_text())
    pipe, source = load(args.model)
    set_scheduler(pipe, "ddim")
    guidance = source.guidance_scale
    calibration = default_calibration(pipe, defaults=source.defaults)  # as bench.run_bench calibrates
    ev = Evaluator(pipe, n=2, guidance_scale=guidance, batch=2, calibration=calibration)  # MACs only: no judge
    changes = []
    try:
        for rec in report["records"]:
            if rec["model"] != args.model or rec["family"] not in STATIC:
                continue
            result = None
            if rec["family"] == "dipgo":
                result, _ = bench.search_for_budget(pipe, args.model, rec["base"], guidance, rec["budget"],
                                                    report["config"]["searches"], progress=False,
                                                    calibration=calibration)
            applied = bench._method(rec["family"], pipe, ev, rec["base"], guidance, rec["budget"], result)
            assert applied.label == rec["method"], (applied.label, rec["method"])
            macs = ev.run(applied, progress=False).macs
            changes.append({"method": rec["method"], "base": rec["base"], "old_macs": rec["macs"], "macs": macs})
            rec["macs"], rec["macs_speedup"] = macs, rec["macs_full"] / macs
            print(f"DDIM-{rec['base']} {rec['method']}: {changes[-1]['old_macs'] / 1e9:.3f} G -> {macs / 1e9:.3f} G "
                  f"({rec['macs_speedup']:.2f}x)")
    finally:
        ev.close()
    report.setdefault("corrections", []).append({
        "what": f"MACs of the static methods on {args.model} re-measured with the fixed execution probe "
                "(benchmarks/remeasure_macs.py); quality and wall-clock columns are from the original run",
        "changes": changes})
    path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
