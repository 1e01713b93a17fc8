"""What layer and depth pruning measure and retrain on, for any denoiser: captured calls and training sets.

* :class:`CallSet`: denoiser calls captured along the *full model's own sampling trajectories* on the
  calibration inputs (the same prompts / class labels as DiP-GO), with the full model's outputs. The
  one-shot criteria (layer scores, block linearisation losses) compare a pruned denoiser's output with
  these on exactly these inputs.
* :class:`TrainingSet`: clean latents ``x0`` with the conditioning of each (the denoiser's keyword
  arguments for one conditional call), for retraining with a noise-prediction task loss. A zoo model
  brings its training data; otherwise :func:`teacher_set` makes one from the full model's own samples.

Both know how to call the denoiser on new inputs: the sample and the timestep are the call's first
two parameters (``sample``/``hidden_states`` and ``timestep``), the rest is conditioning.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from tqdm import tqdm

from ..errors import DipgoError
from .calibration import Calibration
from .pipelines import call_kwargs, denoiser_of


def output_of(out) -> torch.Tensor:
    """The tensor a denoiser returns (``.sample`` of an output object, or the first element of a tuple)."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    return out.sample


def _clone(x):
    if torch.is_tensor(x):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_clone(v) for v in x)
    return x


@dataclass
class CallSet:
    """Captured denoiser calls ``(args, kwargs)`` and the full model's outputs for them."""

    calls: list[tuple[tuple, dict]]
    outputs: list[torch.Tensor]

    @torch.no_grad()
    def mse(self, model: torch.nn.Module) -> float:
        """Mean squared difference between ``model``'s outputs and the full model's, over every call."""
        total, count = 0.0, 0
        for (args, kwargs), ref in zip(self.calls, self.outputs, strict=True):
            out = output_of(model(*args, **kwargs))
            total += float((out - ref).pow(2).sum())
            count += ref.numel()
        return total / max(1, count)


@torch.no_grad()
def capture_calls(pipe, calibration: Calibration, n_images: int = 8, num_inference_steps: int = 20,
                  guidance_scale: float | None = None, every: int = 2, seed: int = 0, batch: int = 4,
                  progress: bool = False, **extra) -> CallSet:
    """Run the full pipeline on ``n_images`` calibration conditions and keep every ``every``-th denoiser call
    (inputs and output): inputs that occur in real sampling, spread over the whole trajectory."""
    denoiser = denoiser_of(pipe)
    calls, outputs, counter = [], [], {"i": 0}

    def hook(module, args, kwargs, out):
        if counter["i"] % every == 0:
            calls.append((_clone(args), _clone(kwargs)))
            outputs.append(output_of(out).detach().clone())
        counter["i"] += 1

    handle = denoiser.register_forward_hook(hook, with_kwargs=True)
    conditions = calibration.cycle(n_images)
    try:
        for start in tqdm(range(0, n_images, batch), desc="calibration calls", disable=not progress, leave=False):
            chunk = conditions[start:start + batch]
            gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
            counter["i"] = 0
            pipe(**call_kwargs(pipe, calibration, chunk, gens, num_inference_steps, guidance_scale,
                               output_type="latent", **extra))
    finally:
        handle.remove()
    return CallSet(calls, outputs)


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainingSet:
    """Clean latents and the conditioning of each, for noise-prediction training of a denoiser.

    ``cond`` holds batched tensors (first dimension N, one row per example); ``static`` the keyword
    arguments that are the same for every call (e.g. ``return_dict=False``).
    """

    x0: torch.Tensor
    cond: dict[str, torch.Tensor] = field(default_factory=dict)
    static: dict = field(default_factory=dict)
    sample_arg: str = "sample"
    timestep_arg: str = "timestep"
    uncond: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        bad = [k for k, v in self.cond.items() if v.shape[0] != self.x0.shape[0]]
        if bad:
            raise DipgoError(f"conditioning {bad} has a different number of rows than x0 ({self.x0.shape[0]})")
        unknown = [k for k in self.uncond if k not in self.cond]
        if unknown:
            raise DipgoError(f"unconditional conditioning {unknown} is not among the conditioning keys "
                             f"{sorted(self.cond)}")
        wrong = [k for k, v in self.uncond.items() if tuple(v.shape) != (1, *self.cond[k].shape[1:])]
        if wrong:
            raise DipgoError(f"unconditional conditioning {wrong} must be one row shaped like the conditioning "
                             f"(1, {', '.join(str(d) for d in self.cond[wrong[0]].shape[1:])})")

    def __len__(self) -> int:
        return self.x0.shape[0]

    def call(self, model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, index: torch.Tensor,
             drop: torch.Tensor | None = None):
        """``model`` on noisy latents ``x_t`` at timesteps ``t`` with the conditioning of examples ``index``;
        where the boolean ``drop`` is set, with the unconditional conditioning instead (``uncond``)."""
        cond = {k: v[index] for k, v in self.cond.items()}
        if drop is not None:
            for k, u in self.uncond.items():
                mask = drop.to(cond[k].device).view(-1, *[1] * (cond[k].dim() - 1))
                cond[k] = torch.where(mask, u.to(cond[k].device, cond[k].dtype), cond[k])
        return output_of(model(**{self.sample_arg: x_t, self.timestep_arg: t, **cond, **self.static}))


