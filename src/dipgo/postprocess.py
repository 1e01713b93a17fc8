"""Scores -> a binary SubNet at a requested MACs ratio (DiP-GO's post-processing).

Bisection on a score threshold: gates scoring below it are pruned, the dependency cascade is
applied, call 0 stays full, and the pruned MACs ratio is computed; the threshold moves until the
ratio is within ``tol`` (0.0125, as the paper) of the request. One search serves any ratio.
"""

from __future__ import annotations

import torch

from .adapters import BlockGraph, effective_keep
from .costs import CostProfile
from .errors import DipgoError


def mask_at(scores: torch.Tensor, threshold: float, graph: BlockGraph) -> torch.Tensor:
    keep = (scores >= threshold).float()
    keep[0] = 1.0
    return effective_keep(keep, graph)


def pruned_ratio(mask: torch.Tensor, profile: CostProfile) -> float:
    return float(1 - profile.kept_share(mask))


def threshold_for_ratio(scores: torch.Tensor, ratio: float, graph: BlockGraph, profile: CostProfile,
                        tol: float = 0.0125, iters: int = 60) -> tuple[torch.Tensor, float]:
    """Return ``(mask, achieved_ratio)``; bisection, then the closest candidate if none is within tol."""
    if not 0.0 < ratio < 1.0:
        raise DipgoError(f"ratio must be in (0, 1), got {ratio}")
    max_ratio = pruned_ratio(mask_at(scores, float("inf"), graph), profile)
    if ratio > max_ratio + tol:
        raise DipgoError(f"ratio {ratio} is out of reach: with call 0 and the ungated layers always computed, "
                         f"at most {max_ratio:.3f} of the MACs can be pruned")
    lo, hi = 0.0, 1.0 + 1e-6
    best = (mask_at(scores, 0.0, graph), 0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        mask = mask_at(scores, mid, graph)
        r = pruned_ratio(mask, profile)
        if abs(r - ratio) < abs(best[1] - ratio):
            best = (mask, r)
        if abs(r - ratio) <= tol:
            return mask, r
        if r < ratio:
            lo = mid
        else:
            hi = mid
    # Ties among scores can make the ratio jump past the window: fall back to ranking gates one by one.
    order = torch.argsort(scores.flatten())
    for k in range(1, order.numel() + 1):
        keep = torch.ones_like(scores).flatten()
        keep[order[:k]] = 0
        keep = keep.view_as(scores)
        keep[0] = 1
        mask = effective_keep(keep, graph)
        r = pruned_ratio(mask, profile)
        if abs(r - ratio) < abs(best[1] - ratio):
            best = (mask, r)
        if r >= ratio:
            break
    return best
