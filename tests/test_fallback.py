"""The uniform fallback: a searched schedule is kept only if it matches the full model at least as well
as the uniform schedule of no more MACs, on held-out generations."""

from __future__ import annotations

import functools

import torch
from families import tiny_dit

from dipgo.cache.fallback import schedule_with_fallback, uniform_schedule
from dipgo.cache.search import Search, SearchConfig
from dipgo.models.pipelines import default_calibration


@functools.cache
def _result():
    pipe = tiny_dit()
    return pipe, Search(pipe, SearchConfig(ratio=0.5, num_inference_steps=6, iterations=2, batch=1)).run(
        progress=False)


def test_uniform_schedule_is_whole_calls_within_the_budget():
    _, result = _result()
    s = uniform_schedule(result, 0.5)
    mask = s.mask()
    assert ((mask.sum(1) == 0) | (mask.sum(1) == mask.shape[1])).all()  # whole calls computed or reused
    assert abs(s.achieved_ratio - 0.5) < 0.2
    cheap = uniform_schedule(result, 0.5, max_macs=s.macs - 1)
    assert cheap is None or cheap.macs < s.macs
    assert uniform_schedule(result, 0.5, max_macs=0) is None


def test_fallback_keeps_the_better_of_the_two():
    pipe, result = _result()
    choice = schedule_with_fallback(pipe, result, 0.5, default_calibration(pipe), n=2)
    assert set(choice.psnr) <= {"search", "uniform"} and "search" in choice.psnr
    assert choice.psnr[choice.picked] == max(choice.psnr.values())
    assert choice.schedule.meta["fallback"]["picked"] == choice.picked
    assert torch.is_tensor(choice.schedule.mask())