def denoiser_arg_names(denoiser: torch.nn.Module) -> tuple[str, str]:
    """The names of the denoiser's first two parameters: the noisy sample and the timestep."""
    params = [p for p in inspect.signature(denoiser.forward).parameters if p not in ("self",)]
    return params[0], params[1]


@torch.no_grad()
def conditional_kwargs(pipe, calibration: Calibration, conditions: Sequence[int], **extra) -> dict:
    """The denoiser's conditioning keyword arguments for these conditions, as the pipeline builds them for
    a call without guidance (so every row is conditional): text embeddings, pooled embeddings, class labels."""
    return _first_call_kwargs(pipe, calibration, conditions, 1.0, **extra)


@torch.no_grad()
def unconditional_kwargs(pipe, calibration: Calibration, **extra) -> dict[str, torch.Tensor]:
    """The conditioning a guided pipeline gives its unconditional branch (one row per key: the empty
    prompt's embeddings, DiT's null class), found by comparing a guided call's batch with an unguided one.
    Empty for a pipeline whose guidance doubles no batch (guidance-distilled models)."""
    cond = conditional_kwargs(pipe, calibration, [0], **extra)
    guided = _first_call_kwargs(pipe, calibration, [0], 4.0, **extra)
    out = {}
    for k, v in guided.items():
        mine = cond.get(k)
        if not (torch.is_tensor(v) and torch.is_tensor(mine) and v.dim() > 0 and mine.dim() > 0
                and v.shape[0] == 2 and mine.shape[0] == 1 and v.shape[1:] == mine.shape[1:]):
            continue
        other = [row for row in v.split(1) if not torch.equal(row, mine)]
        if len(other) == 1:
            out[k] = other[0].clone()
    return out


def with_unconditional(data: TrainingSet, pipe, calibration: Calibration, **extra) -> TrainingSet:
    """``data`` with the pipeline's unconditional conditioning added (as is, where it already has one), so
    that distillation also teaches the branch classifier-free guidance calls at every step."""
    if data.uncond:
        return data
    uncond = {k: v for k, v in unconditional_kwargs(pipe, calibration, **extra).items()
              if k in data.cond and v.shape[1:] == data.cond[k].shape[1:]}
    return replace(data, uncond=uncond)


def _first_call_kwargs(pipe, calibration: Calibration, conditions: Sequence[int], guidance_scale: float,
                       **extra) -> dict:
    """The conditioning keyword arguments of the pipeline's first denoiser call (sample and timestep left out)."""
    denoiser = denoiser_of(pipe)
    box: dict = {}
    sample_arg, timestep_arg = denoiser_arg_names(denoiser)

    class _Stop(Exception):
        pass

    def hook(module, args, kwargs):
        bound = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments
        box.update({k: v for k, v in bound.items() if k not in (sample_arg, timestep_arg)})
        raise _Stop

    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    gens = [torch.Generator().manual_seed(i) for i in range(len(conditions))]
    try:
        pipe(**call_kwargs(pipe, calibration, list(conditions), gens, 2, guidance_scale, output_type="latent",
                           **extra))
    except _Stop:
        pass
    finally:
        handle.remove()
    return box


@torch.no_grad()
def _final_latents(pipe, kwargs: dict) -> torch.Tensor:
    """The pipeline's final latents. Most pipelines return them for ``output_type="latent"``; those that
    always decode (DiT) are caught at ``vae.decode``, whose input is un-scaled back to the model's space."""
    vae, seen = getattr(pipe, "vae", None), []
    if vae is not None:
        decode = vae.decode

        def spy(z, *args, **kw):
            seen.append(z)
            return decode(z, *args, **kw)

        vae.decode = spy
    try:
        out = pipe(**kwargs).images
    finally:
        if vae is not None:
            del vae.decode  # the instance attribute: the class method shows through again
    if torch.is_tensor(out) and out.dim() == 4 and (not seen or out.shape[1:] == seen[-1].shape[1:]):
        return out
    if not seen:
        raise DipgoError(f"{type(pipe).__name__} returned no latents and decoded none; pass a training set")
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (seen[-1] - shift) * vae.config.scaling_factor


def teacher_set(pipe, calibration: Calibration, n: int = 256, num_inference_steps: int = 20,
                guidance_scale: float | None = None, seed: int = 10_000, batch: int = 16, progress: bool = True,
                **extra) -> TrainingSet:
    """A training set made by the full model itself (no data needed): its final latents for ``n`` calibration
    conditions (with the user's guidance), paired with those conditions' conditional embeddings."""
    denoiser = denoiser_of(pipe)
    sample_arg, timestep_arg = denoiser_arg_names(denoiser)
    conditions = calibration.cycle(n)
    latents, cond_rows, static = [], [], {}
    for start in tqdm(range(0, n, batch), desc="teacher samples", disable=not progress, leave=False):
        chunk = conditions[start:start + batch]
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        latents.append(_final_latents(pipe, call_kwargs(pipe, calibration, chunk, gens, num_inference_steps,
                                                        guidance_scale, output_type="latent", **extra)))
        kw = conditional_kwargs(pipe, calibration, chunk, **extra)
        cond_rows.append({k: v for k, v in kw.items() if torch.is_tensor(v) and v.dim() > 0
                          and v.shape[0] == len(chunk)})
        static = {k: v for k, v in kw.items() if k not in cond_rows[-1]}
    cond = {k: torch.cat([r[k] for r in cond_rows]) for k in cond_rows[0]}
    return TrainingSet(torch.cat(latents), cond, static, sample_arg, timestep_arg)
