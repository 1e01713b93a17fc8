"""LAPTOP-Diff's candidate layers with their costs, and temporary removal to measure what a layer matters.

What a candidate is and how a layer is removed for good live in :mod:`dipgo.models.surgery`, which depth
pruning shares; this module adds what only layer pruning needs: each candidate's parameters and MACs per
call (the costs the knapsack weighs), and removing layers for the length of a measurement.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ..errors import DipgoError
from ..models.costs import count_macs, count_params
from ..models.surgery import Candidate, candidate_names, kept_parts, removed_form, swap


def candidates(model: nn.Module, call: tuple[tuple, dict], names: list[str] | None = None) -> list[Candidate]:
    """Candidates with their parameter counts and MACs per call (``call`` = one call's args and kwargs)."""
    found = candidate_names(model, names)
    if not found:
        raise DipgoError(f"{type(model).__name__} has no candidate layers")
    modules = {n: model.get_submodule(n) for n in found}
    counter = count_macs(model, call[0], call[1], scopes=modules)
    kinds = {"ResnetBlock2D": "resnet", "Transformer2DModel": "attention", "Attention": "attention"}
    return [Candidate(n, kinds.get(type(m).__name__, "block" if names is None else "module"),
                      count_params(m) - sum(count_params(k) for k in kept_parts(model, n).values()),
                      counter.by_scope.get(n, 0)) for n, m in modules.items()]


@contextmanager
def removed(model: nn.Module, names: list[str]) -> Iterator[nn.Module]:
    """Temporarily remove ``names`` (to measure what their removal costs), then put them back."""
    saved = {}
    try:
        for n in names:
            saved[n] = swap(model, n, removed_form(model.get_submodule(n), kept_parts(model, n)))
        yield model
    finally:
        for n, module in saved.items():
            swap(model, n, module)
