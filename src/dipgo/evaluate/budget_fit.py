"""Fit diffusers' caches to a MACs budget for the bench: the setting whose measured MACs come closest.

TaylorSeer is static (its MACs depend only on its interval and warm-up), so each setting is measured once on
one image and the closest is taken. MagCache and SeaCache decide while sampling, so their threshold is
bisected on a calibration batch of other seeds, as the first-block cache's is. A family that does not apply to
a model gives the reason instead of a method.
"""

from __future__ import annotations

import math

from .applied import Applied
from .diffusers_caches import MagCache, SeaCache, TaylorSeer, applies, mag_ratios
from .evaluation import Evaluator

CACHE_FAMILIES = ("TaylorSeer", "TaylorSeer order 2", "MagCache", "SeaCache")
CALIB_SEED = 10_000


def _speedup(ev: Evaluator, applied: Applied, steps: int, n: int) -> float:
    return ev.full_macs(steps) / ev.run(applied, progress=False, n=n, seed=CALIB_SEED).macs


def _taylorseer(ev: Evaluator, pipe, steps: int, budget: float, order: int, memo: dict):
    """The (warm-up, interval) setting closest to ``budget``: warm-up 3 first (TaylorSeer's default), 1 where
    3 full steps alone would cost more than the budget allows."""
    best = None
    for warmup in (3, 1):
        for interval in range(2, steps + 1):
            key = ("taylorseer", order, warmup, interval, steps)
            method = TaylorSeer(interval, order, warmup)
            if key not in memo:
                memo[key] = _speedup(ev, method.bind(pipe, steps, ev.guidance), steps, 1)
            if best is None or abs(math.log(memo[key] / budget)) < abs(math.log(best[1] / budget)) - 1e-9:
                best = (method, memo[key])
    return best[0]


def _bisect(ev: Evaluator, steps: int, budget: float, bind, calib: int = 4, iters: int = 7) -> Applied:
    """Bisect a threshold (log scale) so that a calibration batch lands at ``budget``; ``bind(threshold)``
    gives the bound method."""
    lo, hi, best = -3.0, 1.0, None
    for _ in range(iters):
        mid = (lo + hi) / 2
        applied = bind(round(10 ** mid, 5))
        s = _speedup(ev, applied, steps, calib)
        if best is None or abs(math.log(s / budget)) < abs(math.log(best[1] / budget)):
            best = (applied, s)
        lo, hi = (mid, hi) if s < budget else (lo, mid)
    return best[0]


def fit_cache(family: str, ev: Evaluator, pipe, steps: int, budget: float, memo: dict) -> tuple[Applied | None, str]:
    """``(applied, "")`` for the setting of ``family`` closest to ``budget``, or ``(None, reason)``."""
    skips = max(3, math.ceil(budget))  # reuses in a row: enough to reach the budget at all
    if family.startswith("TaylorSeer"):
        probe = TaylorSeer(2, 2 if family.endswith("2") else 1)
    elif family == "MagCache":
        probe = MagCache(0.1, max_skip=skips)
    else:
        probe = SeaCache(0.1, max_skip=skips)
    ok, reason = applies(probe, pipe)
    if not ok:
        return None, reason
    if family.startswith("TaylorSeer"):
        method = _taylorseer(ev, pipe, steps, budget, probe.order, memo)
        return method.bind(pipe, steps, ev.guidance), ""
    if family == "MagCache":
        key = ("magratios", steps)
        if key not in memo:
            memo[key] = mag_ratios(pipe, steps, ev.guidance, probe.calib)
        return _bisect(ev, steps, budget, lambda t: MagCache(t, max_skip=skips).bind(
            pipe, steps, ev.guidance, ratios=memo[key])), ""
    return _bisect(ev, steps, budget, lambda t: SeaCache(t, max_skip=skips).bind(pipe, steps, ev.guidance)), ""
