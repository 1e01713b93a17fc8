"""Samplers: run the user's own sampling code, with gradients, and hand back its images.

The search needs the pipeline's images as a differentiable function of the gates. diffusers runs
``__call__`` under ``torch.no_grad``; :class:`PipelineSampler` calls the undecorated function
underneath (``inspect.unwrap``), so *the pipeline's own code* runs (prompt encoding, guidance, added
conditioning, scheduler, latent packing), and the gates live in the same runtime hooks that
``dipgo.apply`` uses. A new pipeline family therefore needs no search code, only a block adapter.

The images are taken where the pipeline decodes them: ``vae.decode`` is wrapped to record its output
and stop the pipeline there (what follows, conversion to numpy or PIL, cannot carry gradients and is
not needed). A pipeline without a VAE (pixel-space DDPM/DDIM) is stopped after its last scheduler
step instead, and the final sample is the image. Both are mapped from [-1, 1] to [0, 1] as the
pipelines do.

:class:`FunctionSampler` wraps a user's own loop, ``sample_fn(generators) -> images``, that calls the
denoiser module once per denoiser call: a research model with its own sampler.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import DipgoError
from ..models.calibration import Calibration
from ..models.pipelines import call_kwargs, capture_denoiser_call, default_calibration, denoiser_of
from .hooks.start import require_whole_generation


class _Finished(Exception):
    """Raised inside the pipeline once the images exist, to skip its non-differentiable tail."""

    def __init__(self, images: torch.Tensor):
        super().__init__("finished")
        self.images = images


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return (x / 2 + 0.5).clamp(0, 1)


def _decoded(out) -> torch.Tensor:
    """A VAE's decoded batch in [0, 1]; a video VAE's (B, C, F, H, W) comes back as (B, F, C, H, W), the
    layout of a video pipeline's ``output_type="pt"`` frames."""
    x = _to_unit(out[0] if isinstance(out, tuple) else out.sample)
    return x.transpose(1, 2) if x.dim() == 5 else x


@dataclass
class Trace:
    """What one counting run saw: the denoiser's calls per generation, and its first call's inputs."""

    calls: int
    args: tuple
    kwargs: dict
    batch_factor: int  # images per generator in one call: 2 when classifier-free guidance doubles the batch


class PipelineSampler:
    """Generate with a diffusers pipeline's own ``__call__`` (gradients allowed)."""

    def __init__(self, pipe, calibration: Calibration | None = None, num_inference_steps: int = 50,
                 guidance_scale: float | None = None, extra: dict | None = None):
        self.pipe = pipe
        self.denoiser = denoiser_of(pipe)
        self.calibration = calibration or default_calibration(pipe)
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.extra = dict(extra or {})
        self.scheduler = getattr(pipe, "scheduler", None)
        self._call = inspect.unwrap(type(pipe).__call__)  # under the @torch.no_grad() decorator
        self._steps: int | None = None  # scheduler steps per generation (pipelines without a VAE)

    def profile_call(self) -> tuple[tuple, dict]:
        """One denoiser call's inputs at batch 1 without guidance, for the MACs profile."""
        return capture_denoiser_call(self.pipe, self.calibration, **self.extra)

    @contextmanager
    def _capture(self):
        vae = getattr(self.pipe, "vae", None)
        patched = []
        if vae is not None:
            original = vae.decode

            def decode(*args, **kwargs):
                out = original(*args, **kwargs)
                raise _Finished(_decoded(out))

            vae.decode = decode
            patched.append((vae, "decode"))
        else:
            original_step = self.scheduler.step
            box = {"n": 0}

            def step(*args, **kwargs):
                out = original_step(*args, **kwargs)
                box["n"] += 1
                sample = out[0] if isinstance(out, tuple) else out.prev_sample
                if self._steps is not None and box["n"] == self._steps:
                    raise _Finished(_to_unit(sample))
                box["last"] = sample
                return out

            self.scheduler.step = step
            patched.append((self.scheduler, "step"))
            self._box = box
        try:
            yield
        finally:
            for obj, attr in patched:
                delattr(obj, attr)  # the instance attribute goes; the class method shows through again

    def __call__(self, conditions: Sequence[int], generators: list[torch.Generator]) -> torch.Tensor:
        kw = call_kwargs(self.pipe, self.calibration, conditions, generators, self.num_inference_steps,
                         self.guidance_scale, **self.extra)
        if "output_type" in inspect.signature(self._call).parameters:
            kw.setdefault("output_type", "pt")
        bar = getattr(self.pipe, "_progress_bar_config", None)
        self.pipe.set_progress_bar_config(disable=True)
        try:
            with self._capture():
                self._call(self.pipe, **kw)
                if getattr(self.pipe, "vae", None) is None and "last" in self._box:
                    # finished normally (first run: the step count is learnt now)
                    self._steps = self._box["n"]
                    return _to_unit(self._box["last"])
        except _Finished as done:
            return done.images
        finally:
            self.pipe._progress_bar_config = bar if bar is not None else {}
        raise DipgoError(f"{type(self.pipe).__name__} finished without decoding images; dipgo cannot read its output")


