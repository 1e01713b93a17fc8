"""One search for every budget (SearchConfig.ratios): each iteration cuts the scores at a budget drawn
from the range, so one result serves every ratio in it."""

from __future__ import annotations

import pytest
import torch
from families import tiny_dit

import dipgo
from dipgo.cache.postprocess import pruned_ratio, threshold_for_ratio
from dipgo.cache.search import Search, SearchConfig, nested_uniform_prior
from dipgo.errors import DipgoError


def test_prior_cuts_are_evenly_spread_whole_calls():
    prior = nested_uniform_prior(20, 3)
    assert prior[0].eq(1).all() and (prior[:, 0] == prior[:, 2]).all()  # whole calls, call 0 first
    assert len(set(prior[:, 0].tolist())) == 20  # a strict ranking: every cut is well defined
    for k in (2, 5, 10):
        kept = sorted(torch.topk(prior[:, 0], k).indices.tolist())
        gaps = [b - a for a, b in zip(kept, kept[1:], strict=False)]
        assert max(gaps) - min(gaps) <= max(2, 20 // k)  # spread over the run, like k fewer steps


def test_range_search_draws_budgets_and_serves_each():
    pipe = tiny_dit()
    cfg = SearchConfig(ratios=(0.3, 0.6), num_inference_steps=6, iterations=4, batch=1, ramp=0.0)
    search = Search(pipe, cfg)
    result = search.run(progress=False)
    targets = [h["target_ratio"] for h in result.history]
    assert all(0.3 <= t <= 0.6 for t in targets) and len(set(targets)) > 1
    assert not any(h["sparsity_on"] for h in result.history)  # the cut enforces the budget
    for r in (0.3, 0.6):
        mask, got = threshold_for_ratio(result.scores, r, result.graph, result.profile)
        assert got == pytest.approx(pruned_ratio(mask, result.profile)) and abs(got - r) < 0.2


def test_prune_with_several_ratios_runs_one_range_search():
    schedules = dipgo.prune(tiny_dit(), ratio=[0.3, 0.5], num_inference_steps=6, iterations=2, batch=1,
                            evaluations=8, held_out=1, references=0,
                            progress=False)
    assert len(schedules) == 2 and schedules[0].macs >= schedules[1].macs
    assert schedules[0].meta["search"]["target_ratio"] == 0.5


def test_bad_range_is_refused():
    with pytest.raises(DipgoError, match="lowest, highest"):
        SearchConfig(ratios=(0.7, 0.3))
    with pytest.raises(DipgoError, match="lowest, highest"):
        SearchConfig(ratios=(0.0, 0.5))
    assert SearchConfig(ratios=(0.3, 0.6)).lr == 0.02 and SearchConfig().lr == 0.1


@pytest.mark.parametrize("slack, pushed", [(0.0, True), (0.5, False)])
def test_the_sparsity_term_ignores_a_start_within_the_slack(slack, pushed):
    """6 calls at ratio 0.5: the evenly spread start computes 3 calls, and with the ungated layers of the
    other 3 keeps 0.56 of the MACs, above the target (0.5) by less than half a call (1/12). Without slack the
    first iteration pushes every gate; with half a call of slack it does not, and the final cut brings the
    schedule to the budget instead."""
    cfg = SearchConfig(ratio=0.5, num_inference_steps=6, iterations=1, batch=1, ramp=0.0, init="uniform",
                       slack_calls=slack)
    result = Search(tiny_dit(), cfg).run(progress=False)
    assert 0.5 < result.history[0]["kept_share"] < 0.5 + 1 / 12
    assert result.history[0]["sparsity_on"] is pushed


def test_slack_out_of_range_is_refused():
    with pytest.raises(DipgoError, match="slack_calls"):
        SearchConfig(slack_calls=-1)
