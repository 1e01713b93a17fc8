"""A tiny family pipeline with hand-made schedules of any step count, for tests of how a schedule runs
(compiled, in half precision) rather than of how it is searched."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from families import CALL_KWARGS, FAMILIES
from helpers import make_schedule

from dipgo import Calibration, Schedule
from dipgo.models.adapters import BlockGraph, block_graph, effective_keep, resolve_blocks
from dipgo.models.costs import CostProfile, profile_denoiser
from dipgo.models.pipelines import capture_denoiser_call, default_calibration, denoiser_of, generate

GUIDANCE = 2.0  # classifier-free guidance on: every denoiser call has the cond and uncond batch
CONDITIONS = {"dit": (None, [3, 17]), "sd": (["a red cube", "a boat"], None)}


@dataclass
class Tiny:
    family: str
    pipe: object
    calibration: Calibration
    extra: dict
    graph: BlockGraph
    profile: CostProfile

    @classmethod
    def build(cls, family: str, dtype: torch.dtype = torch.float32) -> Tiny:
        pipe = FAMILIES[family]()
        if dtype != torch.float32:
            pipe.to(dtype)
        prompts, labels = CONDITIONS.get(family, (None, None))
        cal, extra = default_calibration(pipe, prompts, labels), dict(CALL_KWARGS[family])
        den = denoiser_of(pipe)
        graph = block_graph(den)
        profile = profile_denoiser(den, resolve_blocks(den, graph.names), *capture_denoiser_call(pipe, cal, **extra))
        return cls(family, pipe, cal, extra, graph, profile)

    def schedule(self, steps: int) -> Schedule:
        """Odd calls reuse the first half of the blocks (after the dependency cascade); even calls compute all."""
        mask = torch.ones(steps, len(self.graph.names))
        mask[1::2, :max(1, len(self.graph.names) // 2)] = 0
        den = denoiser_of(self.pipe)
        return make_schedule(den, type(self.pipe.scheduler).__name__, steps, self.graph, self.profile,
                             effective_keep(mask, self.graph), cfg=2)

    def images(self, steps: int, conditions=(0, 1), **kw) -> torch.Tensor:
        return generate(self.pipe, self.calibration, list(conditions), seed=5, num_inference_steps=steps,
                        guidance_scale=GUIDANCE, **self.extra, **kw)
