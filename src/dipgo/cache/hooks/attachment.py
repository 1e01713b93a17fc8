"""Install one mode's hooks on a denoiser, and remove exactly what was installed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ...errors import DipgoError
from .counter import CallCounterHook
from .scheduler_patch import SetTimestepsPatch
from .state import BLOCK_HOOK, ROOT_HOOK, RunState


@dataclass
class Attachment:
    """What one ``apply_*`` installed on a denoiser (kept on it as ``_dipgo_attachment``)."""

    denoiser: torch.nn.Module
    blocks: dict[str, torch.nn.Module]
    state: RunState
    schedule: Any = None        # the static schedule in force, if any
    scheduler: Any = None       # the pipeline's scheduler whose set_timesteps is patched, if any
    config: Any = None          # the mode's config dataclass
    root_hooks: list[str] = field(default_factory=list)
    patch: SetTimestepsPatch | None = None


def attachment_of(denoiser: torch.nn.Module) -> Attachment | None:
    return getattr(denoiser, "_dipgo_attachment", None)


def install(denoiser: torch.nn.Module, blocks: dict[str, torch.nn.Module], state: RunState,
            counter: CallCounterHook, block_hook: Callable[[str, int], ModelHook],
            inner: dict[str, ModelHook] | None = None, **extra) -> Attachment:
    """Register ``inner`` root hooks, then the call counter around them, then one block hook per block.

    Every hook is built before any is registered, so a bad cache mode leaves the denoiser untouched.
    ``extra`` fills the remaining ``Attachment`` fields (schedule, scheduler, config, patch)."""
    if attachment_of(denoiser) is not None:
        raise DipgoError(
            f"dipgo is already applied to this {type(denoiser).__name__}; call dipgo.remove(pipe) first")
    if not blocks:
        raise DipgoError("no blocks to hook; pass the names of the denoiser's blocks (blocks=[...])")
    per_block = [(module, block_hook(name, i)) for i, (name, module) in enumerate(blocks.items())]
    root = HookRegistry.check_if_exists_or_initialize(denoiser)
    roots = {**(inner or {}), ROOT_HOOK: counter}  # registered last = outermost: counts before all else
    for name, hook in roots.items():
        root.register_hook(hook, name)
    for module, hook in per_block:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, BLOCK_HOOK)
    att = Attachment(denoiser, blocks, state, root_hooks=list(roots), **extra)
    if att.patch is not None:
        att.patch.install()
    denoiser._dipgo_attachment = att
    return att


def uninstall(denoiser: torch.nn.Module) -> None:
    """Remove every hook and patch ``install`` put in place; the denoiser runs exactly as before."""
    att = attachment_of(denoiser)
    if att is None:
        raise DipgoError(f"dipgo is not applied to this {type(denoiser).__name__}")
    for name in reversed(att.root_hooks):
        denoiser._diffusers_hook.remove_hook(name, recurse=False)
    for module in att.blocks.values():
        module._diffusers_hook.remove_hook(BLOCK_HOOK, recurse=False)
    if att.patch is not None:
        att.patch.remove()
    att.state.caches.clear()
    att.state.last_output.clear()
    denoiser._dipgo_attachment = None
