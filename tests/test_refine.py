"""Refinement by local search on held-out generations: it keeps the budget, never ends below the best
start it measured, and its starts include DeepCache/FORA-style spacing."""

from __future__ import annotations

import functools

import pytest
import torch
from families import tiny_dit, tiny_sd

from dipgo.cache.apply import apply, remove
from dipgo.cache.driver import PipelineSampler
from dipgo.cache.pipeline import PruneConfig, alternatives
from dipgo.cache.postprocess import pruned_ratio
from dipgo.cache.refine import RefineConfig, Scorer, _best_candidate, _measure_starts, interval_mask, refine
from dipgo.cache.search import Search, SearchConfig
from dipgo.errors import DipgoError
from dipgo.models.pipelines import default_calibration, generate


@functools.cache
def _searched(family: str):
    pipe = tiny_dit() if family == "dit" else tiny_sd()
    result = Search(pipe, SearchConfig(ratio=0.5, num_inference_steps=8, iterations=2, batch=1)).run(progress=False)
    return pipe, result


def test_interval_mask_is_deepcache_spacing():
    m = interval_mask(10, 3, 4)
    assert m[:, 0].nonzero().flatten().tolist() == [0, 4, 8]
    assert (m.sum(1) % 3 == 0).all()  # whole calls


def test_interval_mask_warm_up_is_taylorseer_spacing():
    m = interval_mask(12, 2, 4, warmup=3)
    assert m[:, 0].nonzero().flatten().tolist() == [0, 1, 2, 3, 7, 11]


@pytest.mark.parametrize("family", ["dit", "sd"])
def test_refine_keeps_the_budget_and_never_ends_below_its_best_start(family):
    pipe, result = _searched(family)
    cfg = RefineConfig(evaluations=14, n=2, repair_candidates=2)
    out = refine(pipe, result, 0.6, default_calibration(pipe), cfg, progress=False)
    mask = out.schedule.mask()
    assert pruned_ratio(mask, result.profile) >= 0.6 - cfg.tol - 1e-6
    assert out.start in out.starts and "search" in out.starts
    assert any(k.startswith("every ") for k in out.starts)
    assert any(k.startswith("warm-up ") for k in out.starts)  # a short warm-up at 8 steps and 0.6
    assert out.psnr >= max(out.starts.values()) - 1e-9  # the climb only accepts improvements
    assert out.history == sorted(out.history)
    assert out.evaluations <= cfg.evaluations + len(out.starts) + 1  # starts are always measured once
    assert (mask[0] == 1).all()
    # The reported held-out PSNR is what the schedule really gives on those held-out generations.
    cal = default_calibration(pipe)
    kw = dict(seed=1_000_000, num_inference_steps=8, batch_size=2)
    with torch.no_grad():
        full = generate(pipe, cal, cal.cycle(2), **kw)
        apply(pipe, out.schedule)
        try:
            mine = generate(pipe, cal, cal.cycle(2), **kw)
        finally:
            remove(pipe)
    from dipgo.models.similarity import psnr
    assert abs(float(psnr(mine, full, cap=100.0).mean()) - out.psnr) < 1e-3
    assert out.schedule.meta["refine"]["start"] == out.start


def test_refine_config_and_ratio_errors():
    with pytest.raises(DipgoError, match="evaluations"):
        RefineConfig(evaluations=-1)
    with pytest.raises(DipgoError, match="held-out"):
        RefineConfig(n=0)
    with pytest.raises(DipgoError, match="sum to at most 1"):
        RefineConfig(shift_share=0.7, neighbour_share=0.5)
    pipe, result = _searched("dit")
    with pytest.raises(DipgoError, match="ratio must be in"):
        refine(pipe, result, 1.2, default_calibration(pipe), RefineConfig(evaluations=0, n=1), progress=False)


def test_the_searched_start_does_not_change_how_the_simple_starts_are_measured():
    """The simple starts are repaired and measured first, each with its own random draws, so adding the searched
    start leaves their held-out values as they are: the pipeline can only gain from the search."""
    pipe, result = _searched("dit")
    cfg = RefineConfig(evaluations=30, n=2, repair_candidates=2)
    cal = default_calibration(pipe)
    both = refine(pipe, result, 0.6, cal, cfg, progress=False)
    simple = refine(pipe, result, 0.6, cal, cfg, progress=False, simple_only=True)
    assert "search" in both.starts and "search" not in simple.starts
    assert {k: v for k, v in both.starts.items() if not k.startswith("search")} == simple.starts


