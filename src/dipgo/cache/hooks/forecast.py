"""Forecasting backup connections: a reused block's value extrapolated from its last computed ones.

A block's cache holds its last few values with the call index each was computed at (a ``History``).
Order 0 returns the newest value, which is DiP-GO's plain reuse. Order ``k`` reads the newest ``k + 1`` values
in one of two forms:

* ``"taylor"`` (the default): TaylorSeer's truncated Taylor series at the newest value, its derivatives taken as
  recursive divided differences (each computed when its newest value arrived) and its ``j``-th term weighted by
  ``gap ** j / j!``;
* ``"polynomial"``: the polynomial of degree ``k`` through the ``k + 1`` values, read at the reusing call.

Both are the same line at order 1. At order 2 the Taylor form's curvature term is ``gap / (gap + spacing)`` of the
polynomial's (a third at one call past values two calls apart), which extrapolates a long gap less wildly.
Until a block has been computed ``k + 1`` times, the highest order its values allow is used.

Call index and timestep give the same forecast wherever the scheduler spaces its timesteps evenly (DDIM,
DPM-Solver and Euler with their default spacing). Values are block outputs, tuples of them, or ``None``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

History = tuple[tuple[int, Any], ...]  # ((call, value), ...), oldest first


def push(history: History | None, call: int, value, order: int) -> History:
    """``history`` with ``(call, value)`` appended, keeping the newest ``order + 1`` entries."""
    kept = history[-order:] if history and order > 0 else ()
    return (*kept, (call, value))


def weights(calls: list[int], at: int) -> list[float]:
    """Lagrange weights: the polynomial through values at ``calls``, read at ``at``, is ``sum(w_i * v_i)``."""
    out = []
    for i, ci in enumerate(calls):
        w = 1.0
        for j, cj in enumerate(calls):
            if j != i:
                w *= (at - cj) / (ci - cj)
        out.append(w)
    return out


def taylor_weights(calls: list[int], at: int) -> list[float]:
    """Weights of the Taylor series at ``calls[-1]`` read at ``at``: its ``j``-th derivative is the divided
    difference of order ``j`` formed recursively as each value arrived (TaylorSeer's update)."""
    n, factors = len(calls), []
    for i in range(n):  # factors[j]: the j-th derivative at point i, as weights over the values
        new = [[float(m == i) for m in range(n)]]
        for j in range(min(len(factors), n - 1)):
            gap = calls[i] - calls[i - 1]
            new.append([(a - b) / gap for a, b in zip(new[j], factors[j], strict=True)])
        factors = new
    k = at - calls[-1]
    return [sum(f[m] * k ** j / math.factorial(j) for j, f in enumerate(factors)) for m in range(n)]


def _combine(ws: list[float], values: list):
    first = values[-1]
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return type(first)(_combine(ws, [v[k] for v in values]) for k in range(len(first)))
    if (len(values) == 2 and abs(ws[0] + ws[1] - 1.0) < 1e-9
            and all(torch.is_tensor(v) and v.is_floating_point() for v in values)):
        # Lagrange weights sum to 1, so the line is one fused kernel: v0 + w1 * (v1 - v0).
        return torch.lerp(values[0], values[1], ws[1])
    out = values[-1] * ws[-1]
    for w, v in zip(ws[:-1], values[:-1], strict=True):
        out = out.add_(v, alpha=w) if torch.is_tensor(out) else out + v * w  # in place: one output buffer
    return out


def forecast(history: History, call: int, order: int, form: str = "taylor"):
    """The value of a block at ``call`` forecast from ``history`` at ``order`` (0: the newest value), in
    ``form`` (see the module docstring)."""
    points = history[-(order + 1):] if order > 0 else history[-1:]
    calls = [c for c, _ in points]
    if len(set(calls)) < len(calls):  # a call seen twice (a re-run): nothing to extrapolate along
        return points[-1][1]
    if len(points) == 1:
        return points[0][1]
    ws = (taylor_weights if form == "taylor" else weights)(calls, call)
    return _combine(ws, [v for _, v in points])
