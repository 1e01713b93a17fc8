"""Install one mode's hooks on a denoiser, and remove exactly what was installed."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ...errors import DipgoError
from .counter import CallCounterHook
from .offload import beneath_accelerate, check_group_offloading, pin
from .scheduler_patch import SetTimestepsPatch
from .state import BLOCK_HOOK, ROOT_HOOK, RunState

COMPILE_ORDER = ("load the model without compiling it, call dipgo.apply(pipe, schedule), then "
                 "dipgo.compile_blocks(pipe, **torch_compile_kwargs)")
EAGER_REASON = f"dipgo's hooks decide at each call which blocks run and stay out of compiled graphs; {COMPILE_ORDER}"


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
    # block -> its own forward, while ``dipgo.compile_blocks`` runs a compiled one inside the block's hook
    eager_forwards: dict[str, Callable] = field(default_factory=dict)


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
    check_group_offloading(blocks)
    per_block = [(module, _eager(block_hook(name, i))) for i, (name, module) in enumerate(blocks.items())]
    # registered last = outermost: the counter counts before all else
    roots = {name: _eager(hook) for name, hook in {**(inner or {}), ROOT_HOOK: counter}.items()}
    with beneath_accelerate(denoiser):  # an offload wrapper stays outermost (see hooks.offload)
        root = HookRegistry.check_if_exists_or_initialize(denoiser)
        for name, hook in roots.items():
            root.register_hook(hook, name)
            pin(hook)  # stays in force if a hook beneath it is removed
    for module, hook in per_block:
        with beneath_accelerate(module):
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, BLOCK_HOOK)
        pin(hook)
    att = Attachment(denoiser, blocks, state, root_hooks=list(roots), **extra)
    if att.patch is not None:
        att.patch.install()
    denoiser._dipgo_attachment = att
    return att


def _eager(hook: ModelHook) -> ModelHook:
    """Keep ``hook`` out of torch.compile's graphs, so no skip decision is traced (or guarded on, which would
    recompile at every call): it runs eagerly, and what it calls too, except a function compiled on its own
    (``dipgo.compile_blocks``). A module compiled in place after dipgo was applied is refused at its call."""
    inner = hook.new_forward

    @functools.wraps(inner)
    def new_forward(module, *args, **kwargs):
        if getattr(module, "_compiled_call_impl", None) is not None:
            raise DipgoError(f"this {type(module).__name__} was compiled in place (module.compile()) with dipgo "
                             f"applied, which would run it uncompiled inside dipgo's hooks; {COMPILE_ORDER}")
        return inner(module, *args, **kwargs)

    hook.new_forward = torch.compiler.disable(new_forward, reason=EAGER_REASON)
    return hook


def uninstall(denoiser: torch.nn.Module) -> None:
    """Remove every hook and patch ``install`` put in place; the denoiser runs exactly as before."""
    att = attachment_of(denoiser)
    if att is None:
        raise DipgoError(f"dipgo is not applied to this {type(denoiser).__name__}")
    for name, forward in att.eager_forwards.items():  # before the block hooks hand their forward back
        att.blocks[name]._diffusers_hook.get_hook(BLOCK_HOOK).fn_ref.original_forward = forward
    with beneath_accelerate(denoiser):
        for name in reversed(att.root_hooks):
            denoiser._diffusers_hook.remove_hook(name, recurse=False)
    for module in att.blocks.values():
        with beneath_accelerate(module):
            module._diffusers_hook.remove_hook(BLOCK_HOOK, recurse=False)
    if att.patch is not None:
        att.patch.remove()
    att.state.caches.clear()
    att.state.last_output.clear()
    denoiser._dipgo_attachment = None
