"""What the LoRA and offloading tests add to the tiny pipelines of ``families``: a random LoRA in the
format ``load_lora_weights`` reads, and schedules that reuse blocks at fixed calls (no search needed)."""

from __future__ import annotations

import torch
from families import CALL_KWARGS, FAMILIES
from helpers import make_schedule

from dipgo import Calibration, Schedule
from dipgo.models.adapters import block_graph, resolve_blocks
from dipgo.models.costs import profile_denoiser
from dipgo.models.pipelines import capture_denoiser_call, default_calibration, denoiser_of, generate

__all__ = ["LORA_TARGETS", "STEPS", "Family", "lora_layers", "random_lora"]

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections most LoRAs train
STEPS = 4
GUIDANCE = 2.0


def random_lora(pipe, rank: int = 4, strength: float = 0.3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random LoRA on the denoiser's attention projections, as a diffusers-format state dict
    (``unet.<layer>.lora_A.weight`` / ``lora_B.weight``) for ``pipe.load_lora_weights``.

    ``strength`` is each update's expected Frobenius norm relative to its layer's weight: with ``B @ A``
    of rank ``rank``, ``A ~ N(0, 1/in)`` and ``B ~ N(0, (strength * std(W))^2 * in / rank)``."""
    den = denoiser_of(pipe)
    prefix = "unet" if hasattr(pipe, "unet") else "transformer"
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, layer in den.named_modules():
        if isinstance(layer, torch.nn.Linear) and name.endswith(tuple("." + t for t in LORA_TARGETS)):
            fan_in = layer.in_features
            scale = strength * float(layer.weight.detach().std()) * (fan_in / rank) ** 0.5
            out[f"{prefix}.{name}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen) / fan_in ** 0.5
            out[f"{prefix}.{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=gen) * scale
    return out


def lora_layers(block: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``lora_A`` layers PEFT put inside ``block`` (empty before a LoRA is loaded)."""
    return [m for n, m in block.named_modules() if n.split(".")[-2:-1] == ["lora_A"]]


class Family:
    """A tiny pipeline of one family with its calibration, call kwargs and block graph."""

    def __init__(self, family: str):
        self.name = family
        self.pipe = FAMILIES[family]()
        self.cal: Calibration = default_calibration(self.pipe, ["a red cube", "a blue boat"])
        self.kwargs = dict(CALL_KWARGS[family])
        self.den = denoiser_of(self.pipe)
        self.graph = block_graph(self.den)

    def run(self) -> torch.Tensor:
        """Two images (seeds 1 and 2) at ``STEPS`` steps."""
        return generate(self.pipe, self.cal, [0, 1], seed=1, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                        **self.kwargs)

    def schedule(self, reused: tuple[int, ...] = (0, 1)) -> Schedule:
        """Every odd call reuses the blocks at indices ``reused``; every other block always computes."""
        mask = torch.ones(STEPS, len(self.graph.names))
        mask[1::2, list(reused)] = 0
        blocks = resolve_blocks(self.den, self.graph.names)
        profile = profile_denoiser(self.den, blocks, *capture_denoiser_call(self.pipe, self.cal, **self.kwargs))
        return make_schedule(self.den, type(self.pipe.scheduler).__name__, STEPS, self.graph, profile, mask, cfg=2)
