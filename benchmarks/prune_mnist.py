"""Issue-3 benchmark: prune a zoo model, then measure MACs, wall-clock and quality against the full model.

    python benchmarks/prune_mnist.py mnist-sd --ratio 0.8          # ~25 min on 2 cores
    python benchmarks/prune_mnist.py mnist-dit --ratio 0.6

Steps: (1) the DiP-GO search at DDIM-50 with the model card's guidance (timed); (2) wall-clock of
sampling a batch of 16, full and pruned alternated, ``--repeats`` times each (medians); (3) ``--n``
images (balanced digits, seeds 0..n-1) with both, FID against the zoo's statistics of the 5,000 MNIST
images (``zoo/fid-mnist5k.npz``, made by ``zoo/fid_reference.py``), conditioning accuracy, PSNR/SSIM of
each pruned image against the full image of the same seed. Writes
``benchmarks/results/prune-<model>-r<ratio>.json`` and the schedule beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import dipgo  # noqa: E402
from dipgo.cache.postprocess import schedule_at_ratio  # noqa: E402
from dipgo.cache.search import Search, SearchConfig  # noqa: E402
from dipgo.evaluate.evaluation import Judge  # noqa: E402
from dipgo.evaluate.metrics import psnr, ssim  # noqa: E402
from dipgo.fileio import atomic_path  # noqa: E402
from dipgo.models.calibration import Calibration  # noqa: E402
from dipgo.models.images import labelled_rows, save_image  # noqa: E402
from dipgo.models.pipelines import default_calibration, generate, set_scheduler  # noqa: E402
from dipgo.zoo import ModelSource, load, zoo_names  # noqa: E402


def judge_for(source: ModelSource) -> Judge:
    """FID against the zoo's shipped statistics and the digit classifier; fails before any long run."""
    ref = source.fid_reference
    if ref is None or not ref.is_file():
        raise SystemExit(f"{source.name}: FID reference statistics {ref} are missing; "
                         "make them with `python zoo/fid_reference.py` (~12 min on 2 cores)")
    return Judge.from_source(source)


def wall_clock(pipe, calibration: Calibration, schedule, guidance: float, steps: int, repeats: int,
               batch: int = 16) -> dict:
    conditions = calibration.cycle(batch)

    def once():
        t0 = time.perf_counter()
        generate(pipe, calibration, conditions, seed=10_000, num_inference_steps=steps, guidance_scale=guidance,
                 batch_size=batch)
        return time.perf_counter() - t0

    once()  # warm-up of both paths
    dipgo.apply(pipe, schedule)
    once()
    dipgo.remove(pipe)
    full, pruned = [], []
    for _ in range(repeats):  # alternate so drifts in machine load hit both equally
        full.append(once())
        dipgo.apply(pipe, schedule)
        pruned.append(once())
        dipgo.remove(pipe)
    f, p = statistics.median(full), statistics.median(pruned)
    return {"batch": batch, "repeats": repeats, "full_s": full, "pruned_s": pruned,
            "latency_full_ms_per_image": 1000 * f / batch, "latency_ms_per_image": 1000 * p / batch,
            "wall_speedup": f / p}


