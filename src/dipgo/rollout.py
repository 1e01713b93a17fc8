"""A differentiable sampling loop that reproduces a pipeline's own generation exactly.

diffusers pipelines run under ``torch.no_grad`` and cannot be backpropagated through, so the search
unrolls the same computation itself: the same prompt encoding, the same initial noise (one
generator per image), the same classifier-free guidance and the same scheduler steps. A test checks
that, without gates, this loop gives the pipeline's images.

Two families are supported: text-conditioned UNets (``StableDiffusionPipeline`` and its SD-2
kin) and class-conditioned transformers (``DiTPipeline``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

from .data import prompt_for
from .errors import DipgoError
from .sampling import conditioning_of
from .zoo import denoiser_of

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "plms": "PNDMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}


def set_scheduler(pipe, name: str) -> None:
    """Swap the pipeline's scheduler by short name (ddim, pndm/plms, dpm++/dpm, euler), same config."""
    import diffusers

    key = name.lower()
    cls_name = SCHEDULERS.get(key, name)
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not cls_name.endswith("Scheduler"):
        raise DipgoError(f"unknown scheduler {name!r}; use one of {sorted(SCHEDULERS)} or a diffusers class name")
    extra = {"skip_prk_steps": True} if cls_name == "PNDMScheduler" else {}  # PLMS, as SD-1.5 ships it
    if cls_name == "DPMSolverMultistepScheduler":
        extra["algorithm_type"] = "dpmsolver++"
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)


def fresh_scheduler(pipe, num_inference_steps: int):
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(num_inference_steps)
    return sched


def num_calls(pipe, num_inference_steps: int) -> int:
    """Denoiser calls per generation (PLMS: steps + 1)."""
    return len(fresh_scheduler(pipe, num_inference_steps).timesteps)


CallHook = Callable[[int], None]


def rollout(pipe, labels: Sequence[int], generators: list[torch.Generator], num_inference_steps: int,
            guidance_scale: float, before_call: CallHook | None = None,
            call_wrapper: Callable | None = None) -> torch.Tensor:
    """Generate images (N, C, H, W) in [0, 1], with gradients if enabled.

    ``before_call(i)`` runs before denoiser call i; ``call_wrapper(i, fn, x)`` may wrap the call
    (gradient checkpointing).
    """
    family = conditioning_of(pipe)
    denoiser = denoiser_of(pipe)
    sched = fresh_scheduler(pipe, num_inference_steps)
    cfg = guidance_scale > 1.0
    n = len(labels)
    if family == "prompt":
        prompts = [prompt_for(y) for y in labels]
        pos, neg = pipe.encode_prompt(prompts, torch.device("cpu"), 1, cfg)
        cond = torch.cat([neg, pos]) if cfg else pos
        channels = denoiser.config.in_channels
        size = denoiser.config.sample_size
        latents = randn_tensor((n, channels, size, size), generator=generators, dtype=cond.dtype)
        latents = latents * sched.init_noise_sigma

        def model(x, t):
            return denoiser(x, t, encoder_hidden_states=cond, return_dict=False)[0]
    elif family == "class":
        channels = denoiser.config.in_channels
        size = denoiser.config.sample_size
        latents = randn_tensor((n, channels, size, size), generator=generators, dtype=denoiser.dtype)
        y = torch.tensor(list(labels))
        null = torch.full_like(y, 1000)  # DiTPipeline's null class
        class_input = torch.cat([y, null]) if cfg else y

        def model(x, t):
            ts = t.expand(x.shape[0]) if torch.is_tensor(t) else torch.tensor([t] * x.shape[0])
            return denoiser(x, timestep=ts, class_labels=class_input).sample
    else:  # pragma: no cover - conditioning_of raises first
        raise DipgoError(f"unsupported pipeline {type(pipe).__name__}")

    for i, t in enumerate(sched.timesteps):
        if before_call is not None:
            before_call(i)
        x = torch.cat([latents] * 2) if cfg else latents
        x = sched.scale_model_input(x, t)

        def call(x_in, t=t):
            return model(x_in, t)

        out = call_wrapper(i, call, x) if call_wrapper is not None else call(x)
        eps = out[:, :channels]
        if cfg:
            if family == "prompt":
                uncond, cond_eps = eps.chunk(2)
            else:
                cond_eps, uncond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond_eps - uncond)
        latents = sched.step(eps, t, latents, return_dict=False)[0]
    vae = pipe.vae
    image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1)
