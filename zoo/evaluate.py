"""Measure a zoo model's quality (the numbers its model card quotes).

    python zoo/evaluate.py mnist-sd --guidance 4 --n 1000          # quality.json, samples.png
    python zoo/evaluate.py mnist-sd --sweep 2,3,4,6 --n 200        # pick a guidance scale (accuracy, FID)

DDIM with ``--steps`` steps (default 50), ``n`` samples balanced over the 10 digits with seeds
0..n-1; conditioning accuracy by the MNIST classifier, FID against the statistics of the 5,000 MNIST
images that the zoo ships (``zoo/fid-mnist5k.npz``, made by ``zoo/fid_reference.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from dipgo.evaluate.evaluation import Judge  # noqa: E402
from dipgo.fileio import atomic_path  # noqa: E402
from dipgo.models.calibration import Calibration  # noqa: E402
from dipgo.models.images import make_grid, save_image  # noqa: E402
from dipgo.models.pipelines import default_calibration, generate  # noqa: E402
from dipgo.zoo import load, zoo_names  # noqa: E402


def measure(pipe, calibration: Calibration, judge: Judge, n: int, guidance: float, steps: int,
            seed: int = 0) -> tuple[dict, torch.Tensor]:
    conditions = calibration.cycle(n)  # condition index == digit for the zoo models
    t0 = time.time()
    images = generate(pipe, calibration, conditions, seed=seed, num_inference_steps=steps, guidance_scale=guidance,
                      batch_size=50, progress=True, desc=f"sampling g={guidance}")
    seconds = time.time() - t0
    return {
        "n": n, "seed": seed, "steps": steps, "scheduler": type(pipe.scheduler).__name__,
        "guidance_scale": guidance, "cond_acc": judge.accuracy(images, conditions),
        "fid": judge.fid(images, progress=True), "sampling_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }, images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=zoo_names())
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--sweep", default=None, help="comma-separated guidance scales to compare")
    args = p.parse_args()
    pipe, source = load(args.model)
    folder = source.folder
    if source.fid_reference is None or not source.fid_reference.is_file():
        raise SystemExit(f"{args.model}: FID reference statistics {source.fid_reference} are missing; "
                         "make them with `python zoo/fid_reference.py` (~12 min on 2 cores)")
    judge = Judge.from_source(source)  # FID against the shipped statistics, the MNIST classifier
    calibration = default_calibration(pipe, defaults=source.defaults)
    if args.sweep:
        rows = [measure(pipe, calibration, judge, args.n, float(g), args.steps)[0] for g in args.sweep.split(",")]
        for r in rows:
            print(json.dumps(r))
        (folder / "guidance_sweep.json").write_text(json.dumps(rows, indent=2))
        return
    guidance = args.guidance if args.guidance is not None else source.guidance_scale
    result, images = measure(pipe, calibration, judge, args.n, guidance, args.steps)
    print(json.dumps(result, indent=2))
    real_fid = None
    if args.n == 1000:
        from dipgo.zoo.mnist import load_mnist

        real = (load_mnist()[0][::5] + 1) / 2
        real_fid = round(judge.fid(real), 2)
        result["fid_real_1000_vs_5000"] = real_fid
    with atomic_path(folder / "quality.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    save_image(make_grid(images[:100], nrow=10), folder / "samples.png")
    print(f"wrote {folder / 'quality.json'} and samples.png")


if __name__ == "__main__":
    main()
