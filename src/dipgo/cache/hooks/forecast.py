"""Forecasting backup connections: a reused block's value extrapolated from its last computed ones.

A block's cache holds its last few values with the call index each was computed at (a ``History``).
Order 0 returns the newest value, which is DiP-GO's plain reuse. Order ``k`` passes a polynomial of degree
``k`` through the newest ``k + 1`` values and reads it at the reusing call: a finite-difference Taylor step
in call index (a line through two values for order 1, a parabola through three for order 2). Until a block
has been computed ``k + 1`` times, the highest order its values allow is used.

Call index and timestep give the same forecast wherever the scheduler spaces its timesteps evenly (DDIM,
DPM-Solver and Euler with their default spacing). Values are block outputs, tuples of them, or ``None``.
"""

from __future__ import annotations

from typing import Any

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


def _combine(ws: list[float], values: list):
    first = values[-1]
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return type(first)(_combine(ws, [v[k] for v in values]) for k in range(len(first)))
    out = values[-1] * ws[-1]
    for w, v in zip(ws[:-1], values[:-1], strict=True):
        out = out + v * w
    return out


def forecast(history: History, call: int, order: int):
    """The value of a block at ``call`` forecast from ``history`` at ``order`` (0: the newest value)."""
    points = history[-(order + 1):] if order > 0 else history[-1:]
    calls = [c for c, _ in points]
    if len(set(calls)) < len(calls):  # a call seen twice (a re-run): nothing to extrapolate along
        return points[-1][1]
    if len(points) == 1:
        return points[0][1]
    return _combine(weights(calls, call), [v for _, v in points])
