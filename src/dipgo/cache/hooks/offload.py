"""Living beside other hooks: accelerate's forward wrappers, diffusers' group offloading and whatever is
registered beneath dipgo's hooks and removed again.

* Model / sequential CPU offload (accelerate) replaces ``module.forward`` with a wrapper that calls
  ``module._old_forward``, and puts ``forward = _old_forward`` back whenever the pipeline re-installs its
  offload hooks (after every call with ``enable_model_cpu_offload``). diffusers' ``HookRegistry`` also
  wraps and restores ``module.forward``. So dipgo edits its hooks *beneath* accelerate's wrapper (on
  ``_old_forward``): the wrapper stays outermost, calls dipgo's hooks, and neither drops the other.
* Group offloading (diffusers) registers a hook per offload group in the same registry as dipgo's. Hooks
  registered later run first, so with group offloading enabled before ``dipgo.apply`` a reused block
  skips its weight transfer too. That is only sound when each of dipgo's blocks is a whole offload group:
  a group of several blocks is moved in by its first block, which dipgo may reuse while a later one
  computes.
* ``HookRegistry.remove_hook`` re-links the hook above a removed one by assigning its ``forward``, which
  for a hook with ``new_forward`` (all of dipgo's) replaces the hook itself: group offloading re-applied
  by ``load_lora_weights``, or a cache disabled beneath dipgo, would silently switch dipgo off. dipgo's
  hooks keep their ``new_forward`` pinned and take such an assignment as what they wrap (``pin``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import HookFunctionReference

from ...errors import DipgoError

GROUP_OFFLOADING = "group_offloading"  # the name diffusers registers its group offloading hooks under


@contextmanager
def beneath_accelerate(module: torch.nn.Module) -> Iterator[None]:
    """Run ``HookRegistry`` edits on ``module`` beneath accelerate's forward wrapper, if it has one."""
    wrapper = module.__dict__.get("forward")
    if getattr(module, "_hf_hook", None) is None or not hasattr(module, "_old_forward") or wrapper is None:
        yield
        return
    module.forward = module._old_forward
    try:
        yield
    finally:
        module._old_forward = module.forward  # what accelerate's wrapper calls: now dipgo's hooks, or none
        module.forward = wrapper


def check_group_offloading(blocks: dict[str, torch.nn.Module]) -> None:
    """Refuse blocks that share a group offloading group with other modules (``num_blocks_per_group > 1``)."""
    for name, module in blocks.items():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(GROUP_OFFLOADING) if registry is not None else None
        group = getattr(hook, "group", None)
        if group is not None and len(group.modules) > 1:
            raise DipgoError(
                f"block {name!r} shares a group offloading group with {len(group.modules) - 1} other module(s) "
                "(num_blocks_per_group > 1): a reused block would leave the weights of the group's other "
                "blocks offloaded. Enable group offloading with num_blocks_per_group=1 or "
                "offload_type='leaf_level' (reused blocks then skip their transfers), or call dipgo.apply "
                "before enabling group offloading (every block is then transferred, reused or not)")


class PinnedReference(HookFunctionReference):
    """A registered hook's function reference whose ``forward`` stays the hook's ``new_forward``: assigning
    ``forward`` (what ``remove_hook`` does to the hook above the one it removes) sets what it wraps."""

    @property
    def forward(self):
        return self.__dict__["forward"]

    @forward.setter
    def forward(self, fn) -> None:
        if "forward" in self.__dict__:
            self.original_forward = fn
        else:
            self.__dict__["forward"] = fn


def pin(hook: ModelHook) -> ModelHook:
    """Pin a registered hook's ``new_forward`` (see :class:`PinnedReference`)."""
    ref = getattr(hook, "fn_ref", None)
    if ref is not None and ref.original_forward is not None:
        ref.__class__ = PinnedReference
    return hook
