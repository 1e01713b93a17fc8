"""Attach a schedule to a pipeline (or a bare denoiser), detach it, and say what it skipped."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DipgoError
from ..models.adapters import resolve_blocks
from ..models.pipelines import denoiser_of
from .runtime import attach, detach
from .schedule import Schedule


def apply(pipe, schedule: Schedule | str | Path, num_inference_steps: int | None = None) -> Schedule:
    """Attach ``schedule`` to the pipeline's denoiser (or to a bare denoiser module); returns the schedule
    in force.

    Refuses a schedule made for another model, block list or scheduler, and (at the start of the
    generation) a different ``num_inference_steps``. ``num_inference_steps=T'`` is the opt-in to run a
    schedule searched for T steps at T' steps: its gates are mapped over normalised time
    (:meth:`Schedule.transferred`). Applying twice raises; ``remove`` first.
    """
    if not isinstance(schedule, Schedule):
        schedule = Schedule.load(schedule)
    denoiser = denoiser_of(pipe)
    scheduler = None if isinstance(pipe, torch.nn.Module) else pipe.scheduler
    schedule.check(denoiser, scheduler)
    if num_inference_steps is not None and num_inference_steps != schedule.num_inference_steps:
        if scheduler is None:
            calls = num_inference_steps + schedule.num_calls - schedule.num_inference_steps
        else:
            from ..models.pipelines import num_calls

            calls = num_calls(pipe, num_inference_steps)
        schedule = schedule.transferred(num_inference_steps, calls)
    blocks = resolve_blocks(denoiser, schedule.blocks)
    attach(denoiser, blocks, schedule.cache_modes, schedule, schedule.branches, scheduler=scheduler)
    return schedule


def remove(pipe) -> None:
    """Detach dipgo; the pipeline computes every block again."""
    detach(denoiser_of(pipe))


def is_applied(pipe) -> bool:
    return getattr(denoiser_of(pipe), "_dipgo_attachment", None) is not None


def summary(pipe) -> str:
    """What the applied schedule skips, and what the last generation actually computed."""
    att = getattr(denoiser_of(pipe), "_dipgo_attachment", None)
    if att is None or att.schedule is None:
        raise DipgoError("no dipgo schedule is applied to this pipeline")
    s = att.state
    total = s.computed + s.reused
    tail = (f"\nsince apply: {s.computed} block calls computed, {s.reused} reused from cache"
            f" ({s.reused / total:.1%} reused)" if total else "\nnot run yet")
    return att.schedule.summary() + tail
