"""One-shot criteria: how much each candidate layer matters, from one look at the full model.

* ``output`` (LAPTOP-Diff): remove the layer alone and measure E||eps_without_layer - eps||^2 over
  calibration calls taken from the full model's own sampling trajectories. Trusted because it is close
  to *additive* (see :func:`additivity`), which turns selection into a knapsack.
* ``magnitude``: the L1 norm of the layer's weights (small = unimportant), a classic baseline.
* ``similarity``: 1 - cosine similarity between what the layer outputs and what its removed form would
  output (its input, or its shortcut), over the same calls: a layer that barely changes its input is
  cheap to drop.
* ``handcrafted``: no scores; BK-SDM's fixed order (see :func:`handcrafted_order`).

Every criterion returns ``{layer: score}``; lower means "remove first".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..errors import DipgoError
from ..models.data import CallSet, output_of
from ..models.surgery import Candidate, removed_form
from .candidates import removed

CRITERIA = ("output", "magnitude", "similarity", "handcrafted")


def output_loss(model: torch.nn.Module, calls: CallSet, names: list[str]) -> float:
    """E||eps(model without ``names``) - eps(full)||^2 over the captured calls."""
    with removed(model, names):
        return calls.mse(model)


def output_scores(model: torch.nn.Module, calls: CallSet, cands: list[Candidate], progress: bool = False) -> dict:
    from tqdm import tqdm

    return {c.name: output_loss(model, calls, [c.name])
            for c in tqdm(cands, desc="output loss per layer", disable=not progress, leave=False)}


def magnitude_scores(model: torch.nn.Module, cands: list[Candidate]) -> dict:
    return {c.name: float(sum(p.detach().abs().sum() for p in model.get_submodule(c.name).parameters()))
            for c in cands}


@torch.no_grad()
def similarity_scores(model: torch.nn.Module, calls: CallSet, cands: list[Candidate]) -> dict:
    """1 - cos(layer output, removed-form output), averaged over calls (per image, flattened)."""
    sums = {c.name: 0.0 for c in cands}
    counts = {c.name: 0 for c in cands}
    handles = []
    for c in cands:
        module = model.get_submodule(c.name)
        bypass = removed_form(module)

        def hook(m, args, kwargs, out, name=c.name, bypass=bypass):
            kwargs = {k: v for k, v in kwargs.items() if k != "return_dict"}
            a = output_of(out) if not isinstance(out, tuple) or len(out) != 2 else out[1]
            skip = bypass(*args, **kwargs)
            b = output_of(skip) if not isinstance(skip, tuple) or len(skip) != 2 else skip[1]
            cos = torch.nn.functional.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1)
            sums[name] += float((1 - cos).sum())
            counts[name] += cos.numel()

        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        for args, kwargs in calls.calls:
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / max(1, counts[n]) for n in sums}


def handcrafted_order(cands: list[Candidate]) -> list[str]:
    """BK-SDM's hand-made order, generalised: the mid block first (BK-SDM drops it whole), then the
    last (resnet, attention) pair of each up stage, then of each down stage, deepest stage first, then
    the remaining pairs the same way. For a transformer, the middle blocks first, outwards."""
    names = [c.name for c in cands]
    if not any(n.startswith(("down_blocks", "up_blocks", "mid_block")) for n in names):
        mid = (len(names) - 1) / 2
        return sorted(names, key=lambda n: (abs(names.index(n) - mid), names.index(n)))

    def pairs(prefix: str) -> list[list[list[str]]]:
        stages: dict[str, dict[int, list[str]]] = {}
        for n in names:
            if n.startswith(prefix):
                stage, _, rest = n[len(prefix) + 1:].partition(".")
                j = int(rest.split(".")[1])
                stages.setdefault(stage, {}).setdefault(j, []).append(n)
        return [[stages[s][j] for j in sorted(stages[s], reverse=True)]
                for s in sorted(stages, key=int, reverse=prefix == "down_blocks")]

    order = [n for n in names if n.startswith("mid_block")]
    up, down = pairs("up_blocks"), pairs("down_blocks")
    for depth in range(max((len(s) for s in up + down), default=0)):
        for stage in up + down:
            if depth < len(stage):
                order += stage[depth]
    return order


def scores(criterion: str, model: torch.nn.Module, cands: list[Candidate], calls: CallSet | None,
           progress: bool = False) -> dict:
    """``{layer: score}`` for one criterion (lower = remove first); ``handcrafted`` gives its order as ranks."""
    if criterion not in CRITERIA:
        raise DipgoError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
    if criterion == "magnitude":
        return magnitude_scores(model, cands)
    if criterion == "handcrafted":
        return {n: float(i) for i, n in enumerate(handcrafted_order(cands))}
    if calls is None:
        raise DipgoError(f"the {criterion} criterion needs calibration calls")
    if criterion == "output":
        return output_scores(model, calls, cands, progress)
    return similarity_scores(model, calls, cands)


# ---------------------------------------------------------------------------------------------- additivity
@dataclass
class Additivity:
    summed: list[float]     # sum of the single-layer losses of each random set
    joint: list[float]      # the loss of removing the set together
    sizes: list[int]
    pearson: float
    spearman: float


def _ranks(x: list[float]) -> list[float]:
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def pearson(a: list[float], b: list[float]) -> float:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    ta, tb = ta - ta.mean(), tb - tb.mean()
    den = float(ta.norm() * tb.norm())
    return float((ta * tb).sum()) / den if den > 0 else float("nan")


def spearman(a: list[float], b: list[float]) -> float:
    return pearson(_ranks(a), _ranks(b))


def additivity(model: torch.nn.Module, calls: CallSet, single: dict, sets: int = 50, seed: int = 0,
               max_size: int | None = None, progress: bool = False) -> Additivity:
    """Joint output loss of ``sets`` random layer sets against the sum of their single-layer losses."""
    from tqdm import tqdm

    rng = random.Random(seed)
    names = list(single)
    max_size = max_size or max(2, len(names) // 2)
    summed, joint, sizes = [], [], []
    for _ in tqdm(range(sets), desc="additivity", disable=not progress, leave=False):
        k = rng.randint(2, max_size)
        chosen = rng.sample(names, k)
        summed.append(sum(single[n] for n in chosen))
        joint.append(output_loss(model, calls, chosen))
        sizes.append(k)
    return Additivity(summed, joint, sizes, pearson(summed, joint), spearman(summed, joint))
