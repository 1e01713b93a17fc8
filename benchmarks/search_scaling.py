"""How the DiP-GO search scales with processes (torchrun, CPU gloo) on mnist-sd, DDIM-20.

    python -m benchmarks.search_scaling            # all three runs, one after another, then the report
    python -m benchmarks.search_scaling --report   # rewrite search-scaling.md from its JSON
    -> benchmarks/results/search-scaling.{json,md}

Three runs of the same search (ratio 0.7, batch 4, ITERATIONS iterations, seed 0), alone on the machine:

* 1 process x 2 threads (the default way to use a 2-core machine);
* 1 process x 1 thread (the per-core baseline);
* 2 processes x 1 thread (torchrun; each generates 2 of the 4 images, gradients summed over gloo).

Per run: median seconds per iteration (the first WARMUP iterations left out), and for 2 processes the
median time spent in the gradient all-reduce (what the processes exchange per iteration). The gates of
the 2-process run are compared with the 1-process run's (max score difference).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness as h

ITERATIONS, WARMUP, BATCH = 30, 3, 4
RUNS = ((1, 2), (1, 1), (2, 1))  # processes, threads per process
MODULE = "benchmarks.search_scaling"


def worker(threads: int, out: str) -> None:
    from dipgo.cache.search import Search, SearchConfig
    from dipgo.dist import world

    h.set_threads(threads)
    m = h.Model("mnist-sd")
    cfg = SearchConfig(ratio=0.7, num_inference_steps=20, guidance_scale=m.guidance, iterations=ITERATIONS,
                       batch=BATCH)
    w = world()
    result = Search(m.pipe, cfg, calibration=m.calibration).run(progress=w.main)
    if w.main:
        hist = result.history[WARMUP:]
        rec = {"processes": w.size, "threads_per_process": threads,
               "s_per_iteration": statistics.median(x["seconds"] for x in hist),
               "s_per_iteration_all": [round(x["seconds"], 4) for x in result.history],
               "comm_s_per_iteration": statistics.median(x["comm_s"] for x in hist) if w.size > 1 else 0.0,
               "scores": result.scores.tolist(), "final_psnr": result.history[-1]["psnr"]}
        Path(out).write_text(json.dumps(rec))
    w.close()


def run(procs: int, threads: int) -> dict:
    """One run in its own process (or processes, under torchrun), from the repository root."""
    out = h.RESULTS / f".scaling-{procs}x{threads}.json"
    cmd = [sys.executable, "-m", MODULE, "--worker", str(threads), str(out)]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               "-m", *cmd[2:]]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=h.ROOT)
    rec = json.loads(out.read_text())
    rec["wall_s"] = time.perf_counter() - t0  # includes start-up and loading
    out.unlink()
    return rec


def run_all() -> None:
    import torch

    runs = [run(procs, threads) for procs, threads in RUNS]
    base = torch.tensor(runs[0]["scores"])
    for r in runs:
        r["max_score_diff_vs_1x2"] = float((torch.tensor(r.pop("scores")) - base).abs().max())
    report = {"model": "mnist-sd", "scheduler": "DDIM-20", "ratio": 0.7, "batch": BATCH, "iterations": ITERATIONS,
              "warmup_left_out": WARMUP, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
              "alone_on_machine": True, "runs": runs, "machine": h.machine()}
    h.write_json(h.RESULTS / "search-scaling.json", report)


def write_report() -> None:
    report = h.read_json(h.RESULTS / "search-scaling.json")
    one = report["runs"][0]["s_per_iteration"]
    lines = [f"# Search scaling with processes ({report['model']}, {report['scheduler']}, batch {report['batch']})",
             "",
             f"{report['iterations']} iterations per run, the first {report['warmup_left_out']} left out; "
             f"{report['cores']} CPU cores; each run alone on the machine; {report['date']}.",
             ""]
    lines += h.table(("processes x threads", "s / iteration (median)", "vs 1 x 2", "all-reduce s / iteration",
                      "share in all-reduce", "max gate-score diff vs 1 x 2", "whole run incl. start-up (s)"),
                     [[f"{r['processes']} x {r['threads_per_process']}", f"{r['s_per_iteration']:.3f}",
                       f"{one / r['s_per_iteration']:.2f}x", f"{r['comm_s_per_iteration']:.4f}",
                       f"{r['comm_s_per_iteration'] / r['s_per_iteration']:.1%}", f"{r['max_score_diff_vs_1x2']:.1e}",
                       f"{r['wall_s']:.0f}"] for r in report["runs"]])
    lines += ["", "Two processes split each iteration's batch (2 images each) and sum the pruner's gradients "
              "(one all-reduce of every pruner parameter per iteration). On a machine with 2 cores the "
              "processes compete for the same cores that one 2-thread process uses, so the gain can only come "
              "from better use of those cores (small kernels parallelise poorly across threads); on GPUs each "
              f"process has its own device. Made by `{h.how_to_run('search_scaling')}` (`make bench-scale`)."]
    h.write_markdown(h.RESULTS / "search-scaling.md", lines)


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--worker", nargs=2, metavar=("THREADS", "OUT"), help="internal: one run's process")
    h.add_report(p, "search-scaling.md")
    args = p.parse_args()
    if args.worker:
        return worker(int(args.worker[0]), args.worker[1])
    if not args.report:
        run_all()
    write_report()


if __name__ == "__main__":
    main()
