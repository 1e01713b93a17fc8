"""Layer pruning in one call: :class:`LayersConfig` says what to do, :func:`prune` does it and hands back a
:class:`LayerPruning`. :func:`layer_scores` computes the criterion alone (to print it, or to reuse it
for several ratios); :func:`prune_layers` is the keyword form older code calls.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DipgoError
from ..models.calibration import Calibration
from ..models.checks import check_choice, check_ratio
from ..models.costs import count_params
from ..models.data import CallSet, TrainingSet, capture_calls
from ..models.distill import DistillConfig, MethodConfig, check_ddpm_noising, retrain
from ..models.folders import save_pruned
from ..models.pipelines import capture_denoiser_call, default_calibration, denoiser_of, with_denoiser
from ..models.result import PrunedModel
from ..models.select import Selection, select
from ..models.surgery import Candidate, remove_layers, total_cost
from .candidates import candidates
from .criteria import CRITERIA, handcrafted_order, scores

BY = ("params", "macs")
METHODS = ("knapsack", "greedy")


@dataclass
class LayersConfig(MethodConfig):
    """What :func:`prune` removes and how it retrains, checked on creation.

    Args:
        ratio: the share of the denoiser to remove, in (0, 1): of its parameters (``by="params"``) or of
            its MACs per call (``by="macs"``). Larger is faster and smaller, at more quality lost.
        criterion: how each layer's importance is measured: ``output`` (the output loss of removing it
            alone, close to additive, so the knapsack is exact), ``magnitude``, ``similarity``, or
            ``handcrafted`` (BK-SDM's fixed order).
        by: ``params`` or ``macs``, the measure ``ratio`` is a share of.
        method: ``knapsack`` (the best set for additive scores) or ``greedy`` (smallest score per cost).
        distill: the retraining that follows (``distill.steps=0``, the default: one-shot, no retraining).
        n_images, num_inference_steps, guidance_scale: the calibration runs (and the teacher's training set),
            keywords shared by every method (see :class:`~dipgo.models.distill.MethodConfig`).
    """

    ratio: float
    criterion: str = "output"
    by: str = "params"
    method: str = "knapsack"

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.criterion, CRITERIA, "criterion")
        check_choice(self.by, BY, "by")
        check_choice(self.method, METHODS, "selection method")
        measure = "parameters" if self.by == "params" else "MACs per call"
        self.ratio = check_ratio(self.ratio, f"the removed share of the denoiser's {measure}")


@dataclass(kw_only=True)
class LayerPruning(PrunedModel):
    """What :func:`prune` did: the pruned pipeline, the selection and its scores, the retraining."""

    criterion: str

    def describe(self) -> str:
        return f"removed {len(self.selection.names)} layers ({self.selection.method}, {self.criterion})"

    def info(self) -> dict:
        return {"criterion": self.criterion, **super().info(), "method": self.selection.method,
                "removed_share": round(self.selection.removed, 6), "retrain_steps": len(self.history)}

    def save(self, folder: str | Path) -> Path:
        return save_pruned(self.pipe, folder, self.info())


def layer_scores(pipe, criterion: str = "output", calibration: Calibration | None = None, *,
                 n_images: int = 8, num_inference_steps: int = 20, guidance_scale: float | None = None,
                 names: list[str] | None = None, progress: bool = True, call_kwargs: dict | None = None,
                 call: tuple[tuple, dict] | None = None) -> tuple[list[Candidate], dict, CallSet | None]:
    """Candidates, their scores under ``criterion`` (lower = remove first), and the calibration calls used."""
    check_choice(criterion, CRITERIA, "criterion")
    calibration = calibration or default_calibration(pipe)
    den = denoiser_of(pipe)
    extra = dict(call_kwargs or {})
    cands = candidates(den, call or capture_denoiser_call(pipe, calibration, **extra), names)
    calls = None
    if criterion in ("output", "similarity"):
        calls = capture_calls(pipe, calibration, n_images, num_inference_steps, guidance_scale, progress=progress,
                              **extra)
    return cands, scores(criterion, den, cands, calls, progress), calls


def _choose(cands: list[Candidate], score: dict, config: LayersConfig, total: int) -> Selection:
    if config.criterion == "handcrafted":
        return select(cands, score, config.ratio, total, config.by, "order", order=handcrafted_order(cands))
    return select(cands, score, config.ratio, total, config.by, config.method)


def prune(pipe, config: LayersConfig, *, calibration: Calibration | None = None, data: TrainingSet | None = None,
          checkpoint: str | Path | None = None, progress: bool = True, call_kwargs: dict | None = None,
          scored: tuple[list[Candidate], dict] | None = None) -> LayerPruning:
    """Remove the layers ``config`` asks for from ``pipe``'s denoiser, then retrain if it says so.

    The original pipeline is left untouched: the result's pipeline shares its other components and has a
    pruned copy of the denoiser. Retraining distils that copy on ``data`` (default: a set the full model
    generates on the calibration inputs), checkpointed to ``checkpoint``. ``call_kwargs`` go to every
    pipeline call (e.g. ``height``/``width``). ``scored``: candidates and scores from :func:`layer_scores`
    of the same criterion, to skip computing them again (e.g. for several ratios).
    """
    if not isinstance(config, LayersConfig):
        raise DipgoError(f"config must be a LayersConfig, got {type(config).__name__}")
    if config.distill.steps > 0:
        check_ddpm_noising(pipe, "prune one-shot (distill.steps=0; prune_layers: retrain_steps=0)")
    calibration = calibration or default_calibration(pipe)
    extra = dict(call_kwargs or {})
    t0 = time.perf_counter()
    call = capture_denoiser_call(pipe, calibration, **extra)  # one call's inputs: for every cost below
    if scored is None:
        cands, score, _ = layer_scores(pipe, config.criterion, calibration, n_images=config.n_images,
                                       num_inference_steps=config.num_inference_steps,
                                       guidance_scale=config.guidance_scale, progress=progress, call_kwargs=extra,
                                       call=call)
    else:
        cands, score = scored
    teacher = denoiser_of(pipe)
    params_full, macs_full = total_cost(teacher, call)
    selection = _choose(cands, score, config, params_full if config.by == "params" else macs_full)
    seconds = {"criterion": round(time.perf_counter() - t0, 1)}
    student = remove_layers(copy.deepcopy(teacher), selection.names).eval().requires_grad_(True)
    pruned = with_denoiser(pipe, student)
    history: list = []
    if config.distill.steps > 0:
        t1 = time.perf_counter()
        history = retrain(pipe, student, config.distill, calibration, data=data,
                          num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                          checkpoint=checkpoint, progress=progress, call_kwargs=extra)
        student.eval()
        seconds["retrain"] = round(time.perf_counter() - t1, 1)
    with torch.no_grad():
        _, macs = total_cost(student, call)
    return LayerPruning(pipe=pruned, selection=selection, scores=score, criterion=config.criterion, by=config.by,
                        ratio=config.ratio, params_full=params_full, params=count_params(student),
                        macs_full=macs_full, macs=macs, history=history, seconds=seconds)


def prune_layers(pipe, ratio: float, criterion: str = "output", *, by: str = "params", method: str = "knapsack",
                 calibration: Calibration | None = None, retrain_steps: int = 0, feature_kd: str = "normalized",
                 data: TrainingSet | None = None, distill_kwargs: dict | None = None, n_images: int = 8,
                 num_inference_steps: int = 20, guidance_scale: float | None = None, checkpoint=None,
                 progress: bool = True, call_kwargs: dict | None = None,
                 scored: tuple[list[Candidate], dict] | None = None) -> LayerPruning:
    """:func:`prune` with the settings as keywords: ``retrain_steps``, ``feature_kd`` and ``distill_kwargs``
    make the nested :class:`DistillConfig`, the rest of the settings the :class:`LayersConfig`."""
    distill = DistillConfig(steps=retrain_steps, feature_kd=feature_kd, **(distill_kwargs or {}))
    config = LayersConfig(ratio, criterion, by, method, distill=distill, n_images=n_images,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    return prune(pipe, config, calibration=calibration, data=data, checkpoint=checkpoint, progress=progress,
                 call_kwargs=call_kwargs, scored=scored)
