"""Issue 9 benchmark: the generic search (the pipeline's own ``__call__`` through the runtime hooks)
against the hand-written sampling loop it replaced, in one run, on mnist-sd DDIM-20, ratio 0.7,
60 iterations x 4 images, search seeds 0, 1 and 2.

    python benchmarks/generic_search.py            # ~8 min on 2 cores; run it alone on the machine

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

OLD = "f05ec23"  # the hand-written rollout loop (before issue 9)
ARGS = ["prune", "mnist-sd", "--ratio", "0.7", "--steps", "20", "--scheduler", "ddim", "--iterations", "60",
        "--batch", "4"]
SEEDS = (0, 1, 2)
N_EVAL = 64


def run_search(src: Path, out: Path, seed: int) -> dict:
    import torch

    env = dict(os.environ, PYTHONPATH=str(src), DIPGO_ZOO=str(ROOT / "zoo"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dipgo.cli", *ARGS, "--seed", str(seed), "--out", str(out), "--checkpoint",
                    str(out.with_suffix(".ckpt"))], env=env, check=True, stderr=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    data = json.loads(out.read_text())
    seconds = data["meta"]["search"]["seconds"]
    history = [h["consistency"] for h in torch.load(out.with_suffix(".ckpt"), weights_only=False)["history"]]
    return {"seed": seed, "search_seconds": seconds, "seconds_per_iteration": seconds / 60,
            "process_wall_seconds": round(wall, 1), "achieved_ratio": data["achieved_ratio"],
            "macs_speedup": data["macs_full"] / data["macs"], "history": history}


def main() -> None:
    import torch

    from dipgo import zoo
    from dipgo.cache.apply import apply, remove
    from dipgo.cache.schedule import Schedule
    from dipgo.models.pipelines import default_calibration, generate, set_scheduler
    from dipgo.models.similarity import psnr, ssim

    results: dict = {"setting": " ".join(ARGS), "old_commit": OLD, "threads": torch.get_num_threads(),
                     "eval_images": N_EVAL}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old_tree = tmp / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old_tree), OLD], check=True)
        try:
            srcs = {"hand-written loop (old)": old_tree / "src", "generic, pipeline's own __call__ (new)": ROOT / "src"}
            runs = {name: [] for name in srcs}
            for seed in SEEDS:
                for i, (name, src) in enumerate(srcs.items()):
                    print(f"searching: {name}, seed {seed}", flush=True)
                    rec = run_search(src, tmp / f"{i}-{seed}.json", seed)
                    rec["path"] = tmp / f"{i}-{seed}.json"
                    runs[name].append(rec)
            pipe, source = zoo.load("mnist-sd")
            set_scheduler(pipe, "ddim")
            cal = default_calibration(pipe, defaults=source.defaults)
            conds = cal.cycle(N_EVAL)

            def images():
                return generate(pipe, cal, conds, seed=1000, num_inference_steps=20,
                                guidance_scale=source.guidance_scale, batch_size=32)

            q = lambda x: (x * 255).round() / 255  # noqa: E731 - as saved
            full = q(images())
            for recs in runs.values():
                for rec in recs:
                    apply(pipe, Schedule.load(rec.pop("path")))
                    try:
                        pruned = q(images())
                    finally:
                        remove(pipe)
                    rec["psnr_vs_full"] = round(float(psnr(pruned, full).mean()), 3)
                    rec["ssim_vs_full"] = round(float(ssim(pruned, full).mean()), 4)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)], check=False)
    old, new = runs.values()
    for a, b in zip(old, new, strict=True):
        diff = [i for i, (x, y) in enumerate(zip(a["history"], b["history"], strict=True)) if abs(x - y) > 1e-5]
        b["first_iteration_differing_from_old"] = diff[0] if diff else None
    summary = {}
    for name, recs in runs.items():
        summary[name] = {k: round(sum(r[k] for r in recs) / len(recs), 4)
                         for k in ("seconds_per_iteration", "macs_speedup", "psnr_vs_full", "ssim_vs_full")}
    results["runs"] = {name: [{k: v for k, v in r.items() if k != "history"} for r in recs]
                       for name, recs in runs.items()}
    results["mean"] = summary
    (s_old, s_new) = summary.values()
    results["time_ratio_new_over_old"] = round(s_new["seconds_per_iteration"] / s_old["seconds_per_iteration"], 3)
    results["psnr_new_minus_old_db"] = round(s_new["psnr_vs_full"] - s_old["psnr_vs_full"], 3)
    out = ROOT / "benchmarks" / "results"
    (out / "generic-search.json").write_text(json.dumps(results, indent=1))
    lines = ["# Generic search vs the hand-written loop (issue 9)", "",
             f"`{results['setting']}`, search seeds {', '.join(map(str, SEEDS))}, {results['threads']} torch threads, "
             f"each search its own process, run alone on the machine; quality: {N_EVAL} images (seeds "
             f"1000-{999 + N_EVAL}) against the full model, 8-bit.", "",
             "| search | seed | s / iteration | MACs speedup | PSNR vs full | SSIM vs full | diverges at |",
             "|---|---|---|---|---|---|---|"]
    for name, recs in runs.items():
        for r in recs:
            lines.append(f"| {name} | {r['seed']} | {r['seconds_per_iteration']:.2f} | {r['macs_speedup']:.2f}x | "
                         f"{r['psnr_vs_full']:.2f} dB | {r['ssim_vs_full']:.4f} | "
                         f"{r.get('first_iteration_differing_from_old', '-')} |")
        m = summary[name]
        lines.append(f"| **{name}, mean** | | {m['seconds_per_iteration']:.2f} | {m['macs_speedup']:.2f}x | "
                     f"{m['psnr_vs_full']:.2f} dB | {m['ssim_vs_full']:.4f} | |")
    lines += ["", f"Time per iteration, new / old: **{results['time_ratio_new_over_old']:.3f}** (target <= 1.25). "
              f"Mean PSNR new - old: **{results['psnr_new_minus_old_db']:+.2f} dB** (target within 0.5 dB)."]
    (out / "generic-search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
