"""Attach a schedule to a pipeline (or a bare denoiser), detach it, mark a generation, and say what it skipped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import DipgoError
from ..models.adapters import resolve_blocks
from ..models.pipelines import denoiser_of
from .compile import refuse_compiled
from .hooks import RunState, apply_schedule, attachment_of
from .runtime import detach
from .schedule import Schedule

__all__ = ["apply", "remove", "is_applied", "summary", "generation"]


def apply(pipe, schedule: Schedule | str | Path, num_inference_steps: int | None = None) -> Schedule:
    """Attach ``schedule`` to the pipeline's denoiser (or to a bare denoiser module); returns the schedule
    in force.

    Refuses a schedule made for another model, block list or scheduler, and (at the start of the
    generation) a different ``num_inference_steps``. ``num_inference_steps=T'`` is the opt-in to run a
    schedule searched for T steps at T' steps: its gates are mapped over normalised time
    (:meth:`Schedule.transferred`). Applying twice raises; ``remove`` first.

    Where a generation starts: on a pipeline, at each ``scheduler.set_timesteps``; on a bare module in a
    custom loop, after the schedule's last call (the next call is call 0 again), whichever way the loop's
    time runs. A loop that stops early or varies its length wraps each generation in :func:`generation`.
    """
    if not isinstance(schedule, Schedule):
        schedule = Schedule.load(schedule)
    refuse_compiled(pipe, "dipgo.apply")
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
    apply_schedule(denoiser, blocks, schedule.cache_modes, schedule, scheduler=scheduler)
    return schedule


def remove(pipe) -> None:
    """Detach dipgo; the pipeline computes every block again."""
    detach(denoiser_of(pipe))


def is_applied(pipe) -> bool:
    return attachment_of(denoiser_of(pipe)) is not None


@contextmanager
def generation(pipe) -> Iterator[RunState]:
    """``with generation(module_or_pipe):`` runs one generation: the call count and the caches start afresh
    on entry, and the next call after the block starts another generation.

    For custom loops that stop early or vary their length, and for a dynamic policy on a bare module, where
    nothing else marks a generation. Inside the block, more calls than a static schedule has raise
    ``ScheduleError`` instead of wrapping to call 0. Yields the shared run state (``computed``, ``reused``).
    """
    att = attachment_of(denoiser_of(pipe))
    if att is None:
        raise DipgoError("dipgo is not applied to this model; call dipgo.apply(pipe, schedule) before "
                         "dipgo.generation(pipe)")
    state = att.state
    if state.in_generation:
        raise DipgoError("dipgo.generation() blocks do not nest; end the running one before starting another")
    state.reset()
    state.in_generation = True
    try:
        yield state
    finally:
        state.in_generation = False
        state.new_generation = True


def summary(pipe) -> str:
    """What the applied schedule skips, and what the last generation actually computed."""
    att = attachment_of(denoiser_of(pipe))
    if att is None or att.schedule is None:
        raise DipgoError("no dipgo schedule is applied to this pipeline; call dipgo.apply(pipe, schedule) first")
    s = att.state
    total = s.computed + s.reused
    tail = (f"\nsince apply: {s.computed} block calls computed, {s.reused} reused from cache"
            f" ({s.reused / total:.1%} reused)" if total else "\nnot run yet")
    return att.schedule.summary() + tail
