"""Peak memory of one search iteration over a 50-step unrolled run, with and without checkpointing.

    python -m benchmarks.search_memory mnist-sd --batch 4   # -> benchmarks/results/search-memory-<model>.json

Each mode runs in a fresh process; its peak resident set size (ru_maxrss) is reported together
with the peak of a process that only loads the pipeline and runs the full model once (the base).
"""

from __future__ import annotations

import json
import resource
import time

from benchmarks import harness as h

MODES = ("base", "checkpointing", "no-checkpointing")


def child(model: str, mode: str, batch: int, steps: int) -> None:
    import torch

    from dipgo.cache.search import Search, SearchConfig
    from dipgo.models.pipelines import generate

    m = h.Model(model, scheduler=None)
    t0 = time.perf_counter()
    if mode == "base":
        generate(m.pipe, m.calibration, m.calibration.cycle(batch), num_inference_steps=steps,
                 guidance_scale=m.guidance, batch_size=batch)
    else:
        cfg = SearchConfig(ratio=0.8, num_inference_steps=steps, guidance_scale=m.guidance, iterations=2, batch=batch,
                           grad_checkpointing=(mode == "checkpointing"))
        Search(m.pipe, cfg, calibration=m.calibration).run(progress=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "peak_rss_mb": round(peak_mb), "seconds": round(time.perf_counter() - t0, 1),
                      "threads": torch.get_num_threads()}))


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("model", nargs="?", default="mnist-sd")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--child", choices=MODES, default=None, help="internal: measure one mode in this process")
    args = p.parse_args()
    if args.child:
        return child(args.model, args.child, args.batch, args.steps)
    rows = [h.child_json("search_memory", args.model, "--batch", str(args.batch), "--steps", str(args.steps),
                         "--child", mode) for mode in MODES]
    result = {"model": args.model, "batch": args.batch, "steps": args.steps, "rows": rows, "machine": h.machine()}
    print(f"wrote {h.write_json(h.RESULTS / f'search-memory-{args.model}.json', result)}")


if __name__ == "__main__":
    main()
