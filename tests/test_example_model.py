"""Checks for the plain-PyTorch example model in examples/research_unet.py (loaded by file path)."""

from __future__ import annotations

from collections import Counter
from types import ModuleType

import pytest
import torch
from helpers import research_example

STAGES = ("down.0", "down.1", "mid", "up.0", "up.1")
SHAPE = (1, 16, 16)


@pytest.fixture(scope="module")
def ex() -> ModuleType:
    return research_example()


@pytest.fixture()
def model(ex: ModuleType) -> torch.nn.Module:
    torch.manual_seed(0)
    net = ex.TinyUNet(in_channels=1, image_size=16, base_channels=8, channel_mult=(1, 2), norm_groups=4).eval()
    assert sum(p.numel() for p in net.parameters()) < 100_000
    return net


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_output_shape_matches_input(model: torch.nn.Module) -> None:
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 500, 999]))
    assert out.shape == x.shape


def test_ddim_calls_model_once_per_step(ex: ModuleType, model: torch.nn.Module) -> None:
    calls = []
    handle = model.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    try:
        with torch.no_grad():
            imgs = ex.ddim_sample(model, _gens(0, 1), steps=4, shape=SHAPE)
    finally:
        handle.remove()
    assert len(calls) == 4
    assert imgs.shape == (2, *SHAPE)
    assert imgs.min() >= 0 and imgs.max() <= 1


def test_ddim_is_seeded_and_batch_independent(ex: ModuleType, model: torch.nn.Module) -> None:
    with torch.no_grad():
        a = ex.ddim_sample(model, _gens(7, 8), steps=4, shape=SHAPE)
        b = ex.ddim_sample(model, _gens(7, 8), steps=4, shape=SHAPE)
        alone = ex.ddim_sample(model, _gens(7), steps=4, shape=SHAPE)
    assert torch.equal(a, b)
    assert torch.allclose(a[0:1], alone, atol=1e-5)
    assert not torch.allclose(a[0], a[1])  # different seeds -> different images


def test_each_stage_called_once_per_forward(model: torch.nn.Module) -> None:
    modules = dict(model.named_modules())
    assert set(STAGES) <= set(modules)
    counts: Counter[str] = Counter()
    shapes: dict[str, torch.Size] = {}

    def hook(name: str):
        def fn(mod, inp, out):
            counts[name] += 1
            assert isinstance(out, torch.Tensor)
            shapes[name] = out.shape

        return fn

    handles = [modules[name].register_forward_hook(hook(name)) for name in STAGES]
    try:
        with torch.no_grad():
            model(torch.randn(2, *SHAPE), torch.tensor([10, 900]))
    finally:
        for h in handles:
            h.remove()
    assert counts == Counter(dict.fromkeys(STAGES, 1))
    assert shapes["up.1"][-2:] == SHAPE[-2:]


def test_gradients_flow_through_ddim(ex: ModuleType, model: torch.nn.Module) -> None:
    with torch.enable_grad():
        imgs = ex.ddim_sample(model, _gens(3), steps=4, shape=SHAPE)
        assert imgs.requires_grad
        imgs.mean().backward()
    grad = model.conv_out.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
