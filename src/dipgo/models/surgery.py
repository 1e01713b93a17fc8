"""Model surgery every weight-pruning method shares: which submodules are candidate layers, what a removed
layer becomes, and swapping one submodule for another in place.

A candidate is a layer whose removal leaves a working network: it keeps its input's shape, or it
can fall back to its shortcut.

* UNet (``UNet2DConditionModel``, ``UNet2DModel``): every resnet and every attention inside the down,
  mid and up blocks. A removed resnet returns its shortcut (``conv_shortcut(x)`` where the channels
  change, else ``x``, divided by ``output_scale_factor`` as the resnet does); a removed attention
  (``Transformer2DModel`` or ``Attention``, both residual) returns its input.
* Transformer denoisers (DiT, PixArt, SD3, Flux): every transformer block, removed to the identity
  (joint SD3/Flux blocks pass both streams through).
* Any other module: the names you give, removed to the identity on their first argument.

Removal replaces the submodule in its parent by a small :class:`Removed` module, so a removed layer
costs nothing at run time (no hook, no branch) and its weights leave the state dict. Layer pruning
removes layers; depth pruning swaps blocks for their pruned and merged forms with :func:`swap`, or
removes them as its baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import DipgoError
from .costs import count_macs, count_params

JOINT = {"JointTransformerBlock", "FluxTransformerBlock", "FluxSingleTransformerBlock"}


@dataclass(frozen=True)
class Candidate:
    """A layer (or block) that can be pruned, with what pruning it saves."""

    name: str
    kind: str      # "resnet", "attention", "block" (transformer) or "module" (custom)
    params: int
    macs: int      # per denoiser call, batch 1
    depth: int = 1  # sequential blocks it stands for (depth pruning counts blocks)


class Removed(nn.Module):
    """What a removed layer becomes: its shortcut (resnets) or the identity, with its parent's call
    convention (a tensor, ``(tensor,)`` for ``return_dict=False`` callers, an output object, or the joint
    ``(encoder_hidden_states, hidden_states)`` pair)."""

    def __init__(self, kind: str, shortcut: nn.Module | None = None, scale: float = 1.0, returns: str = "tensor",
                 keep: dict[str, nn.Module] | None = None):
        super().__init__()
        self.kind, self.returns, self.scale = kind, returns, float(scale)
        if shortcut is not None:
            self.conv_shortcut = shortcut  # same attribute name as the resnet's, so its weights keep their keys
        for attr, module in (keep or {}).items():  # parts the rest of the model reads from outside the layer
            setattr(self, attr, module)

    def forward(self, *args, **kwargs):
        if self.returns == "joint":
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            return context, hidden
        x = args[0] if args else kwargs.get("input_tensor", kwargs.get("hidden_states"))
        if self.kind == "resnet":
            shortcut = getattr(self, "conv_shortcut", None)
            x = (shortcut(x) if shortcut is not None else x) / self.scale
        if self.returns == "output":
            if kwargs.get("return_dict", True) is False:
                return (x,)
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=x)
        return x

    def extra_repr(self) -> str:
        return f"removed {self.kind}"


def kept_parts(model: nn.Module, name: str) -> dict[str, nn.Module]:
    """Submodules of a layer that the model uses from outside the layer, so they survive its removal:
    DiT's final layer reads ``transformer_blocks[0].norm1.emb`` (the timestep and class embedding)."""
    if type(model).__name__ == "DiTTransformer2DModel" and name == "transformer_blocks.0":
        return {"norm1": model.get_submodule(name).norm1}
    return {}


def removed_form(module: nn.Module, keep: dict[str, nn.Module] | None = None) -> Removed:
    """What ``module`` becomes when removed, keeping ``keep`` (see :func:`kept_parts`)."""
    form = _bare_removed_form(module)
    for attr, part in (keep or {}).items():
        setattr(form, attr, part)
    return form


def _bare_removed_form(module: nn.Module) -> Removed:
    name = type(module).__name__
    if name == "ResnetBlock2D":
        if getattr(module, "upsample", None) is not None or getattr(module, "downsample", None) is not None:
            raise DipgoError("a resampling resnet has no shape-keeping shortcut")
        return Removed("resnet", getattr(module, "conv_shortcut", None), module.output_scale_factor)
    if name in ("Transformer2DModel", "SpatialTransformer2DModel"):
        return Removed("attention", returns="output")
    if name in JOINT:
        return Removed("block", returns="joint")
    return Removed("attention" if name == "Attention" else "block")


def candidate_names(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """The candidate layers of ``model`` in execution order (``names`` for a custom model)."""
    if names is not None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules or not n]
        if missing:
            raise DipgoError(f"unknown layer name(s) {missing} in {type(model).__name__}")
        return list(names)
    if hasattr(model, "down_blocks") and hasattr(model, "up_blocks"):
        out = []
        blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(model.down_blocks)]
        if getattr(model, "mid_block", None) is not None:
            blocks.append(("mid_block", model.mid_block))
        blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(model.up_blocks)]
        for prefix, block in blocks:
            resnets = list(getattr(block, "resnets", []) or [])
            attns = list(getattr(block, "attentions", []) or [])
            mid = prefix == "mid_block"
            order = ([("resnets", 0)] + [x for j in range(len(attns)) for x in (("attentions", j), ("resnets", j + 1))]
                     if mid else [x for j in range(len(resnets)) for x in
                                  ([("resnets", j)] + ([("attentions", j)] if j < len(attns) else []))])
            for attr, j in order:
                module = getattr(block, attr)[j]
                if attr == "resnets" and (getattr(module, "upsample", None) is not None
                                          or getattr(module, "downsample", None) is not None):
                    continue
                if attr == "attentions" and module is None:
                    continue
                out.append(f"{prefix}.{attr}.{j}")
        return out
    lists = [a for a in ("transformer_blocks", "single_transformer_blocks")
             if isinstance(getattr(model, a, None), nn.ModuleList)]
    if lists:
        return [f"{a}.{i}" for a in lists for i in range(len(getattr(model, a)))]
    raise DipgoError(f"{type(model).__name__} has no candidate layers dipgo knows; pass their names "
                     "(Python: names=[...]; CLI: --layers a,b)")


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, leaf = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), leaf


def swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` in place of the submodule ``name`` (in place); returns the old one."""
    parent, leaf = _parent(model, name)
    old = parent._modules[leaf]
    parent._modules[leaf] = new
    return old


def remove_layers(model: nn.Module, names: list[str]) -> nn.Module:
    """Remove ``names`` for good (in place): each becomes its :class:`Removed` form. Recorded on the model
    as ``_dipgo_removed`` (the schedule's config hash includes it, so a DiP-GO schedule of the unpruned
    model is refused on the pruned one)."""
    for n in names:
        module = model.get_submodule(n)
        if isinstance(module, Removed):
            raise DipgoError(f"layer {n} is already removed")
        swap(model, n, removed_form(module, kept_parts(model, n)))
    model._dipgo_removed = sorted(set(getattr(model, "_dipgo_removed", [])) | set(names))
    return model


def total_cost(model: nn.Module, call: tuple[tuple, dict]) -> tuple[int, int]:
    """(parameters, MACs per call) of the whole denoiser: the denominators of a pruning ratio."""
    with torch.no_grad():
        return count_params(model), count_macs(model, call[0], call[1]).total
