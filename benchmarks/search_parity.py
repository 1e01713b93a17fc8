"""The generic search (the pipeline's own ``__call__`` through the runtime hooks) against the hand-written
sampling loop it replaced, in one run, on mnist-sd DDIM-20, ratio 0.7, 60 iterations x 4 images, search
seeds 0, 1 and 2.

    python -m benchmarks.search_parity             # run it alone on the machine
    python -m benchmarks.search_parity --report    # rewrite generic-search.md from its JSON

Both searches compute the same thing (same conditions, noise and gates per iteration), so their loss
histories agree until float rounding differs (the new search skips the denoiser's weight gradients,
which changes backward kernels); hard gates then amplify the difference. So quality is compared over
three search seeds, and the first iteration where the two histories differ is reported.

The old search is the code of commit ``OLD`` (the last one with ``rollout.py``), checked out into a
temporary git worktree and run as its own process; the new one runs from this checkout, also as its
own process, with the same CLI arguments and thread count. Both schedules are then applied with this
checkout's runtime and compared with the full model on the same 64 seeds (PSNR on 8-bit images).
Writes ``benchmarks/results/generic-search.json`` and ``.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness as h

OLD = "f05ec23"  # the hand-written rollout loop
ARGS = ["prune", "mnist-sd", "--ratio", "0.7", "--steps", "20", "--scheduler", "ddim", "--iterations", "60",
        "--batch", "4"]
SEEDS = (0, 1, 2)
N_EVAL, EVAL_SEED = 64, 1000
KEYS = ("seconds_per_iteration", "macs_speedup", "psnr_vs_full", "ssim_vs_full")
JSON, PAGE = h.RESULTS / "generic-search.json", h.RESULTS / "generic-search.md"


def run_search(src: Path, out: Path, seed: int) -> dict:
    """One search by the CLI of the code under ``src``, in its own process."""
    import torch

    env = dict(os.environ, PYTHONPATH=str(src), DIPGO_ZOO=str(h.ROOT / "zoo"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dipgo.cli", *ARGS, "--seed", str(seed), "--out", str(out), "--checkpoint",
                    str(out.with_suffix(".ckpt"))], env=env, check=True, stderr=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    data = json.loads(out.read_text())
    seconds = data["meta"]["search"]["seconds"]
    history = [x["consistency"] for x in torch.load(out.with_suffix(".ckpt"), weights_only=True)["history"]]
    return {"seed": seed, "search_seconds": seconds, "seconds_per_iteration": seconds / 60,
            "process_wall_seconds": round(wall, 1), "achieved_ratio": data["achieved_ratio"],
            "macs_speedup": data["macs_full"] / data["macs"], "history": history, "path": out}


def searches(tmp: Path) -> dict[str, list[dict]]:
    """Every search of both codes, seed by seed, the old code from a temporary worktree of ``OLD``."""
    old_tree = tmp / "old"
    subprocess.run(["git", "-C", str(h.ROOT), "worktree", "add", "--detach", "-q", str(old_tree), OLD], check=True)
    try:
        srcs = {"hand-written loop (old)": old_tree / "src", "generic, pipeline's own __call__ (new)": h.ROOT / "src"}
        runs: dict[str, list[dict]] = {name: [] for name in srcs}
        for seed in SEEDS:
            for i, (name, src) in enumerate(srcs.items()):
                print(f"searching: {name}, seed {seed}", flush=True)
                runs[name].append(run_search(src, tmp / f"{i}-{seed}.json", seed))
        return runs
    finally:
        subprocess.run(["git", "-C", str(h.ROOT), "worktree", "remove", "--force", str(old_tree)], check=False)


def score(runs: dict[str, list[dict]]) -> None:
    """PSNR/SSIM of every schedule against the full model, applied with this checkout's runtime."""
    from dipgo.cache.schedule import Schedule
    from dipgo.evaluate.baselines import AppliedSchedule

    m = h.Model("mnist-sd")
    q = h.QualityPass(m, n=N_EVAL, steps=20, seed=EVAL_SEED, batch=32, scored=False)
    for recs in runs.values():
        for rec in recs:
            r = q.record(AppliedSchedule(m.pipe, Schedule.load(rec.pop("path")), "dipgo"))
            rec["psnr_vs_full"] = round(r["psnr_vs_full"], 3)
            rec["ssim_vs_full"] = round(r["ssim_vs_full"], 4)


def measure() -> dict:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        runs = searches(Path(tmp))
        score(runs)
    old, new = runs.values()
    for a, b in zip(old, new, strict=True):
        diff = [i for i, (x, y) in enumerate(zip(a["history"], b["history"], strict=True)) if abs(x - y) > 1e-5]
        b["first_iteration_differing_from_old"] = diff[0] if diff else None
    mean = {name: {k: round(sum(r[k] for r in recs) / len(recs), 4) for k in KEYS} for name, recs in runs.items()}
    s_old, s_new = mean.values()
    return {"setting": " ".join(ARGS), "old_commit": OLD, "threads": torch.get_num_threads(), "eval_images": N_EVAL,
            "runs": {name: [{k: v for k, v in r.items() if k != "history"} for r in recs]
                     for name, recs in runs.items()},
            "mean": mean,
            "time_ratio_new_over_old": round(s_new["seconds_per_iteration"] / s_old["seconds_per_iteration"], 3),
            "psnr_new_minus_old_db": round(s_new["psnr_vs_full"] - s_old["psnr_vs_full"], 3),
            "machine": h.machine()}


def write_report() -> None:
    results = h.read_json(JSON)
    seeds = sorted({r["seed"] for recs in results["runs"].values() for r in recs})
    lines = ["# Generic search vs the hand-written loop", "",
             f"`{results['setting']}`, search seeds {', '.join(map(str, seeds))}, {results['threads']} torch "
             f"threads, each search its own process, run alone on the machine; quality: {results['eval_images']} "
             f"images (seeds {EVAL_SEED}-{EVAL_SEED - 1 + results['eval_images']}) against the full model, 8-bit. "
             f"`{h.how_to_run('search_parity')}`.", ""]
    rows = []
    for name, recs in results["runs"].items():
        for r in recs:
            rows.append([name, r["seed"], f"{r['seconds_per_iteration']:.2f}", f"{r['macs_speedup']:.2f}x",
                         f"{r['psnr_vs_full']:.2f} dB", f"{r['ssim_vs_full']:.4f}",
                         "-" if r.get("first_iteration_differing_from_old") is None
                         else r["first_iteration_differing_from_old"]])
        m = results["mean"][name]
        rows.append([f"**{name}, mean**", "", f"{m['seconds_per_iteration']:.2f}", f"{m['macs_speedup']:.2f}x",
                     f"{m['psnr_vs_full']:.2f} dB", f"{m['ssim_vs_full']:.4f}", ""])
    lines += h.table(("search", "seed", "s / iteration", "MACs speedup", "PSNR vs full", "SSIM vs full",
                      "diverges at"), rows)
    lines += ["", f"Time per iteration, new / old: **{results['time_ratio_new_over_old']:.3f}** (target <= 1.25). "
              f"Mean PSNR new - old: **{results['psnr_new_minus_old_db']:+.2f} dB** (target within 0.5 dB)."]
    if results.get("notes"):  # the reading of a run, written by hand into its JSON
        lines += ["", *results["notes"]]
    h.write_markdown(PAGE, lines)


def main() -> None:
    p = h.parser(__doc__)
    h.add_report(p, "generic-search.md")
    if not p.parse_args().report:
        h.write_json(JSON, measure())  # a new run drops the notes on the last one
    write_report()


if __name__ == "__main__":
    main()
