"""Argument types of the ``dipgo`` command line: each parses one value (or a comma-separated list) and checks
its range, so that argparse refuses a bad value (exit status 2, a one-line message naming the option) before
any model is loaded.

The upper ends are there to refuse absurd values (``--steps 1000000000000`` would run for ever) rather
than to limit real use; each is far above what any model or benchmark needs.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


def _show(bound: float, kind: type) -> str:
    return str(int(bound)) if kind is int or float(bound).is_integer() else f"{bound:g}"


@dataclass(frozen=True)
class Number:
    """A number of type ``kind`` (int or float) between ``low`` and ``high``; an open end excludes its bound.
    With ``each``, a comma-separated list of such numbers."""

    kind: type
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    each: bool = False

    def rule(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{what} in {lo}{_show(self.low, self.kind)}, {_show(self.high, self.kind)}{hi}"

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def one(self, text: str):
        try:
            value = self.kind(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.rule()}, got {text!r}") from None
        if not math.isfinite(value) or not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.rule()}, got {text!r}")
        return value

    def __call__(self, text: str):
        if not self.each:
            return self.one(text)
        parts = str(text).split(",")
        if any(not p.strip() for p in parts):
            raise argparse.ArgumentTypeError(f"must be comma-separated values, each {self.rule()}, got {text!r}")
        return [self.one(p) for p in parts]


STEPS = Number(int, 1, 1000)              # num_inference_steps (schedulers train on 1000 timesteps)
SEARCH_STEPS = Number(int, 2, 1000)       # a search needs at least 2 calls
IMAGES = Number(int, 1, 1_000_000)
BATCH = Number(int, 1, 65_536)
RUNS = Number(int, 1, 100_000)            # timed calls, held-out runs, calibration images
ITERATIONS = Number(int, 1, 1_000_000)
SEARCH_ITERATIONS = Number(int, 0, 1_000_000)  # 0: the pipeline runs no gradient search
TRAIN_STEPS = Number(int, 0, 100_000_000)  # optimiser steps; 0: none
SEED = Number(int, 0, 2**32 - 1)
INDEX = Number(int, 0, 1_000_000)         # a condition's index
RATIO = Number(float, 0, 1, low_open=True, high_open=True)
RATIOS = Number(float, 0, 1, low_open=True, high_open=True, each=True)
SHARE = Number(float, 0, 1, high_open=True)   # a share that may be 0 but not 1 (ema, p_uncond)
RAMP = Number(float, 0, 1, low_open=True)     # a share of the training that may be all of it
GUIDANCE = Number(float, 0, 100)
LR = Number(float, 0, 10, low_open=True)
BUDGETS = Number(float, 1, 1000, low_open=True, each=True)  # MACs reduction factors
BASES = Number(int, 2, 1000, each=True)
DECIBELS = Number(float, 0, 200)
RELATIVE = Number(float, 0, 100)
