"""The UPDP supernet: chosen blocks of a denoiser swapped for their pruned forms (sharing weights), their
frozen norms calibrated, a blend factor ``lam`` to ramp, and the final merge into single ops.

Which blocks: every block with a pruned form, in execution order (a UNet's resnets, a transformer's
blocks), or the names you give. Which of them to linearise for a budget: :func:`linearise_scores`, the
training-free criterion (the output loss of linearising each block alone, abruptly), then the same exact
knapsack as layer pruning (:func:`dipgo.models.select.select`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from tqdm import tqdm

from ..errors import DipgoError
from ..models.costs import count_macs, count_params
from ..models.data import CallSet
from ..models.surgery import Candidate, candidate_names, swap
from .forms import PrunedForm, has_form, pruned_form


def depth_candidates(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Blocks of ``model`` that have a pruned form, in execution order (``names``: exactly these)."""
    if names is not None:
        found = candidate_names(model, names)
        for n in found:
            pruned_form(model.get_submodule(n))  # raises with the type's name if it has no form
        return found
    try:
        found = [n for n in candidate_names(model) if has_form(model.get_submodule(n))]
    except DipgoError:  # not a UNet/transformer: the outermost modules that have a form
        found = []
        for n, m in model.named_modules():
            if n and has_form(m) and not any(n.startswith(f + ".") for f in found):
                found.append(n)
    if not found:
        kinds = sorted({type(model.get_submodule(n)).__name__ for n in _safe_names(model)})
        raise DipgoError(f"{type(model).__name__} has no block with a pruned form (its blocks: {kinds or 'none'}); "
                         "dipgo linearises ResnetBlock2D, BasicTransformerBlock and timm-style ViT / ConvNeXt / "
                         "inverted-residual blocks")
    return found


def _safe_names(model: nn.Module) -> list[str]:
    try:
        return candidate_names(model)
    except DipgoError:
        return []


def linearise(model: nn.Module, names: list[str]) -> dict[str, PrunedForm]:
    """Swap ``names`` for their pruned forms (in place, lam = 0: outputs unchanged). Recorded on the model
    as ``_dipgo_linearised``."""
    forms = {}
    for n in names:
        module = model.get_submodule(n)
        if isinstance(module, PrunedForm):
            raise DipgoError(f"block {n} is already linearised")
        forms[n] = pruned_form(module)
        swap(model, n, forms[n])
    model._dipgo_linearised = sorted(set(getattr(model, "_dipgo_linearised", [])) | set(names))
    return forms


def set_lam(forms: dict[str, PrunedForm], lam: float) -> None:
    for form in forms.values():
        form.lam = float(min(1.0, max(0.0, lam)))


@torch.no_grad()
def calibrate(model: nn.Module, forms: dict[str, PrunedForm], calls: list[tuple[tuple, dict]]) -> None:
    """Measure every frozen norm's statistics on ``calls`` (run at lam = 0, i.e. by the original model)."""
    saved = {n: f.lam for n, f in forms.items()}
    set_lam(forms, 0.0)
    for f in forms.values():
        f.observing = True
    try:
        for args, kwargs in calls:
            model(*args, **kwargs)
    finally:
        for f in forms.values():
            f.observing = False
    for n, f in forms.items():
        for norm in f.norms():
            norm.finish()
        f.lam = saved[n]


@torch.no_grad()
def merge(model: nn.Module, forms: dict[str, PrunedForm]) -> dict[str, dict]:
    """Replace every (fully linear) pruned form by its merged op, in place. Returns and records
    ``_dipgo_merged = {name: spec}`` (what ``load_pruned`` needs to rebuild the architecture)."""
    specs = {}
    for n, form in forms.items():
        merged = form.merge()
        swap(model, n, merged)
        specs[n] = merged.spec()
    model._dipgo_merged = {**getattr(model, "_dipgo_merged", {}), **specs}
    model._dipgo_linearised = [n for n in getattr(model, "_dipgo_linearised", []) if n not in specs]
    return specs


def linearise_scores(model: nn.Module, calls: CallSet, names: list[str], call: tuple[tuple, dict],
                     progress: bool = False) -> tuple[list[Candidate], dict[str, float]]:
    """Candidates (with what merging each one saves: params, MACs per call, one unit of depth) and their
    score: E||eps(block linearised alone, abruptly) - eps||^2 over the calibration calls. ``model`` is
    left untouched (a copy is linearised)."""
    net = copy.deepcopy(model).eval()
    forms = linearise(net, names)
    calibrate(net, forms, calls.calls)
    before = count_macs(net, call[0], call[1], scopes=dict(forms))
    params_before = {n: count_params(model.get_submodule(n)) for n in names}
    scores = {}
    for n in tqdm(names, desc="output loss of linearising each block", disable=not progress, leave=False):
        forms[n].lam = 1.0
        scores[n] = calls.mse(net)
        forms[n].lam = 0.0
    set_lam(forms, 1.0)
    merge(net, forms)
    merged = {n: net.get_submodule(n) for n in names}
    after = count_macs(net, call[0], call[1], scopes=merged)
    return [Candidate(n, forms[n].kind, params_before[n] - count_params(merged[n]),
                      before.by_scope.get(n, 0) - after.by_scope.get(n, 0), 1) for n in names], scores
