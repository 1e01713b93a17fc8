"""The one patch outside the hooks: a pipeline's ``scheduler.set_timesteps`` marks a new generation.

Every diffusers pipeline calls ``set_timesteps`` once at the start of a generation, so wrapping it is how
the root hook learns where a generation starts without a step counter from the pipeline.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ..schedule import ScheduleError
from .state import RunState


@dataclass
class SetTimestepsPatch:
    """Wrap ``scheduler.set_timesteps`` to flag ``state.new_generation``, refusing other step counts.

    Args:
        scheduler: the pipeline's scheduler; its class stays untouched, only the instance is patched.
        state: the attachment's shared state.
        num_inference_steps: the only step count accepted (a static schedule's), or ``None`` for any.
    """

    scheduler: Any
    state: RunState
    num_inference_steps: int | None = None
    _original: Any = None  # an instance attribute the patch replaced, restored on removal

    def install(self) -> SetTimestepsPatch:
        self._original = self.scheduler.__dict__.get("set_timesteps")
        bound = self.scheduler.set_timesteps
        patch = self

        @functools.wraps(bound)  # pipelines inspect its signature (Flux asks whether it takes `sigmas`)
        def set_timesteps(num_inference_steps=None, *args, **kwargs):
            patch.check(num_inference_steps)
            patch.state.new_generation = True
            return bound(num_inference_steps, *args, **kwargs)

        self.scheduler.set_timesteps = set_timesteps
        return self

    def check(self, num_inference_steps: int | None) -> None:
        want = self.num_inference_steps
        if want is not None and num_inference_steps is not None and num_inference_steps != want:
            raise ScheduleError(
                f"the schedule was made for num_inference_steps={want}, but the pipeline asks for "
                f"{num_inference_steps}; call the pipeline with num_inference_steps={want} or prune again "
                "for this step count (image-to-image and inpainting count all the steps: their strength runs "
                f"the last strength x {want} of a {want}-step schedule)")

    def remove(self) -> None:
        if self._original is None:
            del self.scheduler.set_timesteps  # the class method shows through again
        else:
            self.scheduler.set_timesteps = self._original
