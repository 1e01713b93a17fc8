"""Search mode: every block computes, and its output is the gated mix of the fresh and the cached value.

The search (``dipgo.cache.search``) sets ``state.gates`` (calls x blocks, with gradients) before each gated
sampling run and ``state.new_generation`` before every run; with no gates set, the blocks just compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks import ModelHook
from torch.utils.checkpoint import checkpoint

from .attachment import Attachment, install
from .block import BlockHook
from .counter import CallCounterHook
from .scheduler_patch import SetTimestepsPatch
from .state import RunState

CHECKPOINT_HOOK = "dipgo_checkpoint"


@dataclass
class SearchGateConfig:
    """Search gates on a denoiser.

    Args:
        checkpointing: recompute each denoiser call in backward instead of keeping its activations; less
            memory for more time. The search may change it per run through ``state.checkpointing``.
        forecast_order: what a gated-off block reads: its last value (0) or a forecast from its last 2 or 3.
    """

    checkpointing: bool = False
    forecast_order: int = 0


def _tree_mix(gate, fresh, cached):
    if fresh is None:
        return None
    if torch.is_tensor(fresh):
        gate = gate.to(fresh.dtype)  # an fp32 gate must not promote an fp16/bf16 model's activations
        return gate * fresh + (1 - gate) * cached
    if isinstance(fresh, (tuple, list)):
        return type(fresh)(_tree_mix(gate, f, c) for f, c in zip(fresh, cached, strict=True))
    return fresh


class SearchGateHook(BlockHook):
    """Always compute; return ``gate * fresh + (1 - gate) * cached`` (straight-through with hard gates), so
    what the search optimises is what a static schedule will execute."""

    def __init__(self, name: str, index: int, state: RunState, mode: str = "output", order: int = 0):
        super().__init__(name, index, state, mode)
        self.order = order

    def new_forward(self, module, *args, **kwargs):
        s = self.state
        out = self.fn_ref.original_forward(*args, **kwargs)
        if s.gates is None:  # an ungated run (the full model's reference): nothing is mixed or read later
            s.computed += 1
            return out
        key, call = self.key(), max(s.call, 0)
        gate = s.gates[call, self.index]
        value, history = self.cache_value(out, args, kwargs), s.caches.get(key)
        if history is not None:
            value = _tree_mix(gate, value, self.recall(history, call))
        # Plain reuse keeps every call's value: a reused one equals the newest, so no later value changes, and
        # a later reuse's gradient reaches this call's gate. A forecast reads only computed values, like the
        # runtime's: a forecast value among them would tilt the next line (or parabola) through a computed one.
        if self.order == 0 or history is None or float(gate.detach()) >= 0.5:
            self.remember(key, call, value)
        return self.from_cache(value, args, kwargs)


class CheckpointHook(ModelHook):
    """Run a gated call under activation checkpointing when ``state.checkpointing`` asks for it. The backward
    pass re-runs the call, so the re-run must see the caches as they were before it and the same call index."""

    def __init__(self, state: RunState):
        super().__init__()
        self.state = state

    def new_forward(self, module, *args, **kwargs):
        s = self.state
        if s.gates is None or not s.checkpointing or not torch.is_grad_enabled():
            return self.fn_ref.original_forward(*args, **kwargs)
        call, before = s.call, dict(s.caches)

        def body(*a, **k):
            s.call = call
            s.caches.clear()
            s.caches.update(before)
            return self.fn_ref.original_forward(*a, **k)

        return checkpoint(body, *args, use_reentrant=False, **kwargs)


def apply_search_gates(denoiser: torch.nn.Module, blocks: dict[str, torch.nn.Module],
                       modes: dict[str, str], checkpointing: bool = False, scheduler=None,
                       forecast_order: int = 0) -> Attachment:
    """Hook ``blocks`` of ``denoiser`` for the search. The search marks each generation itself; a
    ``scheduler``'s ``set_timesteps`` marks one too."""
    config = SearchGateConfig(checkpointing, forecast_order)
    state = RunState(checkpointing=config.checkpointing)

    def block_hook(name: str, index: int) -> SearchGateHook:
        return SearchGateHook(name, index, state, modes.get(name, "output"), config.forecast_order)

    patch = None if scheduler is None else SetTimestepsPatch(scheduler, state)
    return install(denoiser, blocks, state, CallCounterHook(state), block_hook,
                   {CHECKPOINT_HOOK: CheckpointHook(state)}, scheduler=scheduler, config=config, patch=patch)
