"""The root hook: which call of the generation is running, and where a generation starts.

diffusers' pipelines expose no step counter, so the denoiser's own calls are counted. A generation starts
when something flags it (``scheduler.set_timesteps``, the search before each sampling run,
``dipgo.generation()``), or, for a static schedule on a bare module, after the schedule's last call. None of
these rules looks at timesteps, so loops whose time falls (DDPM/DDIM) and loops whose time rises (flow
matching from 0 to 1) are counted alike. Only where a pipeline's generation enters a static schedule is read
from its scheduler (``start``: image-to-image and inpainting begin part-way, see :mod:`.start`).
"""

from __future__ import annotations

from diffusers.hooks import ModelHook

from ..schedule import ScheduleError
from .start import GenerationStart
from .state import RunState


class CallCounterHook(ModelHook):
    """Number the denoiser's calls in ``state.call``; reset the shared state when a generation starts.

    Args:
        num_calls: the calls a generation has at most (a static schedule's), or ``None`` for no limit.
        wraps: whether the call after the ``num_calls``-th starts the next generation (a bare module, whose
            loop nothing else marks) instead of raising (a pipeline, whose ``set_timesteps`` marks each one).
        start: where a pipeline's generation enters the schedule (its first call may be the schedule's k-th);
            ``None`` numbers every generation from call 0.
    """

    _is_stateful = True

    def __init__(self, state: RunState, num_calls: int | None = None, wraps: bool = False,
                 start: GenerationStart | None = None):
        super().__init__()
        self.state, self.num_calls, self.wraps, self.start = state, num_calls, wraps, start

    def new_forward(self, module, *args, **kwargs):
        self.advance(args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)

    def advance(self, args: tuple = (), kwargs: dict | None = None) -> None:
        s = self.state
        full = self.num_calls is not None and s.call + 1 >= self.num_calls
        if s.new_generation or (full and self.wraps and not s.in_generation):
            s.reset()
        s.call += 1
        if self.start is not None:
            s.call = self.start.locate(s.call, self.fn_ref.original_forward, args, kwargs or {})
        if self.num_calls is not None and s.call >= self.num_calls:
            raise ScheduleError(self._too_many())

    def _too_many(self) -> str:
        calls = self.state.call + 1
        if self.state.in_generation:
            return (f"the denoiser was called {calls} times inside one dipgo.generation() block but the schedule "
                    f"has {self.num_calls} calls; end the block after {self.num_calls} calls or prune again "
                    "for this loop's length")
        return (f"the denoiser was called {calls} times in one generation but the schedule has {self.num_calls} "
                "calls: the pipeline runs more steps than the schedule was made for; call it with the "
                "schedule's num_inference_steps or prune again for this step count")

    def reset_state(self, module):
        self.state.reset()
        self.state.new_generation = True
        return module
