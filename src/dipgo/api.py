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

from .cache.apply import apply, is_applied, remove, summary
from .cache.postprocess import schedule_at_ratio
from .cache.schedule import Schedule
from .errors import DipgoError
from .models.pipelines import default_calibration

__all__ = ["apply", "remove", "is_applied", "summary", "prune"]


def _ratios(ratio: float | Sequence[float]) -> list[float]:
    ratios = [float(r) for r in ratio] if isinstance(ratio, (list, tuple)) else [float(ratio)]
    if not ratios:
        raise DipgoError("give at least one ratio")
    for r in ratios:
        if not 0.0 < r < 1.0:
            raise DipgoError(f"ratio must be in (0, 1) (the pruned share of MACs), got {r}")
    return ratios


def prune(target, ratio: float | Sequence[float] = 0.8, num_inference_steps: int = 50, *,
          denoiser: torch.nn.Module | None = None, blocks: list[str] | None = None,
          prompts: Sequence[str] | None = None, class_labels: Sequence[int] | None = None,
          guidance_scale: float | None = None, call_kwargs: dict | None = None,
          checkpoint: str | Path | None = None, progress: bool = True, **search_kwargs) -> Schedule | list[Schedule]:
    """Learn a skip schedule with DiP-GO and return it at ``ratio`` (a list of schedules for a list of ratios:
    one search over the range of budgets, whose scores are trained to be cut at any of them).

    ``target`` is a diffusers pipeline (its own ``__call__`` runs, with its current scheduler), or a
    function ``sample_fn(generators) -> images (N, C, H, W) in [0, 1]`` running your own loop, together
    with ``denoiser=`` (the module it calls once per step) and ``blocks=`` (its submodules to gate).
    ``prompts`` / ``class_labels`` are the calibration inputs (a text model given none uses a generic
    prompt set). ``call_kwargs`` go to every pipeline call (e.g. ``height``/``width``).
    """
    from .cache.driver import FunctionSampler
    from .cache.search import Search, SearchConfig

    ratios = _ratios(ratio)
    if len(set(ratios)) > 1:  # one search for the whole range of budgets (SearchConfig.ratios)
        search_kwargs.setdefault("ratios", (min(ratios), max(ratios)))
    config = SearchConfig(ratio=max(ratios), num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          **search_kwargs)
    if denoiser is not None or (callable(target) and not hasattr(target, "scheduler")):
        if isinstance(target, torch.nn.Module) and denoiser is None:
            raise DipgoError("dipgo.prune got a bare module: pass your sampling function and the module, "
                             "dipgo.prune(sample_fn, denoiser=module, blocks=[...], ...)")
        if denoiser is None:
            raise DipgoError("with a sampling function, pass the module it calls: denoiser=module")
        if prompts is not None or class_labels is not None:
            raise DipgoError("a sampling function takes no prompts or class_labels: condition inside sample_fn")
        sampler = FunctionSampler(target, denoiser, num_inference_steps)
        search = Search(sampler, config, checkpoint_path=checkpoint, blocks=blocks)
    else:
        calibration = default_calibration(target, prompts, class_labels)
        search = Search(target, config, checkpoint_path=checkpoint, blocks=blocks, calibration=calibration,
                        call_kwargs=call_kwargs)
    result = search.run(progress=progress)
    schedules = [schedule_at_ratio(result, r) for r in ratios]
    return schedules if isinstance(ratio, (list, tuple)) else schedules[0]
