"""Peak memory of one search iteration over a 50-step unrolled run, with and without checkpointing.

    python benchmarks/search_memory.py mnist-sd --batch 4

Each mode runs in a fresh process; its peak resident set size (ru_maxrss) is reported together
with the peak of a process that only loads the pipeline and runs the full model once (the base).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(model: str, mode: str, batch: int, steps: int) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from dipgo.cache.search import Search, SearchConfig
    from dipgo.models.pipelines import default_calibration, generate
    from dipgo.zoo import load

    pipe, source = load(model)
    guidance = source.guidance_scale
    calibration = default_calibration(pipe, defaults=source.defaults)
    t0 = time.perf_counter()
    if mode == "base":
        generate(pipe, calibration, calibration.cycle(batch), num_inference_steps=steps, guidance_scale=guidance,
                 batch_size=batch)
    else:
        cfg = SearchConfig(ratio=0.8, num_inference_steps=steps, guidance_scale=guidance, iterations=2, batch=batch,
                           grad_checkpointing=(mode == "checkpointing"))
        Search(pipe, cfg, calibration=calibration).run(progress=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "peak_rss_mb": round(peak_mb), "seconds": round(time.perf_counter() - t0, 1),
                      "threads": torch.get_num_threads()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model", nargs="?", default="mnist-sd")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--child", default=None)
    args = p.parse_args()
    if args.child:
        return child(args.model, args.child, args.batch, args.steps)
    rows = []
    for mode in ("base", "checkpointing", "no-checkpointing"):
        out = subprocess.run([sys.executable, __file__, args.model, "--batch", str(args.batch), "--steps",
                              str(args.steps), "--child", mode], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    result = {"model": args.model, "batch": args.batch, "steps": args.steps, "rows": rows}
    path = ROOT / "benchmarks" / "results" / f"search-memory-{args.model}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
