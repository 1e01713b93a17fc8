"""What every block hook shares: the cache mode of a block, and its value in that mode."""

from __future__ import annotations

import inspect

from diffusers.hooks import ModelHook

from ...errors import DipgoError
from .forecast import History, forecast, push
from .state import RunState


def parse_mode(mode: str) -> tuple[str, tuple[str, ...]]:
    """``"output"``, ``"residual"`` or ``"residual:a,b"`` -> (kind, names of the inputs the outputs add to)."""
    kind, _, names = mode.partition(":")
    if kind not in ("output", "residual") or (names and kind != "residual"):
        raise DipgoError(f"unknown cache mode {mode!r}; use 'output', 'residual' or 'residual:input1,input2'")
    return kind, tuple(n for n in names.split(",") if n)


class BlockHook(ModelHook):
    """A block with a backup connection; subclasses decide when it computes and when it reuses.

    ``mode="output"`` caches the block's output (UNet blocks, whose outputs are not residual);
    ``mode="residual"`` caches ``output - input`` and returns ``input + cached`` (transformer blocks, so a
    reused block still passes the fresh hidden state through). ``"residual:a,b"`` is the same for a block
    returning a tuple: output k is the residual of the input argument named k-th (SD3/Flux joint blocks take
    ``hidden_states, encoder_hidden_states`` and return ``encoder_hidden_states, hidden_states``; a ``None``
    output, as SD3's last context block returns, stays ``None``).
    """

    _is_stateful = True
    branches = 1  # calls per step that keep separate caches
    order = 0     # forecast order of a reused value (see ``forecast``)
    form = "taylor"  # and its form

    def __init__(self, name: str, index: int, state: RunState, mode: str = "output"):
        super().__init__()
        self.name, self.index, self.state = name, index, state
        self.mode, self.inputs = parse_mode(mode)
        self._signature: inspect.Signature | None = None

    # -------------------------------------------------------------- compute or reuse
    def computes(self, call: int) -> bool:
        """Whether the block computes at ``call`` (it always does while it has nothing cached)."""
        raise NotImplementedError

    def after_compute(self, key, call: int, out, args, kwargs) -> None:
        """Keep what later calls read of a fresh output; by default its cache value."""
        self.remember(key, call, self.cache_value(out, args, kwargs))

    def remember(self, key, call: int, value) -> None:
        self.state.caches[key] = push(self.state.caches.get(key), call, value, self.order)

    def new_forward(self, module, *args, **kwargs):
        s, key = self.state, self.key(self.branches)
        call, history = max(s.call, 0), s.caches.get(key)
        if history is not None and not self.computes(call):
            s.reused += 1
            return self.from_cache(self.recall(history, call), args, kwargs)
        out = self.fn_ref.original_forward(*args, **kwargs)
        s.computed += 1
        self.after_compute(key, call, out, args, kwargs)
        return out

    def recall(self, history: History, call: int):
        """The cached value a reuse at ``call`` returns: the newest one, or its forecast."""
        return forecast(history, call, self.order, self.form)

    @property
    def residual(self) -> bool:
        return self.mode == "residual"

    def _input(self, args, kwargs):
        if not self.inputs:
            return args[0] if args else kwargs.get("hidden_states")
        if self._signature is None:
            self._signature = inspect.signature(self.fn_ref.original_forward)
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        return tuple(bound.get(n) for n in self.inputs)

    def _residual(self, out, inp):
        if isinstance(out, tuple):
            return tuple(None if o is None else o - i for o, i in zip(out, inp, strict=True))
        return out - inp

    def _add(self, inp, residual):
        if isinstance(residual, tuple):
            return tuple(None if r is None else i + r for i, r in zip(inp, residual, strict=True))
        return inp + residual

    def cache_value(self, out, args, kwargs):
        """What the cache keeps of a fresh output: the output, or its residual."""
        return self._residual(out, self._input(args, kwargs)) if self.residual else out

    def from_cache(self, cached, args, kwargs):
        """The block's output rebuilt from a cached value and this call's inputs."""
        return self._add(self._input(args, kwargs), cached) if self.residual else cached

    def key(self, branches: int = 1) -> tuple[str, int]:
        return self.name, max(self.state.call, 0) % branches

    def reset_state(self, module):
        return module  # the caches live in the shared RunState, which the root hook resets
