"""The embedded model zoo and the one place that turns a MODEL argument into a diffusers pipeline.

A MODEL is a zoo name (``mnist-sd``, ``mnist-dit``), a local diffusers folder (one with a
``model_index.json``), or a Hugging Face hub id (``org/name``) where a hub is reachable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelNotFoundError


@dataclass(frozen=True)
class ZooEntry:
    """A model the project trained itself, with the sampling settings its model card measured."""

    name: str
    folder: str
    conditioning: str  # "prompt" (text-to-image) or "class" (class-conditional)
    guidance_scale: float
    num_classes: int = 10
    description: str = ""


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("mnist-sd", "mnist-sd", "prompt", 4.0,
                 description="StableDiffusionPipeline (CLIP text encoder, SD-1.5 UNet layout) on MNIST"),
        ZooEntry("mnist-dit", "mnist-dit", "class", 2.0,
                 description="DiTPipeline (class-conditional DiT) on MNIST"),
    )
}


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def zoo_root() -> Path:
    """Where the zoo folders live: ``$DIPGO_ZOO`` or the repository's ``zoo/``."""
    env = os.environ.get("DIPGO_ZOO")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "zoo"


def resolve(model: str) -> str:
    """Map a MODEL argument to a path or hub id that ``from_pretrained`` accepts, or explain why not."""
    if model in ZOO:
        path = zoo_root() / ZOO[model].folder
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"zoo model {model!r} should be at {path} but that folder has no model_index.json; "
                "set DIPGO_ZOO to the folder that holds the zoo, or rebuild it with zoo/train.py"
            )
        return str(path)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{model!r} is a file; give a diffusers pipeline folder or a zoo name")
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"{model!r} is a folder without model_index.json, so it is not a diffusers pipeline "
                "(save one with pipe.save_pretrained(folder))"
            )
        return str(path)
    if _HUB_ID.match(model):
        return model  # a hub id: diffusers fetches it where a hub is reachable
    if "/" in model or model.startswith((".", "~")):
        raise ModelNotFoundError(f"folder {model!r} does not exist")
    raise ModelNotFoundError(
        f"unknown model {model!r}: use a zoo name ({', '.join(ZOO)}), a local diffusers folder, "
        "or a hub id such as 'org/name'"
    )


def zoo_entry(model: str) -> ZooEntry | None:
    return ZOO.get(model)


def load_pipeline(model: str, dtype: torch.dtype = torch.float32, progress: bool = False):
    """Load any diffusers pipeline named by MODEL (see module docstring), ready for CPU sampling."""
    from diffusers import DiffusionPipeline

    target = resolve(model)
    try:
        pipe = DiffusionPipeline.from_pretrained(target, dtype=dtype)
    except (OSError, ValueError) as err:
        if target == model and not Path(model).exists():
            raise ModelNotFoundError(
                f"could not load {model!r} from the hub ({err.__class__.__name__}: {err}); "
                "without a reachable hub, download the pipeline elsewhere and pass its local folder"
            ) from err
        raise
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


def denoiser_of(pipe) -> torch.nn.Module:
    """The network a pipeline calls once per step (UNet or transformer)."""
    for attr in ("unet", "transformer", "prior"):
        module = getattr(pipe, attr, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise TypeError(f"{type(pipe).__name__} has no 'unet' or 'transformer' component to accelerate")
