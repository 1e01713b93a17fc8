"""Image helpers: 8-bit rounding, grids (upscaled so small images can be seen), captions, atomic saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..fileio import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, C) uint8, rounded as a saved PNG would be."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def upscale_factor(size: int, target: int = 96) -> int:
    """An integer factor that brings a small image to about ``target`` pixels (28-px digits: x3)."""
    return max(1, round(target / max(1, size)))


def make_grid(images: torch.Tensor, nrow: int = 10, pad: int = 2, pad_value: float = 1.0,
              scale: int | None = None) -> Image.Image:
    """Tile (N, C, H, W) images in [0, 1] into one PIL image, ``nrow`` per row.

    Small images are enlarged by an integer factor (nearest neighbour, so pixels stay sharp): a grid
    of 32-px images is unreadable at 1x. ``scale=1`` keeps the native size.
    """
    scale = upscale_factor(images.shape[-1]) if scale is None else scale
    if scale > 1:
        images = torch.nn.functional.interpolate(images.float(), scale_factor=scale, mode="nearest")
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    canvas = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = (
            images[i])
    arr = to_uint8(canvas[None])[0]
    return Image.fromarray(arr[..., 0] if c == 1 else arr)


def labelled_rows(rows: list[tuple[str, torch.Tensor]], nrow: int = 10) -> Image.Image:
    """Stack grids vertically, each under a caption: e.g. the full model above, dipgo below."""
    from PIL import ImageDraw

    grids = [(label, make_grid(images, nrow=nrow)) for label, images in rows]
    caption = 16
    width = max(g.width for _, g in grids)
    mode = "RGB" if any(g.mode == "RGB" for _, g in grids) else "L"
    canvas = Image.new(mode, (width, sum(g.height + caption for _, g in grids)), "white")
    draw, y = ImageDraw.Draw(canvas), 0
    for label, g in grids:
        draw.text((2, y + 2), label, fill="black")
        canvas.paste(g.convert(mode), (0, y + caption))
        y += g.height + caption
    return canvas


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Save atomically (temp file then rename) so an interrupted run never leaves half a PNG."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=path.suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG")
    return path
