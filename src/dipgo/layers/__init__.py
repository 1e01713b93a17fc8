"""LAPTOP-Diff: remove whole layers of the denoiser for good, chosen by a one-shot additive criterion,
then (optionally) retrain the smaller denoiser by normalised distillation from the original.

    from dipgo.layers import prune_layers, save_pruned, load_pruned
    result = prune_layers(pipe, ratio=0.5, criterion="output", retrain_steps=500)
    save_pruned(result.pipe, "out/sd-half", result.info())
    pipe = load_pruned("out/sd-half")            # a stock pipeline class; removed layers cost nothing

Parts: ``candidates`` (what can be removed and how), ``data`` (calibration calls, training sets),
``criteria`` (output loss, magnitude, similarity, handcrafted; additivity), ``select`` (knapsack or
greedy), ``distill`` (retraining), ``io`` (folders). The result composes with DiP-GO: search a
schedule on the pruned pipeline as on any other.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from ..errors import DipgoError
from ..models.calibration import Calibration
from ..models.costs import count_params
from ..models.pipelines import capture_denoiser_call, default_calibration, denoiser_of, with_denoiser
from .candidates import Candidate, candidates, remove_layers, total_cost
from .criteria import CRITERIA, handcrafted_order, scores
from .data import CallSet, TrainingSet, capture_calls, teacher_set, with_unconditional
from .io import load_pruned, save_pruned
from .select import Selection, select

__all__ = ["prune_layers", "layer_scores", "LayerPruning", "save_pruned", "load_pruned", "CRITERIA"]


@dataclass
class LayerPruning:
    """What ``prune_layers`` did: the pruned pipeline, the selection and its scores, the retraining."""

    pipe: object
    selection: Selection
    scores: dict
    criterion: str
    by: str
    ratio: float
    params_full: int
    params: int
    macs_full: int
    macs: int
    history: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def info(self) -> dict:
        return {"criterion": self.criterion, "by": self.by, "ratio": self.ratio, "method": self.selection.method,
                "removed_share": round(self.selection.removed, 6), "params_full": self.params_full,
                "macs_full": self.macs_full, "macs": self.macs, "retrain_steps": len(self.history),
                "seconds": self.seconds}


def layer_scores(pipe, criterion: str = "output", calibration: Calibration | None = None, *,
                 n_images: int = 8, num_inference_steps: int = 20, guidance_scale: float | None = None,
                 names: list[str] | None = None, progress: bool = True, call_kwargs: dict | None = None,
                 call: tuple[tuple, dict] | None = None) -> tuple[list[Candidate], dict, CallSet | None]:
    """Candidates, their scores under ``criterion`` (lower = remove first), and the calibration calls used."""
    if criterion not in CRITERIA:
        raise DipgoError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
    calibration = calibration or default_calibration(pipe)
    den = denoiser_of(pipe)
    extra = dict(call_kwargs or {})
    cands = candidates(den, call or capture_denoiser_call(pipe, calibration, **extra), names)
    calls = None
    if criterion in ("output", "similarity"):
        calls = capture_calls(pipe, calibration, n_images, num_inference_steps, guidance_scale, progress=progress,
                              **extra)
    return cands, scores(criterion, den, cands, calls, progress), calls


def prune_layers(pipe, ratio: float, criterion: str = "output", *, by: str = "params", method: str = "knapsack",
                 calibration: Calibration | None = None, retrain_steps: int = 0, feature_kd: str = "normalized",
                 data: TrainingSet | None = None, distill_kwargs: dict | None = None, n_images: int = 8,
                 num_inference_steps: int = 20, guidance_scale: float | None = None, checkpoint=None,
                 progress: bool = True, call_kwargs: dict | None = None,
                 scored: tuple[list[Candidate], dict] | None = None) -> LayerPruning:
    """Remove layers worth ``ratio`` of the denoiser's parameters (``by="macs"``: of its MACs per call).

    The original pipeline is left untouched: the result's pipeline shares its other components and has a
    pruned copy of the denoiser. ``retrain_steps > 0`` retrains that copy by distillation on ``data``
    (default: a set the full model generates on the calibration inputs). ``scored``: candidates and
    scores from :func:`layer_scores` of the same criterion, to skip computing them again.
    """
    if not 0.0 < ratio < 1.0:
        raise DipgoError(f"ratio must be in (0, 1) (the removed share of the denoiser's {by}), got {ratio}")
    if retrain_steps > 0 and "FlowMatch" in type(pipe.scheduler).__name__:
        raise DipgoError(f"retraining uses a DDPM noising process; {type(pipe.scheduler).__name__} is flow matching "
                         "(SD3, Flux), which it does not support yet: use retrain_steps=0 (one-shot)")
    calibration = calibration or default_calibration(pipe)
    extra = dict(call_kwargs or {})
    t0 = time.perf_counter()
    call = capture_denoiser_call(pipe, calibration, **extra)  # one call's inputs: for every cost below
    if scored is None:
        cands, score, _ = layer_scores(pipe, criterion, calibration, n_images=n_images,
                                       num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                       progress=progress, call_kwargs=extra, call=call)
    else:  # candidates and scores computed before (``layer_scores``), e.g. for several ratios
        cands, score = scored
    teacher = denoiser_of(pipe)
    params_full, macs_full = total_cost(teacher, call)
    total = params_full if by == "params" else macs_full
    if criterion == "handcrafted":
        selection = select(cands, score, ratio, total, by, "order", order=handcrafted_order(cands))
    else:
        selection = select(cands, score, ratio, total, by, method)
    seconds = {"criterion": round(time.perf_counter() - t0, 1)}
    student = remove_layers(copy.deepcopy(teacher), selection.names).eval().requires_grad_(True)
    pruned = with_denoiser(pipe, student)
    history: list = []
    if retrain_steps > 0:
        from diffusers import DDPMScheduler

        from .distill import DistillConfig, distill

        t1 = time.perf_counter()
        if data is None:
            data = teacher_set(pipe, calibration, num_inference_steps=num_inference_steps,
                               guidance_scale=guidance_scale, progress=progress, **extra)
        data = with_unconditional(data, pipe, calibration, **extra)
        noise = DDPMScheduler.from_config(pipe.scheduler.config)
        cfg = DistillConfig(steps=retrain_steps, feature_kd=feature_kd, **(distill_kwargs or {}))
        history = distill(student, teacher, data, noise, cfg, checkpoint=checkpoint, progress=progress)
        student.eval()
        seconds["retrain"] = round(time.perf_counter() - t1, 1)
    with torch.no_grad():
        _, macs = total_cost(student, call)
    return LayerPruning(pruned, selection, score, criterion, by, ratio, params_full, count_params(student),
                        macs_full, macs, history, seconds)
