"""Policy mode: a dynamic rule (a ``Policy``, e.g. a first-block cache) decides per call and block.

A policy remembers what it observed, so it must know where a generation starts. With a pipeline's
``scheduler``, ``set_timesteps`` marks it. On a bare module in a custom loop nothing does: wrap each
generation in ``with dipgo.generation(module):``, or the caches and the policy carry over between loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import DipgoError
from .attachment import Attachment, install
from .block import BlockHook
from .counter import CallCounterHook
from .scheduler_patch import SetTimestepsPatch
from .state import Policy, RunState


@dataclass
class PolicyConfig:
    """A dynamic skip rule on a denoiser.

    Args:
        policy: asked ``computes(call, block)`` before each block; ``observe(call, block, value)`` sees each
            computed block's cached value; ``reset()`` at each new generation. How eagerly it reuses trades
            speed for fidelity.
    """

    policy: Policy

    def __post_init__(self):
        missing = [m for m in ("computes", "observe", "reset") if not callable(getattr(self.policy, m, None))]
        if missing:
            raise DipgoError(f"{type(self.policy).__name__} is not a policy: it lacks {', '.join(missing)}; "
                             "subclass dipgo.cache.runtime.Policy")


class PolicyHook(BlockHook):
    """Reuse the cache when the policy says so; otherwise compute, cache and show the value to the policy."""

    def computes(self, call: int) -> bool:
        return self.state.policy.computes(call, self.name)

    def after_compute(self, key, call: int, out, args, kwargs) -> None:
        value = self.cache_value(out, args, kwargs)
        self.remember(key, call, value)
        self.state.policy.observe(call, self.name, value)


def apply_policy(denoiser: torch.nn.Module, blocks: dict[str, torch.nn.Module], modes: dict[str, str],
                 policy: Policy, scheduler=None) -> Attachment:
    """Hook ``blocks`` of ``denoiser`` to follow ``policy``; ``scheduler.set_timesteps`` (if given) or
    ``dipgo.generation()`` starts each generation."""
    config = PolicyConfig(policy)
    state = RunState(policy=policy)

    def block_hook(name: str, index: int) -> PolicyHook:
        return PolicyHook(name, index, state, modes.get(name, "output"))

    patch = None if scheduler is None else SetTimestepsPatch(scheduler, state)
    return install(denoiser, blocks, state, CallCounterHook(state), block_hook, scheduler=scheduler,
                   config=config, patch=patch)