class FunctionSampler:
    """A user's own loop: ``sample_fn(generators) -> images (N, C, H, W) in [0, 1]`` (or videos
    (N, F, C, H, W)), one image per generator."""

    def __init__(self, sample_fn: Callable[[list[torch.Generator]], torch.Tensor], denoiser: torch.nn.Module,
                 num_inference_steps: int):
        if not callable(sample_fn):
            raise DipgoError("sample_fn must be callable: sample_fn(generators) -> images")
        if not isinstance(denoiser, torch.nn.Module):
            raise DipgoError("with a sample_fn, pass the module it calls: dipgo.prune(sample_fn, denoiser=module, "
                             "blocks=[...], ...)")
        self.sample_fn, self.denoiser = sample_fn, denoiser
        self.calibration = Calibration.unconditional()
        self.num_inference_steps = num_inference_steps
        self.expected_calls = num_inference_steps  # one denoiser call per step; checked by the search
        self.scheduler = None
        self._first: tuple[tuple, dict] | None = None

    def profile_call(self) -> tuple[tuple, dict]:
        if self._first is None:
            trace(self)
        return self._first

    def __call__(self, conditions: Sequence[int], generators: list[torch.Generator]) -> torch.Tensor:
        images = self.sample_fn(list(generators))
        if not torch.is_tensor(images) or images.dim() not in (4, 5) or images.shape[0] != len(generators):
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise DipgoError(f"sample_fn must return images (N, C, H, W) or videos (N, F, C, H, W) with N = number "
                             f"of generators ({len(generators)}), got {shape}")
        return images


def trace(sampler, seed: int = 0) -> Trace:
    """Run the sampler once for one image (no gradients) and watch its denoiser calls."""
    denoiser = sampler.denoiser
    seen: dict = {"n": 0}

    def hook(module, args, kwargs):
        if seen["n"] == 0:
            seen["args"], seen["kwargs"] = args, kwargs
        seen["n"] += 1

    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            sampler([0], [torch.Generator().manual_seed(seed)])
    finally:
        handle.remove()
    if seen["n"] == 0:
        raise DipgoError("the sampling function never called the denoiser; it must call the module given as "
                         "denoiser= once per denoising step")
    if isinstance(sampler, PipelineSampler):
        require_whole_generation(sampler.pipe, sampler.scheduler, denoiser.forward, seen["args"], seen["kwargs"])
    first = seen["args"][0] if seen["args"] else next(
        (v for v in seen["kwargs"].values() if torch.is_tensor(v)), None)
    factor = int(first.shape[0]) if torch.is_tensor(first) and first.dim() > 0 else 1
    if isinstance(sampler, FunctionSampler):
        sampler._first = (seen["args"], seen["kwargs"])
    return Trace(seen["n"], seen["args"], seen["kwargs"], max(1, factor))
