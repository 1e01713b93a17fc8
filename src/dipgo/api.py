"""The public entry points: ``apply`` / ``remove`` / ``summary`` a schedule, ``prune`` to learn one.

    import dipgo
    schedule = dipgo.prune(pipe, ratio=0.8, num_inference_steps=50)     # or Schedule.load("s.json")
    dipgo.apply(pipe, schedule)            # skipped blocks now do no work at all
    images = pipe(prompt, num_inference_steps=50).images
    print(dipgo.summary(pipe))
    dipgo.remove(pipe)                     # back to the full model
"""

from __future__ import annotations

from pathlib import Path

import torch

from .adapters import BlockGraph, resolve_blocks
from .costs import CostProfile
from .errors import DipgoError
from .postprocess import threshold_for_ratio
from .runtime import attach, detach
from .schedule import Schedule, config_hash
from .zoo import denoiser_of


def _denoiser(target) -> torch.nn.Module:
    return target if isinstance(target, torch.nn.Module) else denoiser_of(target)


def apply(pipe, schedule: Schedule | str | Path) -> Schedule:
    """Attach ``schedule`` to the pipeline's denoiser (or to a bare denoiser module).

    Refuses a schedule made for another model, block list or scheduler, and (at the start of the
    generation) a different ``num_inference_steps``. Applying twice raises; ``remove`` first.
    """
    if not isinstance(schedule, Schedule):
        schedule = Schedule.load(schedule)
    denoiser = _denoiser(pipe)
    scheduler = None if isinstance(pipe, torch.nn.Module) else pipe.scheduler
    schedule.check(denoiser, scheduler)
    blocks = resolve_blocks(denoiser, schedule.blocks)
    attach(denoiser, blocks, schedule.cache_modes, schedule, schedule.branches, scheduler=scheduler)
    return schedule


def remove(pipe) -> None:
    """Detach dipgo; the pipeline computes every block again."""
    detach(_denoiser(pipe))


def is_applied(pipe) -> bool:
    return getattr(_denoiser(pipe), "_dipgo_attachment", None) is not None


def summary(pipe) -> str:
    """What the applied schedule skips, and what the last generation actually computed."""
    att = getattr(_denoiser(pipe), "_dipgo_attachment", None)
    if att is None or att.schedule is None:
        raise DipgoError("no dipgo schedule is applied to this pipeline")
    s = att.state
    total = s.computed + s.reused
    tail = (f"\nsince apply: {s.computed} block calls computed, {s.reused} reused from cache"
            f" ({s.reused / total:.1%} reused)" if total else "\nnot run yet")
    return att.schedule.summary() + tail


def schedule_from_mask(denoiser: torch.nn.Module, scheduler_name: str, num_inference_steps: int,
                       graph: BlockGraph, profile: CostProfile, mask: torch.Tensor, cfg: int = 2,
                       requested_ratio: float | None = None, meta: dict | None = None) -> Schedule:
    """Build a :class:`Schedule` (with its MACs accounting) from a 0/1 (calls, blocks) mask."""
    steps = [[b for j, b in enumerate(graph.names) if mask[i, j] > 0.5] for i in range(mask.shape[0])]
    macs = int(profile.generation_macs(mask.float(), cfg, skip_empty_calls=graph.output_block is not None))
    full = int(profile.generation_macs(torch.ones_like(mask, dtype=torch.float32), cfg))
    return Schedule(
        model_class=type(denoiser).__name__, config_hash=config_hash(denoiser), blocks=list(graph.names),
        num_inference_steps=num_inference_steps, scheduler=scheduler_name, steps=steps,
        cache_modes=dict(graph.modes), output_block=graph.output_block, requested_ratio=requested_ratio,
        achieved_ratio=round(1 - macs / full, 6),
        macs_full=full, macs=macs, meta=dict(meta or {}, cost_profile=profile.to_dict()),
    )


def schedule_at_ratio(result, pipe, ratio: float, tol: float = 0.0125) -> Schedule:
    """Turn a search result's scores into a schedule at ``ratio`` (bisection on the threshold)."""
    mask, achieved = threshold_for_ratio(result.scores, ratio, result.graph, result.profile, tol)
    cfg = 2 if result.config.guidance_scale > 1 else 1
    meta = {"search": {"iterations": result.config.iterations, "seconds": round(result.seconds, 1),
                       "target_ratio": result.config.ratio, "loss": result.config.loss,
                       "init": result.config.init, "batch": result.config.batch},
            "guidance_scale": result.config.guidance_scale}
    return schedule_from_mask(denoiser_of(pipe), type(pipe.scheduler).__name__, result.config.num_inference_steps,
                              result.graph, result.profile, mask, cfg, ratio, meta)


def prune(pipe, ratio: float = 0.8, num_inference_steps: int = 50, checkpoint: str | Path | None = None,
          progress: bool = True, **search_kwargs) -> Schedule:
    """Learn a schedule for ``pipe`` with its current scheduler and return it at ``ratio``."""
    from .search import Search, SearchConfig

    config = SearchConfig(ratio=ratio, num_inference_steps=num_inference_steps, **search_kwargs)
    result = Search(pipe, config, checkpoint_path=checkpoint).run(progress=progress)
    return schedule_at_ratio(result, pipe, ratio)
