"""Depth pruning in one call: :class:`DepthConfig` says what to do, :func:`prune` does it and hands back a
:class:`DepthPruning`. :func:`depth_scores` computes the choice criterion alone (to print it, or to reuse
it for several ratios); :func:`prune_depth` is the keyword form older code calls.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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
from .forms import PrunedForm
from .io import save_depth
from .supernet import calibrate, depth_candidates, linearise, linearise_scores, merge, set_lam

MODES = ("progressive", "abrupt", "remove")
BY = ("depth", "macs", "params")


def ramp(step: int, steps: int, share: float) -> float:
    """Progressive UPDP's blend factor before ``step`` (0-based): linear from 1/(share*steps) to 1 over the
    first ``share`` of training, then 1 (the rest of training adapts the fully linear block)."""
    return min(1.0, (step + 1) / max(1.0, share * steps))


@dataclass
class DepthConfig(MethodConfig):
    """What :func:`prune` merges (or removes) and how it trains, checked on creation.

    Args:
        ratio: how much to prune, in (0, 1): the share of the candidate blocks (``by="depth"``), or the
            share of the denoiser's MACs per call / parameters that pruning them saves (``by="macs"`` /
            ``"params"``; blocks that save nothing at that measure are not candidates then).
        by: ``depth``, ``macs`` or ``params``, the measure ``ratio`` is a share of.
        mode: ``progressive`` (UPDP: the blend factor ramps from the original block to its linear form
            during training), ``abrupt`` (linear from the first step, as DepthShrinker) or ``remove`` (plain
            block removal, as layer pruning). Without training every mode is one-shot.
        distill: the training during which blocks are linearised (``distill.steps=0``, the default: none).
        ramp_share: the share of the training steps over which ``progressive`` ramps the blend factor to 1;
            the rest adapts the fully linear blocks.
        names: the candidate blocks (None: every block with a pruned form).
        n_images, num_inference_steps, guidance_scale: the calibration runs (and the teacher's training set),
            keywords shared by every method (see :class:`~dipgo.models.distill.MethodConfig`).
    """

    ratio: float
    by: str = "depth"
    mode: str = "progressive"
    ramp_share: float = 0.5
    names: list[str] | None = None

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.mode, MODES, "mode")
        check_choice(self.by, BY, "by")
        what = ("the share of the candidate blocks to prune" if self.by == "depth" else
                f"the share of the denoiser's {'MACs per call' if self.by == 'macs' else 'parameters'} "
                "that pruning saves")
        self.ratio = check_ratio(self.ratio, what)
        if not 0.0 < self.ramp_share <= 1.0:
            raise DipgoError(f"ramp_share must be in (0, 1] (the share of training the ramp takes), got "
                             f"{self.ramp_share}")


@dataclass(kw_only=True)
class DepthPruning(PrunedModel):
    """What :func:`prune` did: the pipeline with merged (or removed) blocks, the choice and its scores."""

    candidates: list[str]
    mode: str

    def describe(self) -> str:
        verb = "removed" if self.mode == "remove" else "merged"
        return f"{verb} {len(self.selection.names)} of {len(self.candidates)} blocks ({self.mode})"

    def info(self) -> dict:
        return {"mode": self.mode, **super().info(), "blocks": self.selection.names,
                "candidates": len(self.candidates), "train_steps": len(self.history)}

    def save(self, folder: str | Path) -> Path:
        """A merged folder (``dipgo-depth.json``), or a layer-removed one for ``mode="remove"``."""
        return (save_pruned if self.mode == "remove" else save_depth)(self.pipe, folder, self.info())


def depth_scores(pipe, calibration: Calibration | None = None, *, names: list[str] | None = None,
                 n_images: int = 8, num_inference_steps: int = 20, guidance_scale: float | None = None,
                 progress: bool = True, call_kwargs: dict | None = None
                 ) -> tuple[list[Candidate], dict, CallSet, tuple]:
    """Candidate blocks with their savings, their linearisation loss (lower = merge first), the
    calibration calls and one call's inputs (for costs)."""
    calibration = calibration or default_calibration(pipe)
    extra = dict(call_kwargs or {})
    den = denoiser_of(pipe)
    blocks = depth_candidates(den, names)
    call = capture_denoiser_call(pipe, calibration, **extra)
    calls = capture_calls(pipe, calibration, n_images, num_inference_steps, guidance_scale, progress=progress,
                          **extra)
    cands, scores = linearise_scores(den, calls, blocks, call, progress)
    return cands, scores, calls, call


def _choose(cands: list[Candidate], scores: dict, config: DepthConfig, params_full: int, macs_full: int
            ) -> Selection:
    """The knapsack's choice among the blocks whose pruning saves something at ``config.by``."""
    by = config.by
    total = {"depth": len(cands), "macs": macs_full, "params": params_full}[by]
    usable = [c for c in cands if getattr(c, by) > 0]
    if not usable:
        raise DipgoError(f"merging none of the {len(cands)} candidate blocks saves {by} "
                         f"({', '.join(sorted({c.kind for c in cands}))}); use by='depth'")
    return select(usable, scores, config.ratio, total, by, "knapsack")


def _student(teacher: nn.Module, names: list[str], config: DepthConfig, calls: CallSet
             ) -> tuple[nn.Module, dict[str, PrunedForm]]:
    """A copy of ``teacher`` with ``names`` removed, or swapped for their calibrated pruned forms (blend
    factor 0 to ramp from, or 1 when abrupt or untrained), ready to train."""
    student = copy.deepcopy(teacher).eval()
    forms: dict[str, PrunedForm] = {}
    if config.mode == "remove":
        remove_layers(student, names)
    else:
        forms = linearise(student, names)
        calibrate(student, forms, calls.calls)
        set_lam(forms, 1.0 if config.mode == "abrupt" or config.distill.steps == 0 else 0.0)
    student.requires_grad_(True)
    return student, forms


def prune(pipe, config: DepthConfig, *, calibration: Calibration | None = None, data: TrainingSet | None = None,
          checkpoint: str | Path | None = None, progress: bool = True, call_kwargs: dict | None = None,
          scored: tuple | None = None) -> DepthPruning:
    """Merge (``mode="remove"``: remove) the denoiser blocks ``config`` asks for, training in between if it
    says so.

    The original pipeline is left untouched. Training distils the pruned copy from the original on
    ``data`` (default: a set the full model generates on the calibration inputs), checkpointed to
    ``checkpoint``, ramping the blend factor over the first ``ramp_share`` of the steps (progressive) or
    starting at 1 (abrupt). ``call_kwargs`` go to every pipeline call. ``scored``: :func:`depth_scores`'s
    result, reused.
    """
    if not isinstance(config, DepthConfig):
        raise DipgoError(f"config must be a DepthConfig, got {type(config).__name__}")
    steps = config.distill.steps
    if steps > 0:
        check_ddpm_noising(pipe, "prune one-shot (distill.steps=0; prune_depth: train_steps=0)")
    calibration = calibration or default_calibration(pipe)
    extra = dict(call_kwargs or {})
    t0 = time.perf_counter()
    if scored is None:
        scored = depth_scores(pipe, calibration, names=config.names, n_images=config.n_images,
                              num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                              progress=progress, call_kwargs=extra)
    cands, scores, calls, call = scored
    teacher = denoiser_of(pipe)
    params_full, macs_full = total_cost(teacher, call)
    selection = _choose(cands, scores, config, params_full, macs_full)
    seconds = {"criterion": round(time.perf_counter() - t0, 1)}
    student, forms = _student(teacher, selection.names, config, calls)
    history: list = []
    if steps > 0:
        t1 = time.perf_counter()
        on_step = ((lambda step: set_lam(forms, ramp(step, steps, config.ramp_share)))
                   if config.mode == "progressive" else None)
        history = retrain(pipe, student, config.distill, calibration, data=data,
                          num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                          checkpoint=checkpoint, progress=progress, on_step=on_step, call_kwargs=extra)
        seconds["train"] = round(time.perf_counter() - t1, 1)
    student.eval()
    if forms:
        set_lam(forms, 1.0)
        merge(student, forms)
    with torch.no_grad():
        _, macs = total_cost(student, call)
    return DepthPruning(pipe=with_denoiser(pipe, student), selection=selection, scores=scores,
                        candidates=[c.name for c in cands], mode=config.mode, by=config.by, ratio=config.ratio,
                        params_full=params_full, params=count_params(student), macs_full=macs_full, macs=macs,
                        history=history, seconds=seconds)


def prune_depth(pipe, ratio: float, *, by: str = "depth", mode: str = "progressive", train_steps: int = 0,
                calibration: Calibration | None = None, data: TrainingSet | None = None,
                feature_kd: str = "normalized", distill_kwargs: dict | None = None, ramp_share: float = 0.5,
                names: list[str] | None = None, n_images: int = 8, num_inference_steps: int = 20,
                guidance_scale: float | None = None, checkpoint=None, progress: bool = True,
                call_kwargs: dict | None = None, scored: tuple | None = None) -> DepthPruning:
    """:func:`prune` with the settings as keywords: ``train_steps``, ``feature_kd`` and ``distill_kwargs``
    make the nested :class:`DistillConfig`, the rest of the settings the :class:`DepthConfig`."""
    distill = DistillConfig(steps=train_steps, feature_kd=feature_kd, **(distill_kwargs or {}))
    config = DepthConfig(ratio, by, mode, ramp_share, names, distill=distill, n_images=n_images,
                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    return prune(pipe, config, calibration=calibration, data=data, checkpoint=checkpoint, progress=progress,
                 call_kwargs=call_kwargs, scored=scored)
