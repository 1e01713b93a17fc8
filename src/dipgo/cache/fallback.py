"""Never worse than the uniform schedule of the same budget: a searched schedule is checked against the
uniform one (full calls evenly spread, every block reused in between: fewer-steps on a UNet, FORA-style
residual reuse on a transformer) on a few held-out generations, and the better one is kept.

The search space contains the uniform schedule, so a search that ends below it has failed; this makes
the curve dominate by construction at the price of a few sampling runs. The held-out seeds are not the
ones benchmarks evaluate on (those start at 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.calibration import Calibration
from ..models.pipelines import generate
from ..models.similarity import psnr
from .apply import apply, remove
from .postprocess import schedule_at_ratio, schedule_from_mask
from .schedule import Schedule
from .search import uniform_mask

HELD_OUT_SEED = 1_000_000


@dataclass
class Choice:
    schedule: Schedule
    picked: str                  # "search" or "uniform"
    psnr: dict[str, float]       # held-out PSNR against the full model, per candidate


def uniform_schedule(result, ratio: float, max_macs: float | None = None) -> Schedule | None:
    """The uniform (evenly spread full calls) schedule whose MACs ratio is closest to ``ratio``, among
    those costing at most ``max_macs``; None if none does."""
    calls, blocks = result.scores.shape
    m = result.meta
    best = None
    for keep in range(1, calls + 1):
        mask = uniform_mask(calls, blocks, 1 - keep / calls)
        s = schedule_from_mask(mask, result.graph, result.profile, model_class=m["model_class"],
                               config_hash=m["config_hash"], scheduler=m["scheduler"],
                               num_inference_steps=result.config.num_inference_steps, cfg=m.get("cfg", 1),
                               requested_ratio=ratio, meta={"method": "uniform fallback"})
        if max_macs is not None and s.macs > max_macs:
            continue
        if best is None or abs(s.achieved_ratio - ratio) < abs(best.achieved_ratio - ratio):
            best = s
    return best


def schedule_with_fallback(pipe, result, ratio: float, calibration: Calibration, n: int = 8,
                           guidance_scale: float | None = None) -> Choice:
    """The searched schedule at ``ratio``, or the uniform one if it matches the full model better (mean
    PSNR over ``n`` held-out images) at no more MACs."""
    steps = result.config.num_inference_steps
    conditions = calibration.cycle(n)

    def images() -> torch.Tensor:
        return generate(pipe, calibration, conditions, seed=HELD_OUT_SEED, num_inference_steps=steps,
                        guidance_scale=guidance_scale, batch_size=n)

    with torch.no_grad():
        full = images()
        searched = schedule_at_ratio(result, ratio)
        candidates = {"search": searched}
        uniform = uniform_schedule(result, ratio, max_macs=searched.macs)  # only a fallback that costs no more
        if uniform is not None:
            candidates["uniform"] = uniform
        scores = {}
        for name, s in candidates.items():
            apply(pipe, s)
            try:
                scores[name] = float(psnr(images(), full, cap=100.0).mean())
            finally:
                remove(pipe)
    picked = max(scores, key=lambda k: (scores[k], k == "search"))
    chosen = candidates[picked]
    chosen.meta = dict(chosen.meta, fallback={"picked": picked, "held_out_psnr": scores, "n": n})
    return Choice(chosen, picked, scores)
