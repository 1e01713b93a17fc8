"""The state the hooks of one attachment share, and the interface of a dynamic skip rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

ROOT_HOOK = "dipgo_call_counter"  # on the denoiser: numbers the calls of a generation
BLOCK_HOOK = "dipgo_backup"       # on each block: compute it, or reuse its cache


class Policy:
    """A dynamic skip rule, for methods that decide while sampling (a static ``Schedule`` decides ahead).

    ``computes`` is asked before each block of each call; ``observe`` sees every computed block's cached
    value (its output, or its residual for residual blocks) in execution order; ``reset`` starts a new
    generation.
    """

    def computes(self, call: int, block: str) -> bool:
        return True

    def observe(self, call: int, block: str, value) -> None:
        pass

    def reset(self) -> None:
        pass


@dataclass
class RunState:
    """Everything that changes during one generation; the root hook and every block hook hold the same one.

    Attributes:
        call: index of the running denoiser call in the generation (-1 before the first).
        new_generation: set by whoever knows a generation starts (``set_timesteps``, the search,
            ``dipgo.generation``); the next call then resets the caches and is call 0.
        in_generation: inside an explicit ``dipgo.generation()`` block, where the call count never wraps.
        caches: per (block, branch), the value a later call reuses.
        last_output: per branch, the denoiser's output, for reusing a whole call.
        computed, reused: block calls computed and reused since the attachment.
        gates: search mode: effective keep gates (calls, blocks) with gradients.
        checkpointing: search mode: recompute each denoiser call in backward instead of keeping activations.
        policy: policy mode: the dynamic rule asked per call and block.
    """

    call: int = -1
    new_generation: bool = True
    in_generation: bool = False
    caches: dict[tuple[str, int], Any] = field(default_factory=dict)
    last_output: dict[int, Any] = field(default_factory=dict)
    computed: int = 0
    reused: int = 0
    gates: torch.Tensor | None = None
    checkpointing: bool = False
    policy: Any = None

    def reset(self) -> None:
        """Forget the generation: the next call is call 0 and finds no cache."""
        self.call, self.new_generation = -1, False
        self.caches.clear()
        self.last_output.clear()
        if self.policy is not None:
            self.policy.reset()
