"""The bench's fitting of diffusers' caches to a MACs budget, and its dipgo families (with and without
forecasting), on the zoo models at a few steps."""

from __future__ import annotations

import math

import pytest
from helpers import digits

from dipgo.evaluate.bench_report import markdown
from dipgo.evaluate.budget_fit import fit_cache
from dipgo.evaluate.evaluation import Evaluator
from dipgo.models.pipelines import set_scheduler


def test_taylorseer_lands_on_the_measured_setting_closest_to_the_budget(dit_pipe):
    set_scheduler(dit_pipe, "ddim")
    ev = Evaluator(dit_pipe, n=2, guidance_scale=2.0, batch=1, calibration=digits(dit_pipe))
    memo: dict = {}
    try:
        applied, reason = fit_cache("TaylorSeer", ev, dit_pipe, 8, 2.5, memo)
        assert reason == "" and applied is not None
        speedups = {k[2:4]: v for k, v in memo.items() if k[0] == "taylorseer"}
        assert len(speedups) == 2 * 7  # warm-up 3 and 1, intervals 2..8, each measured once
        best = min(speedups.values(), key=lambda s: abs(math.log(s / 2.5)))
        chosen = ev.full_macs(8) / ev.run(applied, progress=False, n=1, seed=10_000).macs
        assert chosen == pytest.approx(best, rel=1e-6)
        again, _ = fit_cache("TaylorSeer", ev, dit_pipe, 8, 2.5, memo)  # from the memo: nothing re-measured
        assert again.label == applied.label and len(memo) == 14
    finally:
        ev.close()


def test_block_stack_caches_say_why_they_do_not_apply_to_a_unet(sd_pipe):
    set_scheduler(sd_pipe, "ddim")
    ev = Evaluator(sd_pipe, n=2, guidance_scale=4.0, batch=1, calibration=digits(sd_pipe))
    try:
        for family in ("MagCache", "SeaCache"):
            applied, reason = fit_cache(family, ev, sd_pipe, 6, 2.0, {})
            assert applied is None and family in reason and "UNet2DConditionModel" in reason
    finally:
        ev.close()


def test_the_report_names_what_was_not_measured_and_why():
    report = {"machine": {"cpu": "c", "cores": 2, "threads": 2, "torch": "t", "date": "d"},
              "config": {"tag": "bench", "n": 4, "seed": 0, "batch": 4, "scheduler": "ddim"}, "seconds": 60.0,
              "records": [], "not_applicable": {"mnist-sd": {"MagCache": "needs transformer blocks"}}}
    assert "Not measured on mnist-sd: MagCache (needs transformer blocks)." in markdown(report)


def test_a_bisected_cache_is_the_bound_setting_closest_to_the_budget(dit_pipe, monkeypatch):
    """The threshold bisection returns the very method it measured closest to the budget, ready to run again."""
    from dipgo.evaluate import budget_fit

    set_scheduler(dit_pipe, "ddim")
    ev = Evaluator(dit_pipe, n=2, guidance_scale=2.0, batch=1, calibration=digits(dit_pipe))
    seen = []
    real = budget_fit._speedup
    monkeypatch.setattr(budget_fit, "_speedup", lambda *a: seen.append((a[1], real(*a))) or seen[-1][1])
    try:
        applied, reason = fit_cache("SeaCache", ev, dit_pipe, 6, 2.0, {})
        assert reason == "" and len(seen) == 7
        best = min(seen, key=lambda x: abs(math.log(x[1] / 2.0)))
        assert applied is best[0]
        assert real(ev, applied, 6, 4) == pytest.approx(best[1], rel=1e-6)
    finally:
        ev.close()
