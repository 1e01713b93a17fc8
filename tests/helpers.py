"""Shared test helpers: schedules from masks, and the zoo models' digit conditions."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from dipgo import Calibration
from dipgo.cache.postprocess import schedule_from_mask
from dipgo.cache.schedule import config_hash
from dipgo.models.pipelines import conditioning_of, generate
from dipgo.zoo.mnist import digit_prompts


def make_schedule(denoiser, scheduler: str, steps: int, graph, profile, mask, cfg: int = 1, meta=None):
    return schedule_from_mask(mask, graph, profile, model_class=type(denoiser).__name__,
                              config_hash=config_hash(denoiser), scheduler=scheduler, num_inference_steps=steps,
                              cfg=cfg, meta=meta)


def digits(pipe) -> Calibration:
    """The zoo models' conditions: condition index = digit."""
    if conditioning_of(pipe) == "prompt":
        return Calibration.prompts(digit_prompts())
    return Calibration.class_labels(range(10))


def generate_digits(pipe, labels, **kw) -> torch.Tensor:
    return generate(pipe, digits(pipe), list(labels), **kw)


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "research_unet.py"


def research_example() -> ModuleType:
    """examples/research_unet.py, loaded by file path (it is a script, not a package module)."""
    if "research_unet_example" in sys.modules:
        return sys.modules["research_unet_example"]
    spec = importlib.util.spec_from_file_location("research_unet_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module
