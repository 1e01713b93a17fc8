"""Held-out generations: the images that selection and refinement judge schedules on.

Every judgement runs the user's own sampling code (a pipeline's ``__call__`` or a custom loop, through
the samplers of :mod:`dipgo.cache.driver`) on ``n`` conditions with seeds from :data:`HELD_OUT_SEED`
on, which evaluation never uses (benchmarks and ``dipgo eval`` seed from 0). A schedule's score is the
mean PSNR of its images against the full model's images from the same seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import DipgoError
from ..fileio import atomic_path
from ..models.similarity import psnr
from .apply import apply, remove
from .schedule import Schedule

HELD_OUT_SEED = 1_000_000
# Two full-model runs with the same seeds must agree this closely, or a held-out comparison means nothing.
DETERMINISM_TOL = 1e-4


def target_of(sampler):
    """What ``dipgo.apply`` attaches to for this sampler: the pipeline, or the bare denoiser."""
    pipe = getattr(sampler, "pipe", None)
    return sampler.denoiser if pipe is None else pipe


def _generation_start(sampler) -> None:
    """Mark a new generation on the attached denoiser, whatever the loop's direction of time."""
    att = getattr(sampler.denoiser, "_dipgo_attachment", None)
    if att is not None:
        att.state.reset()
        att.state.new_generation = True


def held_out_images(sampler, n: int, seed: int = HELD_OUT_SEED) -> torch.Tensor:
    """``n`` images from ``sampler`` (conditions in turn, one seed per image), without gradients."""
    conditions = sampler.calibration.cycle(n)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    _generation_start(sampler)
    with torch.no_grad():
        return sampler(conditions, generators).detach().float().cpu()


def check_seeded(sampler, full: torch.Tensor, n: int) -> None:
    """Refuse a sampler whose images do not follow its generators: a held-out comparison needs the same
    images for the same seeds."""
    again = held_out_images(sampler, n)
    diff = float((again - full).abs().max())
    if diff > DETERMINISM_TOL:
        what = "sample_fn" if getattr(sampler, "pipe", None) is None else type(sampler.pipe).__name__
        raise DipgoError(f"{what} gave different images for the same generators (max difference {diff:.3g}): it "
                         "must draw all its randomness from the generators it is given (e.g. torch.randn(..., "
                         "generator=g)); a held-out comparison of schedules means nothing otherwise")


def held_out_psnr(sampler, schedule: Schedule, full: torch.Tensor) -> float:
    """Mean PSNR (dB, capped at 100) of ``schedule``'s held-out images against ``full``."""
    apply(target_of(sampler), schedule)
    try:
        images = held_out_images(sampler, full.shape[0])
    finally:
        remove(target_of(sampler))
    return float(psnr(images, full, cap=100.0).mean())


class HeldOutRecord:
    """Every held-out PSNR measured so far, by (forecast order, mask), kept in a JSON file so that an
    interrupted selection and refinement resumes where it stopped: their random draws are seeded, so a rerun
    proposes the same masks in the same order, finds their values here, and samples only from the first one
    it has not measured. The file belongs to one model, sampler setting and held-out set (``fingerprint``);
    a file of another is set aside, not trusted."""

    def __init__(self, path: str | Path | None, fingerprint: dict):
        self.path, self.fingerprint, self.values = (Path(path) if path else None), _plain(fingerprint), {}
        self.resumed = 0
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:
            raise DipgoError(f"{self.path} is not a held-out record ({err}); delete it to start over") from None
        if not isinstance(data, dict) or data.get("fingerprint") != self.fingerprint:
            print(f"{self.path} holds held-out values of another model or setting; starting over")
            return
        self.values = {str(k): float(v) for k, v in data.get("values", {}).items()}
        self.resumed = len(self.values)

    @staticmethod
    def key(order: int, mask: torch.Tensor) -> str:
        bits = "".join("1" if v > 0.5 else "0" for v in mask.flatten().tolist())
        return f"{order}:{tuple(mask.shape)}:{int(bits, 2):x}"

    def get(self, key: str) -> float | None:
        return self.values.get(key)

    def put(self, key: str, value: float) -> None:
        self.values[key] = value
        if self.path is not None:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "values": self.values}))


def _plain(obj):
    """``obj`` as JSON gives it back (tuples as lists), so a fingerprint read from the file compares equal."""
    return json.loads(json.dumps(obj))
