"""Image similarity the search optimises and the evaluation reports: PSNR and a differentiable SSIM."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, cap: float = 100.0) -> torch.Tensor:
    """Per-image PSNR in dB (a video's (F, C, H, W) over all its frames). Identical images would give
    infinity; we return ``cap`` (100 dB) instead so means over a set stay finite."""
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

    The window shrinks to the image size for images smaller than 11 pixels. Videos (N, F, C, H, W) get the
    mean SSIM of their frames.
    """
    if a.shape != b.shape or a.dim() not in (4, 5):
        raise ValueError(f"ssim needs two (N, C, H, W) images or (N, F, C, H, W) videos of one shape, got "
                         f"{tuple(a.shape)}, {tuple(b.shape)}")
    if a.dim() == 5:
        frames = ssim(a.flatten(0, 1), b.flatten(0, 1), data_range, window, sigma)
        return frames.view(a.shape[:2]).mean(1)
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


