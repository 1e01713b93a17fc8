"""Half precision: a pipeline converted with ``pipe.to(torch.bfloat16)`` (or float16) is searched and runs its
schedule in its own dtype. The search's gated mix and the schedule's caches stay in the activations' dtype,
the images stay close to the half-precision full model's, and apply + remove gives its stock images bitwise.

Tolerances: bfloat16 keeps 8 significant bits (relative rounding 2^-9), so a tiny model's images in [0, 1]
move by ~2e-3 from float32's, a PSNR of ~52-54 dB measured; float16 keeps 11 bits, ~71 dB."""

import math
from pathlib import Path

import pytest
import torch
from tiny_schedules import GUIDANCE, Tiny

import dipgo
from dipgo.cache.hooks import attachment_of
from dipgo.cache.search import LOSSES, Search, SearchConfig, consistency
from dipgo.models.adapters import resolve_blocks
from dipgo.models.pipelines import denoiser_of
from dipgo.models.similarity import psnr

SCHEDULE = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "prune-mnist-dit-r0.6.schedule.json"


def _tensors(value):
    """The tensors in a block output or a cache entry (a history of (call, value) pairs, values nested)."""
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


def test_bf16_search_keeps_block_outputs_bf16():
    tiny = Tiny.build("sd", torch.bfloat16)
    den = denoiser_of(tiny.pipe)
    seen: list[torch.dtype] = []
    handles = [m.register_forward_hook(lambda m, args, out: seen.extend(t.dtype for t in _tensors(out)))
               for m in resolve_blocks(den, tiny.graph.names).values()]
    try:
        cfg = SearchConfig(ratio=0.5, num_inference_steps=4, guidance_scale=GUIDANCE, iterations=3, batch=1)
        result = Search(tiny.pipe, cfg, calibration=tiny.calibration, call_kwargs=tiny.extra).run(progress=False)
    finally:
        for h in handles:
            h.remove()
    # what every block returned inside the search's runs, the gated mix of fresh and cached included
    assert seen and set(seen) == {torch.bfloat16}
    assert [h["iteration"] for h in result.history] == [0, 1, 2]
    assert all(math.isfinite(h["consistency"]) and math.isfinite(h["psnr"]) for h in result.history)
    assert torch.isfinite(result.scores).all()


@pytest.mark.parametrize("kind", LOSSES)
def test_search_loss_is_float32_for_half_images(kind):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 16, generator=g)
    b = (a + 0.02 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    half = consistency(a.bfloat16(), b.bfloat16(), kind)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, consistency(a.bfloat16().float(), b.bfloat16().float(), kind), rtol=0, atol=0)


@pytest.mark.parametrize("family, dtype", [("sd", torch.bfloat16), ("dit", torch.bfloat16), ("sd", torch.float16)])
def test_half_schedule_runs_in_its_dtype(family, dtype):
    ref = Tiny.build(family)  # float32
    tiny = Tiny.build(family, dtype)
    schedule = ref.schedule(4)  # made on the float32 model: the architecture hash ignores the dtype
    den = denoiser_of(tiny.pipe)
    stock = tiny.images(4)
    cached: list[torch.dtype] = []

    def look(module, args, out):
        state = attachment_of(den).state
        cached.extend(t.dtype for t in _tensors([*state.caches.values(), *state.last_output.values()]))

    handle = den.register_forward_hook(look)
    dipgo.apply(tiny.pipe, schedule)
    try:
        fast = tiny.images(4)
        reused = attachment_of(den).state.reused
    finally:
        dipgo.remove(tiny.pipe)
        handle.remove()
    assert reused > 0 and cached and set(cached) == {dtype}
    assert torch.equal(tiny.images(4), stock)  # apply + remove: bitwise the stock half-precision images
    assert torch.isfinite(fast).all()
    assert psnr(fast, stock).min() > 40  # the schedule's own drift: measured 46-51 dB, as in float32
    dipgo.apply(ref.pipe, schedule)
    try:
        fast32 = ref.images(4)
    finally:
        dipgo.remove(ref.pipe)
    assert psnr(fast, fast32).min() > 45  # half precision moves the schedule's images by its rounding only


def test_cli_samples_a_schedule_in_bf16(tmp_path, monkeypatch):
    """``dipgo sample --dtype bf16`` runs an embedded zoo model's committed (float32-searched) schedule in bf16."""
    import dipgo.models.pipelines as pipelines
    from dipgo.cli import main

    real, dtypes = pipelines.generate, []

    def spy(pipe, *args, **kwargs):
        dtypes.append(next(denoiser_of(pipe).parameters()).dtype)
        return real(pipe, *args, **kwargs)

    monkeypatch.setattr(pipelines, "generate", spy)
    out = tmp_path / "grid.png"
    assert main(["sample", "mnist-dit", "--dtype", "bf16", "--schedule", str(SCHEDULE), "--n", "2",
                 "--out", str(out)]) == 0
    assert out.is_file() and dtypes == [torch.bfloat16]
