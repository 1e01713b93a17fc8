"""Static schedule mode: each block computes or reuses its cache as a searched ``Schedule`` says."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks import ModelHook

from ...errors import DipgoError
from ..schedule import Schedule
from .attachment import Attachment, install
from .block import BlockHook
from .counter import CallCounterHook
from .scheduler_patch import SetTimestepsPatch
from .start import GenerationStart
from .state import RunState

WHOLE_CALL_HOOK = "dipgo_whole_call"


@dataclass
class ScheduleConfig:
    """A static skip schedule on a denoiser.

    Args:
        schedule: which blocks compute at which call; every other (call, block) reuses the block's value
            from the last call of the same branch that computed it. More reuse is faster and drifts further
            from the full model.
        branches: denoiser calls per step that keep separate caches (2 for a loop that calls cond and uncond
            apart); ``None`` takes the schedule's.
    """

    schedule: Schedule
    branches: int | None = None

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule):
            raise DipgoError(f"a schedule must be a dipgo.Schedule, got {type(self.schedule).__name__}; "
                             "load one with dipgo.Schedule.load(path)")
        if self.branches is None:
            self.branches = self.schedule.branches
        if not isinstance(self.branches, int) or self.branches < 1:
            raise DipgoError(f"branches must be a positive integer, got {self.branches!r}")


class ScheduleHook(BlockHook):
    """Reuse the cache where the schedule skips the block; otherwise compute it, caching only what is read."""

    def __init__(self, name: str, index: int, state: RunState, schedule: Schedule, mode: str = "output",
                 branches: int = 1, start: GenerationStart | None = None):
        super().__init__(name, index, state, mode)
        self.schedule, self.branches, self.order = schedule, branches, schedule.forecast_order
        self.form = schedule.forecast_form
        self.start = start

    def computes(self, call: int) -> bool:
        return self.schedule.computes(call, self.name)

    def _read_later(self, call: int) -> bool:
        """Whether the schedule reads this block's cache after ``call``: only when the next call of the
        same branch reuses the block (a reuse further on is preceded by that call's own refresh). A
        forecast reads older values too, so with one every computed value is kept. A generation's entry that
        its next call may still move one call on (``GenerationStart``) keeps what either next call reuses."""
        shifts = (0, 1) if self.start is not None and self.start.unsure(call) else (0,)
        return self.order > 0 or any(self._reused_at(call + self.branches + d) for d in shifts)

    def _reused_at(self, call: int) -> bool:
        return call < self.schedule.num_calls and not self.schedule.computes(call, self.name)

    def recall(self, history, call: int):
        """The forecast, or the newest value where nothing reads it: at a call that reuses every block, only the
        output block's value reaches the denoiser's output (the blocks that would read the others reuse too),
        so forecasting them would be arithmetic thrown away."""
        if self.order and self._unread(call):
            return history[-1][1]
        return super().recall(history, call)

    def _unread(self, call: int) -> bool:
        s = self.schedule
        return s.output_block not in (None, self.name) and call < s.num_calls and not s.steps[call]

    def after_compute(self, key, call: int, out, args, kwargs) -> None:
        if self._read_later(call):
            self.remember(key, call, self.cache_value(out, args, kwargs))
        else:
            # The next call of this branch computes the block again, so this value would never be read:
            # skip the residual (a full-size subtraction) and drop the stale value.
            self.state.caches.pop(key, None)


class WholeCallHook(ModelHook):
    """When a call reuses every block and the output depends only on the output block's cached value, the
    result equals the previous call's of the same branch: return it without running the denoiser."""

    def __init__(self, state: RunState, schedule: Schedule, num_blocks: int, branches: int):
        super().__init__()
        self.state, self.schedule, self.num_blocks, self.branches = state, schedule, num_blocks, branches

    def new_forward(self, module, *args, **kwargs):
        s = self.state
        branch = s.call % self.branches
        if not self.schedule.steps[s.call] and branch in s.last_output:
            s.reused += self.num_blocks
            return s.last_output[branch]
        out = self.fn_ref.original_forward(*args, **kwargs)
        s.last_output[branch] = out
        return out


def apply_schedule(denoiser: torch.nn.Module, blocks: dict[str, torch.nn.Module], modes: dict[str, str],
                   schedule: Schedule, scheduler=None, branches: int | None = None) -> Attachment:
    """Hook ``blocks`` of ``denoiser`` to follow ``schedule``; ``modes`` maps a block to its cache mode.

    With a pipeline's ``scheduler``, its ``set_timesteps`` starts each generation and refuses another step
    count, more calls than the schedule has raise, and a generation that starts part-way (image-to-image,
    inpainting) enters the schedule at its first timestep's call (:mod:`.start`). Without one (a bare module in
    a custom loop), the call after the schedule's last starts the next generation; ``dipgo.generation()``
    marks one explicitly."""
    config = ScheduleConfig(schedule, branches)
    state = RunState()
    start = None if scheduler is None else GenerationStart(scheduler, schedule.num_calls, schedule.num_inference_steps)
    counter = CallCounterHook(state, schedule.num_calls, wraps=scheduler is None, start=start)
    inner = {}
    if schedule.output_block is not None and schedule.forecast_order == 0:  # a forecast changes every call
        inner[WHOLE_CALL_HOOK] = WholeCallHook(state, schedule, len(blocks), config.branches)

    def block_hook(name: str, index: int) -> ScheduleHook:
        return ScheduleHook(name, index, state, schedule, modes.get(name, "output"), config.branches, start)

    patch = None if scheduler is None else SetTimestepsPatch(scheduler, state, schedule.num_inference_steps)
    return install(denoiser, blocks, state, counter, block_hook, inner, schedule=schedule, scheduler=scheduler,
                   config=config, patch=patch)
