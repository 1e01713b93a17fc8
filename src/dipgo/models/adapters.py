"""Block adapters: which submodules of a denoiser are gated, how they are cached, what feeds what.

One small function per model family, kept in a registry keyed by class name (timm-style), so a new
family is one ``@register_adapter`` away. A custom ``torch.nn.Module`` works too: pass the list of
submodule names (each block's output must keep its shape from step to step).

An adapter returns a :class:`BlockGraph`:

* ``names``: the gated blocks, in execution order;
* ``modes``: ``"output"`` (a reused block returns its cached output) or ``"residual"`` (it returns
  its fresh input plus its cached residual; used for transformer blocks, whose output is
  input + residual, so a reused block still passes the fresh hidden state through);
* ``consumers``: for the dependency cascade, the blocks that read a block's output. A block whose
  output is read by the ungated rest of the model is listed in ``always_needed``. A block is
  computed only if it is kept *and* some consumer of it is computed (or it is always needed).
* ``output_block``: optional, see :class:`BlockGraph`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import DipgoError

GRANULARITIES = ("coarse", "fine")


@dataclass
class BlockGraph:
    names: list[str]
    modes: dict[str, str] = field(default_factory=dict)
    consumers: dict[str, list[str]] = field(default_factory=dict)
    always_needed: set[str] = field(default_factory=set)
    # A block whose output alone determines the denoiser's output (UNet: the last up block, followed
    # only by norm + conv_out). When a call reuses every block, the runtime then returns the previous
    # call's output without running anything.
    output_block: str | None = None

    def __post_init__(self):
        for n in self.names:
            self.modes.setdefault(n, "output")
            self.consumers.setdefault(n, [])
        unknown = {c for cs in self.consumers.values() for c in cs} - set(self.names)
        if unknown:
            raise DipgoError(f"block graph names unknown consumers {sorted(unknown)}")
        orphans = [n for n in self.names if not self.consumers[n] and n not in self.always_needed]
        if orphans:  # an unread block would always be cascaded away; treat it as read by the model
            self.always_needed |= set(orphans)

    def reverse_topological(self) -> list[str]:
        """Consumers before producers (the order in which the cascade is resolved)."""
        order, seen = [], set()

        def visit(n: str):
            if n in seen:
                return
            seen.add(n)
            for c in self.consumers[n]:
                visit(c)
            order.append(n)

        for n in self.names:
            visit(n)
        return order


AdapterFn = Callable[[torch.nn.Module, str], BlockGraph]
_ADAPTERS: dict[str, AdapterFn] = {}


def register_adapter(*class_names: str) -> Callable[[AdapterFn], AdapterFn]:
    def deco(fn: AdapterFn) -> AdapterFn:
        for name in class_names:
            _ADAPTERS[name] = fn
        return fn
    return deco


def is_unet(model: torch.nn.Module) -> bool:
    """A UNet (down, mid and up blocks), as opposed to a stack of transformer blocks."""
    return hasattr(model, "up_blocks")


@register_adapter("UNet2DConditionModel", "UNet2DModel")
def unet_graph(model: torch.nn.Module, granularity: str) -> BlockGraph:
    return unet_fine_graph(model) if granularity == "fine" else unet_coarse_graph(model)


def unet_coarse_graph(model: torch.nn.Module) -> BlockGraph:
    """Coarse UNet blocks, as DiP-GO's SD-1.5 setting: down_blocks.*, mid_block, up_blocks.*.

    down_blocks.i feeds down_blocks.i+1 (or the mid block) and, through its skip connections,
    up_blocks.(n-1-i); up_blocks.j feeds up_blocks.j+1; the last up block feeds conv_out.
    """
    n_down, n_up = len(model.down_blocks), len(model.up_blocks)
    has_mid = getattr(model, "mid_block", None) is not None
    down = [f"down_blocks.{i}" for i in range(n_down)]
    up = [f"up_blocks.{j}" for j in range(n_up)]
    names = down + (["mid_block"] if has_mid else []) + up
    consumers: dict[str, list[str]] = {}
    for i, d in enumerate(down):
        nxt = down[i + 1] if i + 1 < n_down else ("mid_block" if has_mid else up[0])
        consumers[d] = sorted({nxt, up[n_up - 1 - i]})
    if has_mid:
        consumers["mid_block"] = [up[0]]
    for j in range(n_up - 1):
        consumers[up[j]] = [up[j + 1]]
    return BlockGraph(names, consumers=consumers, always_needed={up[-1]}, output_block=up[-1])


def _layers(block, prefix: str, has_attn_first: bool = False) -> list[list[str]]:
    """Execution-ordered (resnet, attention) groups of a UNet block, one list per skip-connection output."""
    groups = []
    attns = getattr(block, "attentions", None) or []
    for j in range(len(block.resnets)):
        group = [f"{prefix}.resnets.{j}"]
        if j < len(attns):
            group.append(f"{prefix}.attentions.{j}")
        groups.append(group)
    return groups


def unet_fine_graph(model: torch.nn.Module) -> BlockGraph:
    """One gate per resnet, attention and resampler inside the UNet's blocks.

    Data flow: the hidden state runs through every unit in execution order; each down layer (its
    attention if it has one, else its resnet) and each downsampler also hands a skip tensor to the
    up resnet that consumes it (the UNet pops them in reverse order; conv_in's is ungated). The last
    unit feeds only conv_norm_out/conv_out, so a call that reuses it reuses the whole output.
    """
    order: list[str] = []
    skips: list[str | None] = [None]  # conv_in's skip tensor: not gated
    for i, block in enumerate(model.down_blocks):
        for group in _layers(block, f"down_blocks.{i}"):
            order += group
            skips.append(group[-1])
        if getattr(block, "downsamplers", None) is not None:
            order.append(f"down_blocks.{i}.downsamplers.0")
            skips.append(order[-1])
    mid = getattr(model, "mid_block", None)
    if mid is not None:
        order.append("mid_block.resnets.0")
        for j in range(len(getattr(mid, "attentions", []) or [])):
            order += [f"mid_block.attentions.{j}", f"mid_block.resnets.{j + 1}"]
    consumers: dict[str, set[str]] = {}
    for i, block in enumerate(model.up_blocks):
        for group in _layers(block, f"up_blocks.{i}"):
            producer = skips.pop()
            if producer is not None:
                consumers.setdefault(producer, set()).add(group[0])
            order += group
        if getattr(block, "upsamplers", None) is not None:
            order.append(f"up_blocks.{i}.upsamplers.0")
    for a, b in zip(order[:-1], order[1:], strict=True):
        consumers.setdefault(a, set()).add(b)
    return BlockGraph(order, consumers={k: sorted(v) for k, v in consumers.items()},
                      always_needed={order[-1]}, output_block=order[-1])


# Blocks that take (hidden_states, encoder_hidden_states) and return (encoder_hidden_states, hidden_states):
# MMDiT-style joint blocks. Each output is cached as the residual of the input of the same name.
JOINT_BLOCKS = {"JointTransformerBlock", "FluxTransformerBlock", "FluxSingleTransformerBlock"}
JOINT_MODE = "residual:encoder_hidden_states,hidden_states"
# Joint blocks that return their two streams the other way round: (hidden_states, encoder_hidden_states).
HIDDEN_FIRST_BLOCKS = {"CogVideoXBlock", "HunyuanVideoTransformerBlock", "HunyuanVideoSingleTransformerBlock",
                       "HunyuanVideoTokenReplaceTransformerBlock", "HunyuanVideoTokenReplaceSingleTransformerBlock"}
HIDDEN_FIRST_MODE = "residual:hidden_states,encoder_hidden_states"


def _residual_mode(block: torch.nn.Module) -> str:
    name = type(block).__name__
    if name in JOINT_BLOCKS:
        return JOINT_MODE
    return HIDDEN_FIRST_MODE if name in HIDDEN_FIRST_BLOCKS else "residual"


# The sub-layers a transformer block adds to its residual stream: attention and feed-forward modules.
SUBLAYER = re.compile(r"attn\d*|ff(?:_context)?")


def transformer_graph(model: torch.nn.Module, granularity: str, lists: tuple[str, ...] = ("transformer_blocks",)
                      ) -> BlockGraph:
    """DiT, PixArt, SD3, Flux, CogVideoX...: no cascade, every gated unit read by the rest of the model.

    ``coarse``: one gate per transformer block, residual caching. ``fine``: one gate per attention and
    feed-forward module inside each block, output caching (TaylorSeer's units): a reused module returns its
    cached or forecast output, while the block's norms, modulation and residual additions run on the fresh
    hidden state. A block without such modules keeps one gate."""
    modes = {}
    for attr in lists:
        for i, block in enumerate(getattr(model, attr)):
            subs = [n for n, _ in block.named_children() if SUBLAYER.fullmatch(n)] if granularity == "fine" else []
            if subs:
                modes.update({f"{attr}.{i}.{n}": "output" for n in subs})
            else:
                modes[f"{attr}.{i}"] = _residual_mode(block)
    return BlockGraph(list(modes), modes=modes, always_needed=set(modes))


@register_adapter("FluxTransformer2DModel", "HunyuanVideoTransformer3DModel")
def flux_graph(model: torch.nn.Module, granularity: str) -> BlockGraph:
    """Flux and HunyuanVideo: the dual-stream blocks, then the single-stream blocks, all joint-residual."""
    return transformer_graph(model, granularity, ("transformer_blocks", "single_transformer_blocks"))


@register_adapter("WanTransformer3DModel")
def wan_graph(model: torch.nn.Module, granularity: str) -> BlockGraph:
    """Wan: its blocks live in ``blocks``; each returns its hidden state (plain residual)."""
    return transformer_graph(model, granularity, ("blocks",))


def block_graph(model: torch.nn.Module, granularity: str = "coarse", names: list[str] | None = None,
                mode: str = "output") -> BlockGraph:
    """The gated blocks of ``model``. ``names`` overrides the adapter: a custom model's blocks."""
    if granularity not in GRANULARITIES:
        raise DipgoError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
    if names is not None:
        resolve_blocks(model, names)
        if not names:
            raise DipgoError("blocks= is empty; name at least one submodule to gate")
        return BlockGraph(list(names), modes={n: mode for n in names}, always_needed=set(names))
    fn = _ADAPTERS.get(type(model).__name__)
    if fn is None and isinstance(getattr(model, "transformer_blocks", None), torch.nn.ModuleList):
        fn = transformer_graph
    if fn is None:
        raise DipgoError(
            f"no block adapter for {type(model).__name__}; pass the submodule names to gate explicitly "
            f"(Python: blocks=['layers.0', 'layers.1']; CLI: --blocks layers.0,layers.1)"
        )
    return fn(model, granularity)


def unit_graph(model: torch.nn.Module) -> BlockGraph:
    """The units the baseline caches work on and the MACs probe measures: a UNet's fine graph (resnets,
    attentions and resamplers, so DeepCache's skip branch is expressible), a transformer's blocks (FORA)."""
    return block_graph(model, "fine" if is_unet(model) else "coarse")


def block_names(model: torch.nn.Module, granularity: str = "coarse", names: list[str] | None = None) -> list[str]:
    return block_graph(model, granularity, names).names


def resolve_blocks(model: torch.nn.Module, names: list[str]) -> dict[str, torch.nn.Module]:
    """Map names to submodules, with an error that lists what exists when a name is wrong."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules or n == ""]
    if missing:
        top = [n for n in modules if n and "." not in n]
        raise DipgoError(
            f"unknown block name(s) {missing} in {type(model).__name__}; its top-level submodules are {top}"
        )
    if len(set(names)) != len(names):
        raise DipgoError(f"block names repeat: {names}")
    return {n: modules[n] for n in names}


def effective_keep(gates: torch.Tensor, graph: BlockGraph) -> torch.Tensor:
    """Apply the dependency cascade to keep gates (calls, blocks) -> gates of blocks actually computed.

    Differentiable: computed = kept * max(computed of consumers), with always-needed blocks read by
    the rest of the model. For 0/1 gates this is exactly the runtime's rule.
    """
    index = {n: j for j, n in enumerate(graph.names)}
    eff: dict[str, torch.Tensor] = {}
    for n in graph.reverse_topological():
        g = gates[..., index[n]]
        if n not in graph.always_needed:
            needed = torch.stack([eff[c] for c in graph.consumers[n]], 0).amax(0)
            g = g * needed
        eff[n] = g
    return torch.stack([eff[n] for n in graph.names], -1)
