"""Tiny, randomly initialised, fully offline image-conditioned Stable Diffusion pipelines, like ``families.py``:
image-to-image, inpainting and ControlNet, each built from ``families.tiny_sd``'s components (so the UNet, and a
schedule searched on the text-to-image pipeline, are shared) and a fixed 16x16 input image.

The ControlNet is ``ControlNetModel.from_unet`` of that UNet with a one-step conditioning embedding (16x16
control image -> 8x8 latents) and random residual projections: ``from_unet`` zero-initialises them, and a
ControlNet whose residuals are all zero would leave the UNet's output untouched.
"""

from __future__ import annotations

import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from families import PIXELS, SEED, tiny_sd

__all__ = ["CALL_KWARGS", "control_image", "init_image", "mask_image", "tiny_controlnet", "tiny_controlnet_model",
           "tiny_img2img", "tiny_inpaint"]

CALL_KWARGS = {"height": PIXELS, "width": PIXELS}


def _image(seed: int, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, channels, PIXELS, PIXELS, generator=g)


def init_image() -> torch.Tensor:
    """The image img2img and inpainting start from: (1, 3, 16, 16) in [0, 1]."""
    return _image(SEED + 1)


def mask_image() -> torch.Tensor:
    """Inpainting's mask: (1, 1, 16, 16), 1 (repaint) on the left half, 0 (keep) on the right."""
    mask = torch.zeros(1, 1, PIXELS, PIXELS)
    mask[..., : PIXELS // 2] = 1.0
    return mask


def control_image() -> torch.Tensor:
    """The ControlNet's conditioning image: (1, 3, 16, 16) in [0, 1]."""
    return _image(SEED + 2)


def tiny_img2img(t2i: StableDiffusionPipeline | None = None) -> StableDiffusionImg2ImgPipeline:
    """Image-to-image on the components of ``t2i`` (a fresh ``tiny_sd()`` when not given): the same UNet and
    scheduler objects."""
    pipe = StableDiffusionImg2ImgPipeline(**(t2i or tiny_sd()).components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_inpaint(t2i: StableDiffusionPipeline | None = None) -> StableDiffusionInpaintPipeline:
    """Inpainting with the text-to-image UNet (4 latent channels: diffusers blends the kept region back into
    the latents after each step instead of feeding the mask to the UNet)."""
    pipe = StableDiffusionInpaintPipeline(**(t2i or tiny_sd()).components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_controlnet_model(t2i: StableDiffusionPipeline) -> ControlNetModel:
    """A ControlNet copied from ``t2i``'s UNet, with seeded random (not zero) residual projections."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 3)
        net = ControlNetModel.from_unet(t2i.unet, conditioning_embedding_out_channels=(8, 16))
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            torch.nn.init.normal_(conv.weight, std=0.2)
            torch.nn.init.normal_(conv.bias, std=0.05)
        torch.nn.init.normal_(net.controlnet_cond_embedding.conv_out.weight, std=0.2)
    return net.eval()


def tiny_controlnet(t2i: StableDiffusionPipeline | None = None) -> StableDiffusionControlNetPipeline:
    """SD + ControlNet on the components of ``t2i`` (a fresh ``tiny_sd()`` when not given)."""
    t2i = t2i or tiny_sd()
    pipe = StableDiffusionControlNetPipeline(**t2i.components, controlnet=tiny_controlnet_model(t2i),
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
