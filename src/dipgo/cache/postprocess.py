"""Scores -> a binary SubNet at a requested MACs ratio (DiP-GO's post-processing).

Bisection on a score threshold: gates scoring below it are pruned, the dependency cascade is
applied, call 0 stays full, and the pruned MACs ratio is computed; the threshold moves until the
ratio is within ``tol`` (0.0125, as the paper) of the request. One search's scores give a schedule
at any ratio, but they serve ratios near the search's own target best (scores saturate near 0/1).
"""

from __future__ import annotations

import torch

from ..errors import DipgoError
from ..models.adapters import BlockGraph, effective_keep
from ..models.costs import CostProfile
from .schedule import Schedule


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


def schedule_from_mask(mask: torch.Tensor, graph: BlockGraph, profile: CostProfile, *, model_class: str,
                       config_hash: str, scheduler: str, num_inference_steps: int, cfg: int = 1,
                       requested_ratio: float | None = None, meta: dict | None = None,
                       forecast_order: int = 0) -> Schedule:
    """Build a :class:`Schedule` (with its MACs accounting) from a 0/1 (calls, blocks) mask."""
    steps = [[b for j, b in enumerate(graph.names) if mask[i, j] > 0.5] for i in range(mask.shape[0])]
    # A call that reuses every block is skipped whole only without a forecast (see hooks.static_schedule).
    skip = graph.output_block is not None and forecast_order == 0
    macs = int(profile.generation_macs(mask.float(), cfg, skip_empty_calls=skip))
    full = int(profile.generation_macs(torch.ones_like(mask, dtype=torch.float32), cfg))
    return Schedule(
        model_class=model_class, config_hash=config_hash, blocks=list(graph.names),
        num_inference_steps=num_inference_steps, scheduler=scheduler, steps=steps,
        cache_modes=dict(graph.modes), output_block=graph.output_block, requested_ratio=requested_ratio,
        achieved_ratio=round(1 - macs / full, 6),
        macs_full=full, macs=macs, meta=dict(meta or {}, cost_profile=profile.to_dict()),
        forecast_order=forecast_order,
    )


def with_forecast(schedule: Schedule, order: int) -> Schedule:
    """``schedule`` with reused values forecast at ``order``, its MACs accounted again (a forecast runs the
    work outside the blocks in calls that reuse every block)."""
    from dataclasses import replace

    if order == schedule.forecast_order:
        return schedule
    new = replace(schedule, forecast_order=order)
    profile = schedule.meta.get("cost_profile")
    if profile and schedule.macs_full and schedule.output_block is not None:
        prof = CostProfile(**profile)
        cfg = max(1, round(schedule.macs_full / (schedule.num_calls * prof.call_macs)))
        new.macs = int(prof.generation_macs(schedule.mask(), cfg, skip_empty_calls=order == 0))
        new.achieved_ratio = round(1 - new.macs / schedule.macs_full, 6)
    return new


def schedule_at_ratio(result, ratio: float, tol: float = 0.0125) -> Schedule:
    """Turn a search result's scores into a schedule at ``ratio`` (bisection on the threshold)."""
    mask, _ = threshold_for_ratio(result.scores, ratio, result.graph, result.profile, tol)
    c, m = result.config, result.meta
    meta = {"search": {"iterations": c.iterations, "seconds": round(result.seconds, 1), "target_ratio": c.ratio,
                       "loss": c.loss, "init": c.init, "batch": c.batch},
            "guidance_scale": c.guidance_scale, "calibration": m.get("calibration")}
    return schedule_from_mask(mask, result.graph, result.profile, model_class=m["model_class"],
                              config_hash=m["config_hash"], scheduler=m["scheduler"],
                              num_inference_steps=c.num_inference_steps, cfg=m.get("cfg", 1), requested_ratio=ratio,
                              meta=meta, forecast_order=getattr(c, "forecast_order", 0))
