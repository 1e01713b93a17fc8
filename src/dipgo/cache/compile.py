"""torch.compile with a skip schedule: the blocks' compute is compiled, the skip decisions stay eager.

``dipgo.compile_blocks(pipe, **torch_compile_kwargs)``, after ``dipgo.apply``, compiles each gated block's own
forward, the function dipgo's hook calls when the block computes (regional compilation). The hooks stay
eager Python, so which blocks run at a call is never traced into a graph, and a static schedule recompiles
nothing: a gated block either runs its compiled code, with the same input shapes at every call, or does not
run at all. The glue between blocks (embeddings, ``conv_in`` / ``conv_out``) stays eager; blocks of one class
share their compiled code.

Compiling the whole denoiser does not combine with the hooks: dipgo's hooks run eagerly under any
``torch.compile`` (:func:`dipgo.cache.hooks.attachment.install`), so a denoiser compiled around them would
run uncompiled. ``dipgo.apply`` refuses a compiled denoiser (``torch.compile(unet)`` or ``unet.compile()``),
and a hooked module compiled in place afterwards is refused at its next call. ``pipe.unet =
torch.compile(pipe.unet)`` after ``dipgo.apply`` cannot be seen from the hooks: it gives the same images and
compiles nothing. ``dipgo.prune`` refuses a compiled denoiser too: the search runs the pipeline with
gradients through its own hooks; prune, apply, then compile. (A block whose ``forward`` is already a compiled
function, ``block.forward = torch.compile(block.forward)``, is wrapped by the hook like any forward.)
"""

from __future__ import annotations

import torch
from torch._dynamo.eval_frame import OptimizedModule

from ..errors import DipgoError
from ..models.pipelines import denoiser_name, denoiser_of
from .hooks import BLOCK_HOOK, attachment_of

__all__ = ["compile_blocks", "is_compiled", "refuse_compiled"]


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether ``module`` is ``torch.compile(module)``'s wrapper or was compiled in place (``module.compile()``)."""
    return isinstance(module, OptimizedModule) or getattr(module, "_compiled_call_impl", None) is not None


def refuse_compiled(target, doing: str, denoiser: torch.nn.Module | None = None) -> None:
    """Raise if ``target``'s denoiser (or ``denoiser``) is compiled; ``doing`` names the call, for the message."""
    module = denoiser if denoiser is not None else _raw_denoiser(target)
    if module is None or not is_compiled(module):
        return
    where = "the module" if isinstance(target, torch.nn.Module) else f"pipe.{denoiser_name(target)}"
    if isinstance(module, OptimizedModule):
        how = f"torch.compile wrapped {where} (an OptimizedModule)"
        fix = (f"put the uncompiled module back ({where} = {where}._orig_mod)" if where != "the module" else
               "pass the uncompiled module (module._orig_mod)")
    else:
        how, fix = f"{where} was compiled in place (.compile())", "load it again without compiling"
    raise DipgoError(f"{doing} needs the uncompiled denoiser, but {how}: dipgo's hooks stay eager and would run "
                     f"it uncompiled. {fix[0].upper()}{fix[1:]}, prune and apply on it, then compile the blocks "
                     "inside the hooks: dipgo.apply(pipe, schedule); dipgo.compile_blocks(pipe, "
                     "**torch_compile_kwargs)")


def _raw_denoiser(target) -> torch.nn.Module | None:
    """The denoiser as the pipeline holds it (a ``torch.compile`` wrapper included); ``None`` for a function."""
    if isinstance(target, torch.nn.Module):
        return target
    return getattr(target, denoiser_name(target)) if hasattr(target, "scheduler") else None


def compile_blocks(pipe, **compile_kwargs) -> list[str]:
    """``torch.compile`` each block of the schedule applied to ``pipe`` (a pipeline or a bare denoiser);
    returns the compiled blocks' names.

    Compiles the block's own forward, inside dipgo's hook, so the hook (compute or reuse) stays eager and a
    reused block runs nothing. ``compile_kwargs`` go to ``torch.compile`` (``backend``, ``mode``,
    ``fullgraph``, ``dynamic``...). Calling it again recompiles from the eager forwards with the new options;
    ``dipgo.remove(pipe)`` puts the eager forwards back with the hooks.
    """
    att = attachment_of(denoiser_of(pipe))
    if att is None:
        raise DipgoError("dipgo.compile_blocks compiles the blocks of an applied schedule, and none is applied; "
                         "call dipgo.apply(pipe, schedule) first, then dipgo.compile_blocks(pipe)")
    for name, module in att.blocks.items():
        hook = module._diffusers_hook.get_hook(BLOCK_HOOK)
        eager = att.eager_forwards.setdefault(name, hook.fn_ref.original_forward)
        hook.fn_ref.original_forward = torch.compile(eager, **compile_kwargs)
    return list(att.blocks)
