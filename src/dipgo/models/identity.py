"""The identity of a denoiser's architecture: a short hash of its config and of what pruning changed.

A skip schedule and a pruned folder both record the hash of the model they were made for, and refuse a
model whose hash differs, because a schedule or a set of weights applied to another architecture
silently produces garbage rather than an error.
"""

from __future__ import annotations

import hashlib
import json

import torch


def config_hash(model: torch.nn.Module) -> str:
    """A short hash of a model's architecture: its config (weights and file paths excluded) and the layers
    layer pruning removed from it, if any."""
    config = getattr(model, "config", None)
    if config is None:
        desc = {"class": type(model).__name__,
                "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}
    else:
        desc = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    removed = getattr(model, "_dipgo_removed", None)
    if removed:  # a layer-pruned model is another architecture than its config says
        desc["_dipgo_removed"] = sorted(removed)
    merged = getattr(model, "_dipgo_merged", None)
    if merged:  # a depth-pruned model: these blocks were merged into single ops
        desc["_dipgo_merged"] = sorted(merged)
    blob = json.dumps(desc, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def base_hash(model: torch.nn.Module) -> str:
    """The architecture hash of the *unpruned* model (its config), whatever was removed or merged since."""
    saved = {a: getattr(model, a) for a in ("_dipgo_removed", "_dipgo_merged") if hasattr(model, a)}
    try:
        model._dipgo_removed, model._dipgo_merged = [], {}
        return config_hash(model)
    finally:
        del model._dipgo_removed, model._dipgo_merged
        for a, v in saved.items():
            setattr(model, a, v)
