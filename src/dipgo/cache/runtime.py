"""The runtime's entry points: ``attach`` picks a mode's hooks, ``detach`` removes them.

The hooks themselves live in :mod:`dipgo.cache.hooks`, one module per mode (a static schedule, the search's
gates, a dynamic policy); this module keeps the names the rest of dipgo imports.
"""

from __future__ import annotations

import torch

from ..errors import DipgoError
from .hooks import (
    BLOCK_HOOK,
    ROOT_HOOK,
    Attachment,
    Policy,
    RunState,
    apply_policy,
    apply_schedule,
    apply_search_gates,
    parse_mode,
    uninstall,
)
from .schedule import Schedule

__all__ = ["attach", "detach", "Attachment", "Policy", "RunState", "parse_mode", "ROOT_HOOK", "BLOCK_HOOK",
           "apply_schedule", "apply_search_gates", "apply_policy"]


def attach(denoiser: torch.nn.Module, blocks: dict[str, torch.nn.Module], modes: dict[str, str],
           schedule: Schedule | None = None, branches: int | None = None, scheduler=None,
           policy: Policy | None = None) -> Attachment:
    """Install the root hook and one block hook per block on ``denoiser``.

    Blocks follow ``schedule`` (:func:`apply_schedule`) or ``policy`` (:func:`apply_policy`); with neither,
    every block computes and the search drives the gates (:func:`apply_search_gates`)."""
    if schedule is not None and policy is not None:
        raise DipgoError("attach takes a schedule or a policy, not both; attach one of them")
    if schedule is not None:
        return apply_schedule(denoiser, blocks, modes, schedule, scheduler=scheduler, branches=branches)
    if policy is not None:
        return apply_policy(denoiser, blocks, modes, policy, scheduler=scheduler)
    return apply_search_gates(denoiser, blocks, modes, scheduler=scheduler)


def detach(denoiser: torch.nn.Module) -> None:
    """Remove everything ``attach`` installed; the denoiser runs exactly as before."""
    uninstall(denoiser)
