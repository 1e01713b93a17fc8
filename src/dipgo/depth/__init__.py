"""UPDP: progressive depth pruning. Chosen blocks of the denoiser are made linear gradually (activations
and norms blended towards the identity / a frozen BatchNorm while the model is distilled from the
original), then merged by reparameterisation into single convs or linear maps.

    from dipgo.depth import prune_depth, save_depth
    result = prune_depth(pipe, ratio=0.5, train_steps=600)     # half of the candidate blocks, progressive
    save_depth(result.pipe, "out/dit-depth", result.info())
    pipe = dipgo.load_pruned("out/dit-depth")                   # stock pipeline class, merged blocks

Stages (UPDP's four): the supernet (``supernet.linearise``: every candidate block holds its original and
its pruned form, sharing weights), the subnet choice (``supernet.linearise_scores`` + knapsack), the
progressive training (``layers.distill`` with a ramp of ``lam``), the merge (``supernet.merge``).
``mode="abrupt"`` (DepthShrinker-style: linear from the first step) and ``mode="remove"`` (plain block
removal, as in layer pruning) are the baselines, trained the same way. Measured on the zoo's DiT
(``benchmarks/results/depth``): the ramp helps at short budgets (600 steps: better FID at every point),
while with 3,000 steps and the unconditional branch taught abrupt is level or up to 0.7 dB better in PSNR,
because the final linear form trains for every step.

Ratios: ``by="depth"`` (default) is the share of the candidate blocks merged; ``by="macs"`` / ``"params"``
the share of the denoiser's MACs per call / parameters that merging saves (blocks that save nothing at
that measure, such as UNet resnets for MACs, are not candidates then).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from ..errors import DipgoError
from ..layers.candidates import Candidate, remove_layers, total_cost
from ..layers.data import CallSet, TrainingSet, capture_calls, teacher_set, with_unconditional
from ..layers.select import Selection, select
from ..models.calibration import Calibration
from ..models.costs import count_params
from ..models.pipelines import capture_denoiser_call, default_calibration, denoiser_of, with_denoiser
from .forms import FORMS, pruned_form, register_form
from .io import load_pruned, save_depth
from .supernet import calibrate, depth_candidates, linearise, linearise_scores, merge, set_lam

__all__ = ["prune_depth", "depth_scores", "DepthPruning", "save_depth", "load_pruned", "register_form",
           "pruned_form", "FORMS", "MODES", "ramp"]

MODES = ("progressive", "abrupt", "remove")
BY = ("depth", "macs", "params")


def ramp(step: int, steps: int, share: float) -> float:
    """Progressive UPDP's blend factor before ``step`` (0-based): linear from 1/(share*steps) to 1 over the
    first ``share`` of training, then 1 (the rest of training adapts the fully linear block)."""
    return min(1.0, (step + 1) / max(1.0, share * steps))


@dataclass
class DepthPruning:
    """What ``prune_depth`` did: the pipeline with merged (or removed) blocks, the choice and its scores."""

    pipe: object
    selection: Selection
    scores: dict
    candidates: list[str]
    mode: str
    by: str
    ratio: float
    params_full: int
    params: int
    macs_full: int
    macs: int
    history: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def info(self) -> dict:
        return {"mode": self.mode, "by": self.by, "ratio": self.ratio, "blocks": self.selection.names,
                "candidates": len(self.candidates), "params_full": self.params_full, "params": self.params,
                "macs_full": self.macs_full, "macs": self.macs, "train_steps": len(self.history),
                "seconds": self.seconds}


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


def prune_depth(pipe, ratio: float, *, by: str = "depth", mode: str = "progressive", train_steps: int = 0,
                calibration: Calibration | None = None, data: TrainingSet | None = None,
                feature_kd: str = "normalized", distill_kwargs: dict | None = None, ramp_share: float = 0.5,
                names: list[str] | None = None, n_images: int = 8, num_inference_steps: int = 20,
                guidance_scale: float | None = None, checkpoint=None, progress: bool = True,
                call_kwargs: dict | None = None, scored: tuple | None = None) -> DepthPruning:
    """Merge (``mode="remove"``: remove) the denoiser blocks worth ``ratio`` of its depth (or MACs, params).

    The original pipeline is left untouched. ``train_steps > 0`` distils the pruned copy from the original
    on ``data`` (default: a set the full model generates on the calibration inputs), ramping the blend
    factor over the first ``ramp_share`` of the steps (progressive) or starting at 1 (abrupt). With
    ``train_steps=0`` every mode is one-shot. ``scored``: :func:`depth_scores`'s result, reused.
    """
    if not 0.0 < ratio < 1.0:
        raise DipgoError(f"ratio must be in (0, 1) (the share of the denoiser's {by} to prune), got {ratio}")
    if mode not in MODES:
        raise DipgoError(f"unknown mode {mode!r}; choose one of {MODES}")
    if by not in BY:
        raise DipgoError(f"by must be one of {BY}, got {by!r}")
    if not 0.0 < ramp_share <= 1.0:
        raise DipgoError(f"ramp_share must be in (0, 1], got {ramp_share}")
    if train_steps > 0 and "FlowMatch" in type(pipe.scheduler).__name__:
        raise DipgoError(f"training uses a DDPM noising process; {type(pipe.scheduler).__name__} is flow matching "
                         "(SD3, Flux), which it does not support yet: use train_steps=0")
    calibration = calibration or default_calibration(pipe)
    extra = dict(call_kwargs or {})
    t0 = time.perf_counter()
    if scored is None:
        scored = depth_scores(pipe, calibration, names=names, n_images=n_images,
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              progress=progress, call_kwargs=extra)
    cands, scores, calls, call = scored
    teacher = denoiser_of(pipe)
    params_full, macs_full = total_cost(teacher, call)
    total = {"depth": len(cands), "macs": macs_full, "params": params_full}[by]
    usable = [c for c in cands if getattr(c, by) > 0]
    if not usable:
        raise DipgoError(f"merging none of the {len(cands)} candidate blocks saves {by} "
                         f"({', '.join(sorted({c.kind for c in cands}))}); use by='depth'")
    selection = select(usable, scores, ratio, total, by, "knapsack")
    seconds = {"criterion": round(time.perf_counter() - t0, 1)}

    student = copy.deepcopy(teacher).eval()
    forms = {}
    if mode == "remove":
        remove_layers(student, selection.names)
    else:
        forms = linearise(student, selection.names)
        calibrate(student, forms, calls.calls)
        set_lam(forms, 1.0 if mode == "abrupt" or train_steps == 0 else 0.0)
    student.requires_grad_(True)
    history: list = []
    if train_steps > 0:
        from diffusers import DDPMScheduler

        from ..layers.distill import DistillConfig, distill

        t1 = time.perf_counter()
        if data is None:
            data = teacher_set(pipe, calibration, num_inference_steps=num_inference_steps,
                               guidance_scale=guidance_scale, progress=progress, **extra)
        data = with_unconditional(data, pipe, calibration, **extra)
        on_step = (lambda step: set_lam(forms, ramp(step, train_steps, ramp_share))) if mode == "progressive" else None
        cfg = DistillConfig(steps=train_steps, feature_kd=feature_kd, **(distill_kwargs or {}))
        history = distill(student, teacher, data, DDPMScheduler.from_config(pipe.scheduler.config), cfg,
                          checkpoint=checkpoint, progress=progress, on_step=on_step)
        seconds["train"] = round(time.perf_counter() - t1, 1)
    student.eval()
    if forms:
        set_lam(forms, 1.0)
        merge(student, forms)
    with torch.no_grad():
        _, macs = total_cost(student, call)
    return DepthPruning(with_denoiser(pipe, student), selection, scores, [c.name for c in cands], mode, by, ratio,
                        params_full, count_params(student), macs_full, macs, history, seconds)
