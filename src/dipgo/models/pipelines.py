"""Helpers that work across diffusers pipeline families: loading, the denoiser, schedulers, the
arguments of a call, seeded generation and the capture of one denoiser call.

Every image gets its own ``torch.Generator`` seeded ``seed + index``, so an image depends only on
its seed and its condition, never on the batch it was generated in: the full and the accelerated
model can then be compared image by image.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import DipgoError, ModelNotFoundError
from .calibration import Calibration

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "plms": "PNDMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}


def quiet_libraries() -> None:
    """Silence what transformers/diffusers print on import and load that is not the user's concern:
    "requires torchvision" notices (we never use torchvision) and nested "Loading pipeline components" bars."""
    import logging

    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", message=".*Torchvision.*")
    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    """``fp32`` / ``fp16`` / ``bf16`` (the ``--dtype`` values) as a torch dtype."""
    if name not in DTYPES:
        raise DipgoError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_pipeline(target: str | Path, dtype: torch.dtype = torch.float32, progress: bool = False):
    """Load a diffusers pipeline from a local folder (or a hub id, where a hub is reachable)."""
    from diffusers import DiffusionPipeline

    quiet_libraries()
    try:
        pipe = DiffusionPipeline.from_pretrained(str(target), dtype=dtype)
    except (OSError, ValueError) as err:
        if not Path(str(target)).exists():
            raise ModelNotFoundError(
                f"could not load {target!r} from the hub ({err.__class__.__name__}: {err}); "
                "without a reachable hub, download the pipeline elsewhere and pass its local folder"
            ) from err
        raise
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


def denoiser_name(pipe) -> str:
    """The pipeline component that is called once per step: ``unet``, ``transformer`` or ``prior``."""
    for attr in ("unet", "transformer", "prior"):
        if isinstance(getattr(pipe, attr, None), torch.nn.Module):
            return attr
    raise DipgoError(f"{type(pipe).__name__} has no 'unet' or 'transformer' component to accelerate; "
                     "for your own model pass the module itself (dipgo.prune(sample_fn, denoiser=module, ...))")


def denoiser_of(pipe) -> torch.nn.Module:
    """The network a pipeline calls once per step (UNet or transformer); a bare module is its own."""
    return pipe if isinstance(pipe, torch.nn.Module) else getattr(pipe, denoiser_name(pipe))


# ------------------------------------------------------------------------------------------ schedulers
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


def num_calls(pipe, num_inference_steps: int) -> int:
    """Denoiser calls per generation as the scheduler plans them (PLMS: steps + 1)."""
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(num_inference_steps)
    return len(sched.timesteps)


# ------------------------------------------------------------------------------------------ conditioning
def conditioning_of(pipe) -> str:
    """``"prompt"`` (text-to-image), ``"class"`` (class-conditional) or ``"none"`` (unconditional)."""
    params = inspect.signature(pipe.__call__).parameters
    if "prompt" in params:
        return "prompt"
    if "class_labels" in params:
        return "class"
    return "none"


def num_classes_of(pipe) -> int | None:
    """How many classes a class-conditional denoiser embeds (DiT: ``num_embeds_ada_norm``)."""
    config = getattr(denoiser_of(pipe), "config", {})
    for key in ("num_embeds_ada_norm", "num_class_embeds", "num_classes"):
        value = config.get(key) if hasattr(config, "get") else None
        if value:
            return int(value)
    return None


def default_calibration(pipe, prompts: Sequence[str] | None = None, class_labels: Sequence[int] | None = None,
                        defaults: dict | None = None) -> Calibration:
    """The user's prompts / class labels, else the model folder's defaults, else a generic set.

    ``defaults`` is the model's ``dipgo.json`` (``{"prompts": [...]}`` or ``{"class_labels": [...]}``).
    """
    kind = conditioning_of(pipe)
    defaults = defaults or {}
    if prompts is not None and class_labels is not None:
        raise DipgoError("give prompts or class_labels, not both")
    if kind == "none":
        if prompts is not None or class_labels is not None:
            raise DipgoError(f"{type(pipe).__name__} is unconditional: it takes neither prompts nor class labels")
        return Calibration.unconditional()
    if kind == "prompt":
        if class_labels is not None:
            raise DipgoError(f"{type(pipe).__name__} is a text-to-image pipeline: give prompts, not class labels")
        if prompts is not None:
            return Calibration.prompts(prompts)
        if defaults.get("prompts"):
            return Calibration.prompts(defaults["prompts"])
        return Calibration.generic_prompts()
    if prompts is not None:
        raise DipgoError(f"{type(pipe).__name__} is class-conditional: give class labels, not prompts")
    labels = class_labels if class_labels is not None else defaults.get("class_labels")
    n = num_classes_of(pipe)
    if labels is None:
        if n is None:
            raise DipgoError(f"cannot tell how many classes {type(pipe).__name__} has; pass class_labels=[...]")
        labels = list(range(n))
    return Calibration.class_labels(labels, n)


def call_kwargs(pipe, calibration: Calibration, conditions: Sequence[int], generators: list[torch.Generator],
                num_inference_steps: int, guidance_scale: float | None = None, **extra) -> dict:
    """Keyword arguments for ``pipe(...)``: the conditions, one generator per image, the step count and
    (where the pipeline takes it) the guidance scale. Unknown extras are refused by name."""
    params = inspect.signature(pipe.__call__).parameters
    kw = dict(calibration.kwargs(conditions), generator=list(generators), num_inference_steps=num_inference_steps)
    if guidance_scale is not None and "guidance_scale" in params:
        kw["guidance_scale"] = guidance_scale
    unknown = [k for k in extra if k not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values())]
    if unknown:
        raise DipgoError(f"{type(pipe).__name__}.__call__ takes no argument(s) {unknown}")
    kw.update(extra)
    return kw


def pipeline_images(result):
    """What a pipeline's output holds: ``.images``, or ``.frames`` for text-to-video pipelines (Wan, CogVideoX)."""
    for attr in ("images", "frames"):
        value = getattr(result, attr, None)
        if value is not None:
            return value
    raise DipgoError(f"{type(result).__name__} has neither .images nor .frames; dipgo cannot read this output")


