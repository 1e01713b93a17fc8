"""Smoke test: every tiny pipeline family in `families.py` builds and samples 2 images in 2 steps."""

import inspect

import pytest
import torch
from families import CALL_KWARGS, CONDITIONING, FAMILIES

PROMPTS = ["a photo of a cat", "Ünïcode ✓ 日本, and a prompt long enough to be truncated at sixteen tokens"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_samples_two_images(family):
    pipe = FAMILIES[family]()
    kwargs = dict(CALL_KWARGS[family])
    kind = CONDITIONING[family]
    if kind == "prompt":
        kwargs["prompt"] = PROMPTS
    elif kind == "class":
        kwargs["class_labels"] = [1, 2]
    else:
        kwargs["batch_size"] = 2
    if "guidance_scale" in inspect.signature(pipe.__call__).parameters:
        kwargs["guidance_scale"] = 2.0  # exercises classifier-free guidance (Flux ignores it: no guidance embeds)
    generators = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    # diffusers 0.42's DDPM/DDIM/DiT pipelines accept "pt" too, so every family returns a tensor
    images = pipe(num_inference_steps=2, generator=generators, output_type="pt", **kwargs).images
    assert isinstance(images, torch.Tensor)
    assert images.shape == (2, 3, 16, 16)
    assert torch.isfinite(images).all()
    assert not torch.equal(images[0], images[1])  # distinct generators give distinct samples
