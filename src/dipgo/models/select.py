"""Which layers (or blocks) to prune for a target ratio: an exact 0/1 knapsack on additive scores, or greedy.

Layer pruning removes layers and depth pruning merges blocks; both choose them here. With additive
scores (the output loss, see ``dipgo.layers.criteria.additivity``) the best set to remove is the one
with the smallest summed score whose removed cost (parameters, or MACs) reaches the target. Its
complement is a classic 0/1 knapsack: keep the layers of largest summed score within a cost budget
of ``candidate cost - target``. Dynamic programming on costs discretised into ``bins`` units (rounded
up for kept layers, so the removed cost never falls short of the target) solves it exactly up to that
rounding. ``greedy`` takes the layers of smallest score per unit cost until the target is reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import DipgoError
from .checks import check_ratio
from .surgery import Candidate

METHODS = ("knapsack", "greedy", "order")
BY = ("params", "macs", "depth")


@dataclass
class Selection:
    """The chosen layers, what they hold and their summed score."""

    names: list[str]          # layers to remove, in candidate order
    removed: float            # removed share of the whole denoiser's parameters (or MACs)
    score: float              # summed score of the removed layers
    method: str


def max_ratio(cands: list[Candidate], total: int, by: str = "params") -> float:
    return sum(getattr(c, by) for c in cands) / total


def select(cands: list[Candidate], scores: dict[str, float], ratio: float, total: int, by: str = "params",
           method: str = "knapsack", bins: int = 2000, order: list[str] | None = None) -> Selection:
    """Layers to remove so that at least ``ratio`` of the denoiser's ``by`` (params or MACs) goes.

    ``total`` is the whole denoiser's parameters (or MACs per call); ``method="order"`` takes ``order``
    (e.g. the handcrafted one) front to back.
    """
    check_ratio(ratio, f"the removed share of the denoiser's {by}")
    if by not in BY:
        raise DipgoError(f"by must be one of {BY}, got {by!r}")
    if method not in METHODS:
        raise DipgoError(f"unknown selection method {method!r}; choose one of {METHODS}")
    reach = max_ratio(cands, total, by)
    target = ratio * total
    if target > reach * total + 1e-9:
        raise DipgoError(f"ratio {ratio} cannot be reached: the candidate layers hold at most {reach:.3f} of the "
                         f"denoiser's {by}; ask for a ratio <= {math.floor(reach * 1000) / 1000}")
    cost = {c.name: getattr(c, by) for c in cands}
    if method == "order":
        chosen, got = [], 0
        for n in order or []:
            if got >= target:
                break
            chosen.append(n)
            got += cost[n]
    elif method == "greedy":
        ranked = sorted(cands, key=lambda c: (scores[c.name] / max(1, cost[c.name]), c.name))
        chosen, got = [], 0
        for c in ranked:
            if got >= target:
                break
            chosen.append(c.name)
            got += cost[c.name]
    else:
        chosen = _knapsack(cands, scores, cost, target, bins)
    names = [c.name for c in cands if c.name in set(chosen)]
    removed = sum(cost[n] for n in names)
    return Selection(names, removed / total, sum(scores[n] for n in names), method)


def _knapsack(cands: list[Candidate], scores: dict[str, float], cost: dict[str, int], target: float,
              bins: int) -> list[str]:
    """Keep the set of largest summed score within capacity ``sum(cost) - target``; remove the rest."""
    all_cost = sum(cost.values())
    # small integer costs (depth: one unit per block) are exact with unit 1; rounding each cost up to a
    # coarser unit could make the kept set smaller than the budget allows
    exact = all(float(c).is_integer() for c in cost.values()) and all_cost <= bins
    unit = 1.0 if exact else max(1e-12, all_cost / bins)
    capacity = int(math.floor((all_cost - target) / unit + 1e-9))
    weights = [int(math.ceil(cost[c.name] / unit - 1e-9)) for c in cands]
    values = [max(0.0, scores[c.name]) for c in cands]
    best = [0.0] * (capacity + 1)
    take = [[False] * (capacity + 1) for _ in cands]
    for i, (w, v) in enumerate(zip(weights, values, strict=True)):
        for cap in range(capacity, w - 1, -1):
            if best[cap - w] + v > best[cap]:
                best[cap] = best[cap - w] + v
                take[i][cap] = True
    keep, cap = set(), capacity
    for i in range(len(cands) - 1, -1, -1):
        if take[i][cap]:
            keep.add(cands[i].name)
            cap -= weights[i]
    return [c.name for c in cands if c.name not in keep]