def as_images(images) -> torch.Tensor:
    """A pipeline's ``.images`` (tensor, numpy HWC or PIL list) as float (N, C, H, W) in [0, 1]; its
    ``.frames`` (videos: tensor, numpy (N, F, H, W, C) or lists of PIL frames) as (N, F, C, H, W)."""
    if torch.is_tensor(images):
        return images.float().cpu()
    if isinstance(images, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(images)).float().movedim(-1, -3)
    if len(images) and isinstance(images[0], (list, tuple)):  # videos as lists of PIL frames
        return torch.stack([as_images(frames) for frames in images])
    arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in images]
    arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@torch.no_grad()
def generate(pipe, calibration: Calibration, conditions: Sequence[int], seed: int = 0,
             num_inference_steps: int = 50, guidance_scale: float | None = None, batch_size: int = 16,
             progress: bool = False, desc: str = "sampling", **extra) -> torch.Tensor:
    """Generate one image per condition index; returns float images (N, C, H, W) in [0, 1] (videos:
    (N, F, C, H, W))."""
    out = []
    if "output_type" in inspect.signature(pipe.__call__).parameters:
        extra.setdefault("output_type", "pt")  # pipelines without a "pt" path (DDPM) return numpy: as_images
    for start in tqdm(range(0, len(conditions), batch_size), desc=desc, disable=not progress, dynamic_ncols=True):
        chunk = list(conditions[start:start + batch_size])
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        result = pipe(**call_kwargs(pipe, calibration, chunk, gens, num_inference_steps, guidance_scale, **extra))
        out.append(as_images(pipeline_images(result)))
    return torch.cat(out)


class _Captured(Exception):
    pass


def capture_denoiser_call(pipe, calibration: Calibration | None = None, **extra) -> tuple[tuple, dict]:
    """The exact arguments of one denoiser call for a single image without CFG (batch 1).

    Runs the pipeline until its first denoiser call and stops it there, so the inputs have the
    pipeline's real shapes (latent size, text length, added conditions) without guessing them.
    """
    denoiser = denoiser_of(pipe)
    calibration = calibration or default_calibration(pipe)
    box: dict = {}

    def hook(module, args, kwargs):
        box["args"], box["kwargs"] = args, kwargs
        raise _Captured

    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(**call_kwargs(pipe, calibration, [0], [torch.Generator().manual_seed(0)], 2, 1.0, **extra))
    except _Captured:
        pass
    finally:
        handle.remove()
    if "args" not in box:
        raise DipgoError(f"{type(pipe).__name__} finished without calling its denoiser")
    return box["args"], box["kwargs"]


def with_denoiser(pipe, denoiser: torch.nn.Module):
    """A new pipeline of the same class that shares ``pipe``'s components except its denoiser (replaced)
    and its scheduler (a fresh copy: DiP-GO's hooks wrap a scheduler, so two pipelines must not share one)."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    out = type(pipe)(**{**pipe.components, denoiser_name(pipe): denoiser, "scheduler": scheduler})
    if hasattr(pipe, "labels"):  # DiTPipeline's id2label
        out.labels = pipe.labels
    out.set_progress_bar_config(disable=True)
    return out
