"""The public entry points: ``prune`` learns a schedule, ``apply`` / ``remove`` / ``summary`` use one.

Three ways to prune::

    import dipgo
    # 1. a diffusers pipeline, calibrated on your prompts (or class labels; or nothing if unconditional)
    schedule = dipgo.prune(pipe, ratio=0.8, num_inference_steps=50, prompts=my_prompts)
    # 2. an unconditional pipeline (DDPMPipeline, DDIMPipeline): no calibration inputs at all
    schedule = dipgo.prune(ddpm_pipe, ratio=0.5, num_inference_steps=50)
    # 3. your own model and sampling loop: sample_fn(generators) -> images, calling `module` once per step
    schedule = dipgo.prune(sample_fn, denoiser=module, blocks=["down.0", "mid", "up.0"], ratio=0.6,
                           num_inference_steps=20)

    dipgo.apply(pipe, schedule)            # (or apply(module, schedule)) skipped blocks now do no work at all
    print(dipgo.summary(pipe))
    dipgo.remove(pipe)                     # back to the full model
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .cache.apply import apply, generation, is_applied, remove, summary
from .cache.compile import compile_blocks, refuse_compiled
from .cache.pipeline import PruneConfig, prune_schedules
from .cache.schedule import Schedule
from .errors import DipgoError
from .models.pipelines import default_calibration

__all__ = ["apply", "remove", "is_applied", "summary", "prune", "PruneConfig", "generation", "compile_blocks"]


def prune(target, ratio: float | Sequence[float] = 0.8, num_inference_steps: int = 50, *,
          denoiser: torch.nn.Module | None = None, blocks: list[str] | None = None,
          prompts: Sequence[str] | None = None, class_labels: Sequence[int] | None = None,
          guidance_scale: float | None = None, call_kwargs: dict | None = None, effort: str = "default",
          config: PruneConfig | None = None, checkpoint: str | Path | None = None, progress: bool = True,
          **search_kwargs) -> Schedule | list[Schedule]:
    """Learn a skip schedule and return it at ``ratio`` (a list of schedules for a list of ratios, which
    share one search). Runs the whole pruning pipeline (:mod:`dipgo.cache.pipeline`): the DiP-GO search,
    a held-out selection among it and the simple schedules of the same budget, a refinement of the best,
    and a comparison with fewer steps at the same MACs, recorded in ``schedule.meta["pipeline"]``.

    ``target`` is a diffusers pipeline (its own ``__call__`` runs, with its current scheduler), or a
    function ``sample_fn(generators) -> images (N, C, H, W) in [0, 1]`` running your own loop, together
    with ``denoiser=`` (the module it calls once per step) and ``blocks=`` (its submodules to gate).
    ``prompts`` / ``class_labels`` are the calibration inputs (a text model given none uses a generic
    prompt set). ``call_kwargs`` go to every pipeline call (e.g. ``height``/``width``). ``effort``
    (``quick``, ``default``, ``thorough``) sets the cost of every stage; ``config`` (a
    :class:`~dipgo.cache.pipeline.PruneConfig`) replaces ``ratio``, ``num_inference_steps``,
    ``guidance_scale``, ``effort`` and the search settings given as further keywords.
    """
    refuse_compiled(target, "dipgo.prune", denoiser)
    if config is None:
        config = _config(ratio, num_inference_steps, guidance_scale, effort, search_kwargs)
    elif search_kwargs:
        raise DipgoError(f"give the search settings {sorted(search_kwargs)} inside config=PruneConfig(...)")
    calibration = None
    if prompts is not None or class_labels is not None:
        if denoiser is not None or not hasattr(target, "scheduler"):
            raise DipgoError("a sampling function takes no prompts or class_labels: condition inside sample_fn")
    if hasattr(target, "scheduler") and denoiser is None:
        calibration = default_calibration(target, prompts, class_labels)
    pruned = prune_schedules(target, config, denoiser=denoiser, blocks=blocks, calibration=calibration,
                             call_kwargs=call_kwargs, checkpoint=checkpoint, progress=progress)
    schedules = [p.schedule for p in pruned]
    return schedules if isinstance(config.ratio, (list, tuple)) else schedules[0]


def _config(ratio, steps: int, guidance_scale, effort: str, search_kwargs: dict) -> PruneConfig:
    kw = dict(search_kwargs)
    top = {k: kw.pop(k) for k in ("iterations", "evaluations", "held_out", "seed", "forecast") if k in kw}
    return PruneConfig(ratio=ratio, num_inference_steps=steps, guidance_scale=guidance_scale, effort=effort,
                       search=kw, **top)