def fewer_steps_baseline(pipe, calibration: Calibration, judge: Judge, record: dict, full: torch.Tensor,
                         conditions: list[int], guidance: float) -> dict:
    """The simplest competitor at the same MACs: the same DDIM sampler with k = steps * macs / macs_full."""
    k = max(1, round(record["steps"] * record["macs"] / record["macs_full"]))
    imgs = generate(pipe, calibration, conditions, seed=0, num_inference_steps=k, guidance_scale=guidance,
                    batch_size=50, progress=True, desc=f"DDIM-{k}")
    q_full, q_imgs = (full * 255).round() / 255, (imgs * 255).round() / 255
    return {"steps": k, "macs_speedup": record["steps"] / k, "fid": judge.fid(imgs, progress=True),
            "cond_acc": judge.accuracy(imgs, conditions), "psnr_vs_full": float(psnr(q_imgs, q_full).mean()),
            "ssim_vs_full": float(ssim(q_imgs, q_full).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=zoo_names())
    p.add_argument("--ratio", type=float, default=0.8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--init", default="keep")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--grad-checkpointing", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--schedule", default=None, help="skip the search and use this schedule")
    p.add_argument("--wall-only", action="store_true", help="with --schedule: only re-measure the wall clock "
                   "and update it in the existing result file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    tag = f"prune-{args.model}-r{args.ratio:g}"
    pipe, source = load(args.model)
    set_scheduler(pipe, "ddim")
    guidance = source.guidance_scale
    calibration = default_calibration(pipe, defaults=source.defaults)  # condition index == digit
    judge = None if args.wall_only else judge_for(source)
    record: dict = {"model": args.model, "ratio": args.ratio, "steps": args.steps, "guidance_scale": guidance,
                    "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                "threads": torch.get_num_threads(), "torch": torch.__version__}}
    if args.schedule:
        schedule = dipgo.Schedule.load(args.schedule)
    else:
        cfg = SearchConfig(ratio=args.ratio, num_inference_steps=args.steps, guidance_scale=guidance,
                           iterations=args.iterations, batch=args.batch, init=args.init,
                           grad_checkpointing={"auto": None, "on": True, "off": False}[args.grad_checkpointing])
        search = Search(pipe, cfg, checkpoint_path=out / f"{tag}.search.pt", calibration=calibration)
        result = search.run(progress=True)
        record["search"] = {"seconds": result.seconds, "iterations": cfg.iterations, "batch": cfg.batch,
                            "grad_checkpointing": search.checkpointing,
                            "init": cfg.init, "final": result.history[-1]}
        schedule = schedule_at_ratio(result, args.ratio)
        schedule.save(out / f"{tag}.schedule.json")
        (out / f"{tag}.search.pt").unlink(missing_ok=True)
    record["macs_full"], record["macs"] = schedule.macs_full, schedule.macs
    record["macs_speedup"] = schedule.macs_full / schedule.macs
    record["achieved_ratio"] = schedule.achieved_ratio
    print(schedule.summary(), flush=True)

    record["wall"] = wall_clock(pipe, calibration, schedule, guidance, args.steps, args.repeats)
    record["wall_over_macs_speedup"] = record["wall"]["wall_speedup"] / record["macs_speedup"]
    print(json.dumps(record["wall"], indent=1), flush=True)
    if args.wall_only:
        old = json.loads((out / f"{tag}.json").read_text())
        old.update({k: record[k] for k in ("wall", "wall_over_macs_speedup", "machine")})
        with atomic_path(out / f"{tag}.json") as tmp:
            tmp.write_text(json.dumps(old, indent=1))
        return

    conditions = calibration.cycle(args.n)
    full = generate(pipe, calibration, conditions, seed=0, num_inference_steps=args.steps, guidance_scale=guidance,
                    batch_size=50, progress=True, desc="full model")
    dipgo.apply(pipe, schedule)
    pruned = generate(pipe, calibration, conditions, seed=0, num_inference_steps=args.steps, guidance_scale=guidance,
                      batch_size=50, progress=True, desc="dipgo")
    dipgo.remove(pipe)
    def q(x):  # compare 8-bit images, as saved
        return (x * 255).round() / 255

    record.update({
        "n": args.n, "seed": 0,
        "fid_full": judge.fid(full, progress=True), "fid": judge.fid(pruned, progress=True),
        "cond_acc_full": judge.accuracy(full, conditions), "cond_acc": judge.accuracy(pruned, conditions),
        "psnr_vs_full": float(psnr(q(pruned), q(full)).mean()), "ssim_vs_full": float(ssim(q(pruned), q(full)).mean()),
    })
    record["fid_rel_change"] = record["fid"] / record["fid_full"] - 1
    record["fewer_steps"] = fewer_steps_baseline(pipe, calibration, judge, record, full, conditions, guidance)
    save_image(labelled_rows([("full model", full[:20]), (f"dipgo {record['macs_speedup']:.2f}x fewer MACs",
                                                           pruned[:20])]), out / f"{tag}.png")
    with atomic_path(out / f"{tag}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k not in ("wall", "machine")}, indent=1))


if __name__ == "__main__":
    main()
