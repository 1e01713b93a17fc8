"""Sampling helpers that work across pipeline families: seeded generation, call capture, image grids.

Every image gets its own ``torch.Generator`` seeded ``seed + index``, so an image depends only on
its seed and its condition, never on the batch it was generated in: the full and the accelerated
model can then be compared image by image.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .data import prompt_for
from .errors import DipgoError
from .fileio import atomic_path
from .zoo import denoiser_of


def conditioning_of(pipe) -> str:
    """``"prompt"`` for text-to-image pipelines, ``"class"`` for class-conditional ones."""
    params = inspect.signature(pipe.__call__).parameters
    if "prompt" in params:
        return "prompt"
    if "class_labels" in params:
        return "class"
    raise TypeError(f"{type(pipe).__name__} takes neither 'prompt' nor 'class_labels'")


def condition_kwargs(pipe, labels: Sequence[int], num_classes: int = 10) -> dict:
    """Pipeline arguments that ask for the given digits (or class ids)."""
    bad = [y for y in labels if not 0 <= int(y) < num_classes]
    if bad:
        raise DipgoError(f"label(s) {bad} out of range: this model was trained on classes 0..{num_classes - 1}")
    if conditioning_of(pipe) == "prompt":
        return {"prompt": [prompt_for(int(y)) for y in labels]}
    return {"class_labels": [int(y) for y in labels]}


def balanced_labels(n: int, num_classes: int = 10) -> list[int]:
    """0, 1, ..., 9, 0, 1, ...: every class equally often (to within one) for any n."""
    if n < 1:
        raise ValueError(f"number of images must be >= 1, got {n}")
    return [i % num_classes for i in range(n)]


@torch.no_grad()
def generate(pipe, labels: Sequence[int], seed: int = 0, num_inference_steps: int = 50,
             guidance_scale: float = 4.0, batch_size: int = 16, progress: bool = False,
             desc: str = "sampling", **call_kwargs) -> torch.Tensor:
    """Generate one image per label; returns float images (N, C, H, W) in [0, 1]."""
    out = []
    order = range(0, len(labels), batch_size)
    for start in tqdm(order, desc=desc, disable=not progress, dynamic_ncols=True):
        chunk = list(labels[start:start + batch_size])
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        result = pipe(**condition_kwargs(pipe, chunk), generator=gens, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, output_type="pt", **call_kwargs)
        out.append(result.images.float().cpu())
    return torch.cat(out)


class _Captured(Exception):
    pass


def capture_denoiser_call(pipe) -> tuple[tuple, dict]:
    """The exact arguments of one denoiser call for a single image without CFG (batch 1).

    Runs the pipeline until its first denoiser call and stops it there, so the inputs have the
    pipeline's real shapes (latent size, text length, added conditions) without guessing them.
    """
    denoiser = denoiser_of(pipe)
    box: dict = {}

    def hook(module, args, kwargs):
        box["args"], box["kwargs"] = args, kwargs
        raise _Captured

    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe(**condition_kwargs(pipe, [0]), num_inference_steps=2, guidance_scale=1.0, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    except _Captured:
        pass
    finally:
        handle.remove()
    if "args" not in box:
        raise RuntimeError(f"{type(pipe).__name__} finished without calling its denoiser")
    return box["args"], box["kwargs"]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, C) uint8, rounded as a saved PNG would be."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int = 10, pad: int = 2, pad_value: float = 1.0) -> Image.Image:
    """Tile (N, C, H, W) images in [0, 1] into one PIL image, ``nrow`` per row."""
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
    caption = 14
    width = max(g.width for _, g in grids)
    canvas = Image.new("L", (width, sum(g.height + caption for _, g in grids)), 255)
    draw, y = ImageDraw.Draw(canvas), 0
    for label, g in grids:
        draw.text((2, y + 1), label, fill=0)
        canvas.paste(g.convert("L"), (0, y + caption))
        y += g.height + caption
    return canvas


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Save atomically (temp file then rename) so an interrupted run never leaves half a PNG."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=path.suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG")
    return path
