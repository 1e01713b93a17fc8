"""Step-count transfer: a schedule for T steps run at T' steps by mapping its gates over normalised time,
only when asked (``apply(..., num_inference_steps=T')``); the ScheduleError stays the default."""

from __future__ import annotations

import functools

import pytest
import torch
from families import tiny_dit, tiny_sd
from helpers import make_schedule

import dipgo
from dipgo.cache.schedule import ScheduleError
from dipgo.models.adapters import block_graph, resolve_blocks
from dipgo.models.costs import ExecutionProbe, profile_denoiser
from dipgo.models.pipelines import capture_denoiser_call, num_calls, set_scheduler


@functools.cache
def _dit():
    return tiny_dit()


def _schedule(pipe, steps: int, mask_fn, scheduler=None):
    den = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    g = block_graph(den)
    prof = profile_denoiser(den, resolve_blocks(den, g.names), *capture_denoiser_call(pipe))
    calls = num_calls(pipe, steps)
    mask = torch.tensor([[mask_fn(i, j, calls) for j in range(len(g.names))] for i in range(calls)], dtype=torch.float)
    return make_schedule(den, scheduler or type(pipe.scheduler).__name__, steps, g, prof, mask), g, prof


def test_same_count_is_identity_and_pattern_scales():
    pipe = _dit()
    s, _, _ = _schedule(pipe, 10, lambda i, j, n: float(i == 0 or i % 2 == 0))  # compute on even calls
    assert s.transferred(10, 10) is s
    up = s.transferred(20, 20)
    assert up.num_inference_steps == 20 and up.num_calls == 20
    # each source call spans two target calls: even source calls -> target calls 0,1, 4,5, 8,9, ...
    assert [bool(step) for step in up.steps[:8]] == [True, True, False, False, True, True, False, False]
    assert up.achieved_ratio == pytest.approx(s.achieved_ratio, abs=0.02)
    assert up.meta["transferred_from"]["num_inference_steps"] == 10
    down = s.transferred(5, 5)
    assert down.steps[0] == s.steps[0]  # the first call always computes everything
    assert abs(down.achieved_ratio - s.achieved_ratio) < 0.25


def test_block_pattern_is_kept_per_block():
    pipe = _dit()
    s, g, _ = _schedule(pipe, 8, lambda i, j, n: float(i == 0 or j == 0))  # block 0 always, block 1 only at call 0
    t = s.transferred(16, 16)
    assert all(g.names[0] in step for step in t.steps)
    assert [g.names[1] in step for step in t.steps] == [True, True] + [False] * 14  # source call 0 spans two


def test_apply_transfers_only_when_asked():
    pipe = _dit()
    s, g, prof = _schedule(pipe, 6, lambda i, j, n: float(i == 0 or i % 3 == 0))
    gen = functools.partial(pipe, class_labels=[1], generator=torch.Generator().manual_seed(0), output_type="np")
    dipgo.apply(pipe, s)
    try:
        with pytest.raises(ScheduleError, match="num_inference_steps=6"):
            gen(num_inference_steps=9)
    finally:
        dipgo.remove(pipe)
    den = pipe.transformer
    call = capture_denoiser_call(pipe)
    applied = dipgo.apply(pipe, s, num_inference_steps=9)
    probe = ExecutionProbe(den, resolve_blocks(den, g.names), *call)
    try:
        gen(num_inference_steps=9)
        assert applied.num_inference_steps == 9
        torch.testing.assert_close(probe.mask(), applied.mask())  # what ran is the mapped schedule
    finally:
        probe.remove()
        dipgo.remove(pipe)


def test_plms_call_count_is_the_schedulers():
    pipe = tiny_sd()
    set_scheduler(pipe, "pndm")
    s, _, _ = _schedule(pipe, 8, lambda i, j, n: 1.0)
    assert s.num_calls == 9  # PLMS calls the model twice at its second timestep
    applied = dipgo.apply(pipe.unet, s)  # a bare module: no scheduler to ask, the offset is kept
    dipgo.remove(pipe.unet)
    assert applied.num_calls == 9
    t = dipgo.apply(pipe, s, num_inference_steps=12)
    dipgo.remove(pipe)
    assert t.num_calls == num_calls(pipe, 12) == 13


def test_bad_transfer_is_refused():
    s, _, _ = _schedule(_dit(), 4, lambda i, j, n: 1.0)
    with pytest.raises(ScheduleError, match="cannot transfer"):
        s.transferred(0, 0)


def test_sparse_pattern_keeps_its_share_both_ways():
    """A block computed on every third call keeps about a third of the calls at 50 -> 20 and 20 -> 50
    (a majority vote per target call would drop it entirely when going down)."""
    pipe = _dit()
    for src, dst in ((50, 20), (20, 50), (50, 25)):
        s, _, _ = _schedule(pipe, src, lambda i, j, n: float(i == 0 or i % 3 == 0))
        t = s.transferred(dst, dst)
        assert abs(t.mask()[:, 0].mean().item() - s.mask()[:, 0].mean().item()) < 0.08, (src, dst)
        assert abs(t.achieved_ratio - s.achieved_ratio) < 0.08
