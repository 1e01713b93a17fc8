"""Where a generation enters a static schedule: image-to-image and inpainting start part-way.

diffusers' image-to-image and inpainting pipelines call ``scheduler.set_timesteps(T)`` and then run only the
last ``strength * T`` timesteps, ``scheduler.timesteps[t_start * order:]`` (and tell schedulers that take it
through ``scheduler.set_begin_index``). A schedule made for T steps, e.g. searched on the text-to-image pipeline
with the same denoiser, applies by timestep: such a generation's first denoiser call is the schedule's call
``t_start * order`` and follows the schedule's rows from there on (a block with nothing cached yet computes).

The entry is read at a generation's first call: the scheduler's ``begin_index`` where it has one, else the
position of that call's ``timestep`` argument in ``scheduler.timesteps``. A call whose timestep is not in the
list, or a denoiser without a ``timestep`` argument, enters at call 0, as a text-to-image generation does.
PLMS runs one timestep twice; a generation that enters there is placed by its second call's timestep.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import DipgoError
from ..schedule import ScheduleError


def timestep_of(forward, args: tuple, kwargs: dict, signature: inspect.Signature | None = None) -> float | None:
    """The ``timestep`` argument of a denoiser call (its first element for a batch), or ``None``."""
    t = kwargs.get("timestep")
    if t is None:
        try:
            t = (signature or inspect.signature(forward)).bind_partial(*args, **kwargs).arguments.get("timestep")
        except (TypeError, ValueError):
            return None
    if torch.is_tensor(t):
        return float(t.detach().flatten()[0]) if t.numel() else None
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def positions(scheduler, t: float | None) -> list[int]:
    """Where timestep ``t`` stands in ``scheduler.timesteps`` (several places for PLMS's repeated one)."""
    timesteps = getattr(scheduler, "timesteps", None)
    if t is None or timesteps is None:
        return []
    ts = torch.as_tensor(timesteps).detach().flatten().cpu().double()
    return torch.nonzero((ts - t).abs() <= 1e-6 * max(1.0, abs(t))).flatten().tolist()


def entry_step(scheduler, forward, args: tuple, kwargs: dict) -> tuple[int, bool]:
    """The scheduler step a generation's first denoiser call runs, and whether the next call must confirm it
    (its timestep repeats at the following step)."""
    begin = getattr(scheduler, "begin_index", None)
    if isinstance(begin, int) and not isinstance(begin, bool):
        return begin, False
    hits = positions(scheduler, timestep_of(forward, args, kwargs))
    if not hits:
        return 0, False
    return hits[0], len(hits) > 1 and hits[1] == hits[0] + 1


@dataclass
class GenerationStart:
    """Number a generation's denoiser calls from where it enters the schedule.

    Args:
        scheduler: the pipeline's scheduler, as ``set_timesteps`` left it for this generation.
        num_calls: the schedule's denoiser calls per generation.
        num_inference_steps: the schedule's step count (named in errors).
    """

    scheduler: Any
    num_calls: int
    num_inference_steps: int
    _confirm: int | None = None  # the schedule call whose position the next call's timestep settles

    def locate(self, call: int, forward, args: tuple, kwargs: dict) -> int:
        """The schedule call of the denoiser call counted as ``call`` (0: a generation's first)."""
        if call == 0:
            return self._enter(forward, args, kwargs)
        if self._confirm is not None and call == self._confirm + 1:
            first, self._confirm = self._confirm, None
            if first + 1 not in positions(self.scheduler, timestep_of(forward, args, kwargs)):
                return first + 2  # the first call ran the repeated timestep's second occurrence
        return call

    def unsure(self, call: int) -> bool:
        """Whether ``call`` is an entry the next call may still move one call on."""
        return self._confirm is not None and call == self._confirm

    def _enter(self, forward, args: tuple, kwargs: dict) -> int:
        self._confirm = None
        step, ambiguous = entry_step(self.scheduler, forward, args, kwargs)
        if step == 0:
            return 0
        n = len(self.scheduler.timesteps)
        per, rest = divmod(self.num_calls, n)
        if rest or per < 1 or step >= n:
            raise ScheduleError(
                f"this generation starts part-way, at step {step} of the scheduler's {n} timesteps (image-to-image "
                f"or inpainting with strength < 1), but the schedule has {self.num_calls} denoiser calls for "
                f"num_inference_steps={self.num_inference_steps}, which do not map onto {n} timesteps; call the "
                f"pipeline with num_inference_steps={self.num_inference_steps} and no custom timesteps, or prune "
                "again for this step count")
        if ambiguous and per == 1:
            self._confirm = step
        return step * per


def require_whole_generation(pipe, scheduler, forward, args: tuple, kwargs: dict) -> None:
    """Refuse to search a pipeline whose generation (just run; its first denoiser call's ``args`` and
    ``kwargs``) started part-way: a searched schedule covers whole generations."""
    if scheduler is None:
        return
    step = entry_step(scheduler, forward, args, kwargs)[0]
    if step:
        raise DipgoError(
            f"{type(pipe).__name__} starts its generations part-way: its first denoiser call runs step {step} of "
            f"{len(scheduler.timesteps)} (image-to-image or inpainting with strength < 1), and dipgo searches "
            "whole generations. Search with strength=1.0 in the call kwargs, or on the text-to-image pipeline "
            "with the same components (e.g. StableDiffusionPipeline(**pipe.components)); the schedule then "
            "applies to this pipeline at any strength, by timestep")