class _OrderScore:
    """A held-out score on which every computed gate helps reuse (order 0) and hurts a forecast (order 2)."""

    def __init__(self):
        self.order, self.evaluations, self.budget = 0, 0, 200

    @property
    def left(self) -> int:
        return self.budget - self.evaluations

    def __call__(self, mask):
        self.evaluations += 1
        return 10.0 + float(mask.sum()) if self.order == 0 else 100.0 - float(mask.sum())


def test_slack_is_spent_at_the_order_a_candidate_is_measured_at():
    """A gate added because it helps a reused block is not kept for a forecast it makes worse: the forecast
    candidate keeps the ungrown start, and the winner's slack is spent again at its own order."""
    _, result = _searched("dit")
    calls, blocks = result.scores.shape
    start = interval_mask(calls, blocks, 2)
    ratio = pruned_ratio(start, result.profile) - 0.2  # room for several more gates
    cfg = RefineConfig(n=1, repair_candidates=4, orders=(0, 2))
    score = _OrderScore()
    fits = lambda m: pruned_ratio(m, result.profile) >= ratio - cfg.tol  # noqa: E731
    cands = _measure_starts({"every 2": start.clone()}, fits, ratio, score, cfg, result)
    grown, reuse_value = cands["every 2", 0]
    assert grown.sum() > start.sum() and reuse_value == 10.0 + float(grown.sum())
    assert torch.equal(cands["every 2", 2][0], start) and cands["every 2", 2][1] == 100.0 - float(start.sum())
    name, mask, value = _best_candidate(cands, ratio, score, cfg, result)
    assert (name, score.order) == ("every 2", 2) and torch.equal(mask, start)  # no gate helps the forecast


def _sampler(pipe):
    return PipelineSampler(pipe, default_calibration(pipe), 8, None)


class _FineUnitsWin(Scorer):
    """Held-out values on which any mask in the other units beats every mask in the search's own."""

    def __call__(self, mask):
        self.evaluations += 1
        return 10.0 + float(mask.mean()) if self.result is self.primary else 50.0 - float(mask.mean())


def test_a_start_in_the_other_units_can_win_and_the_schedule_is_in_its_units():
    pipe, result = _searched("dit")
    cal = default_calibration(pipe)
    (alt,) = alternatives(_sampler(pipe), result, PruneConfig(ratio=0.5, num_inference_steps=8), None)
    assert alt.config.granularity == "fine" and len(alt.graph.names) > len(result.graph.names)
    assert all(n.rsplit(".", 1)[-1] in ("attn1", "ff") for n in alt.graph.names)
    cfg = RefineConfig(evaluations=40, n=1, repair_candidates=2)
    score = _FineUnitsWin(_sampler(pipe), result, 1, cfg.evaluations, False)
    out = refine(pipe, result, 0.5, cal, cfg, progress=False, scorer=score, alternatives=(alt,))
    assert "(fine units)" in out.start, out.starts
    assert out.schedule.blocks == alt.graph.names  # the schedule speaks the winner's units
    assert pruned_ratio(out.schedule.mask(), alt.profile) >= 0.5 - cfg.tol - 1e-6
    with torch.no_grad():  # and it runs
        apply(pipe, out.schedule)
        try:
            generate(pipe, cal, cal.cycle(1), seed=0, num_inference_steps=8, batch_size=1)
        finally:
            remove(pipe)


def test_a_unet_or_pinned_units_get_no_alternative():
    pipe, result = _searched("sd")
    assert alternatives(_sampler(pipe), result, PruneConfig(ratio=0.5, num_inference_steps=8), None) == ()
    pipe, result = _searched("dit")
    pinned = PruneConfig(ratio=0.5, num_inference_steps=8, search={"granularity": "coarse"})
    assert alternatives(_sampler(pipe), result, pinned, None) == ()
    assert alternatives(_sampler(pipe), result, PruneConfig(ratio=0.5), list(result.graph.names)) == ()
