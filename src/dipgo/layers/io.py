"""A layer-pruned pipeline as a folder: ``save_pruned`` / ``load_pruned``.

The folder is a normal ``save_pretrained`` folder plus ``dipgo-layers.json`` (which layers are gone,
and the hash of the architecture they were removed from). The denoiser's weight file holds only what
is left, so a stock ``from_pretrained`` would re-create the removed layers at random; ``load_pruned``
builds the stock denoiser class from its config, removes the same layers, loads the weights strictly
and hands back a ready pipeline of the stock class in which the removed layers cost nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..cache.schedule import config_hash
from ..errors import DipgoError
from ..fileio import atomic_path
from ..models.pipelines import denoiser_name, denoiser_of, quiet_libraries
from .candidates import remove_layers

INFO = "dipgo-layers.json"
FORMAT, VERSION = "dipgo-layers", 1


def base_hash(model: torch.nn.Module) -> str:
    """The architecture hash of the *unpruned* model (its config), whatever was removed since."""
    removed = getattr(model, "_dipgo_removed", None)
    try:
        model._dipgo_removed = []
        return config_hash(model)
    finally:
        if removed is None:
            del model._dipgo_removed
        else:
            model._dipgo_removed = removed


def save_pruned(pipe, folder: str | Path, info: dict | None = None) -> Path:
    """Save a pipeline whose denoiser had layers removed (``remove_layers``), with what was removed."""
    folder = Path(folder)
    den = denoiser_of(pipe)
    removed = list(getattr(den, "_dipgo_removed", []))
    if not removed:
        raise DipgoError("this pipeline's denoiser has no removed layers; save it with pipe.save_pretrained")
    pipe.save_pretrained(folder)
    record = {"format": FORMAT, "version": VERSION, "denoiser": denoiser_name(pipe),
              "base_model_class": type(den).__name__, "base_config_hash": base_hash(den), "removed": removed,
              "params": sum(p.numel() for p in den.parameters()), **(info or {})}
    with atomic_path(folder / INFO) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return folder


def read_info(folder: str | Path) -> dict:
    path = Path(folder) / INFO
    if not path.is_file():
        raise DipgoError(f"{folder} is not a dipgo layer-pruned folder (no {INFO}); "
                         "load it with DiffusionPipeline.from_pretrained")
    try:
        info = json.loads(path.read_text())
    except ValueError as err:
        raise DipgoError(f"{path} is corrupt ({err})") from err
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise DipgoError(f"{path} is not a version-{VERSION} {FORMAT} file")
    return info


def load_pruned(folder: str | Path, base=None, dtype: torch.dtype = torch.float32):
    """The pruned pipeline saved in ``folder``, of the stock pipeline class.

    ``base`` (optional): the pipeline (or denoiser) it is supposed to come from; refused if it is another
    architecture. A folder whose denoiser config no longer matches the recorded base is refused too.
    """
    import diffusers
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    quiet_libraries()
    folder = Path(folder)
    info = read_info(folder)
    attr = info["denoiser"]
    index = json.loads((folder / "model_index.json").read_text())
    cls = getattr(diffusers, index[attr][1])
    model = cls.from_config(cls.load_config(folder / attr))
    if config_hash(model) != info["base_config_hash"]:
        raise DipgoError(f"{folder}/{attr}/config.json does not match the model the layers were removed from "
                         f"(hash {config_hash(model)}, recorded {info['base_config_hash']}); the folder was modified "
                         "after pruning: prune again")
    if base is not None:
        theirs = denoiser_of(base)
        if base_hash(theirs) != info["base_config_hash"] or type(theirs).__name__ != info["base_model_class"]:
            raise DipgoError(f"{folder} was pruned from a {info['base_model_class']} ({info['base_config_hash']}), "
                             f"not from this {type(theirs).__name__} ({base_hash(theirs)})")
    remove_layers(model, info["removed"])
    weights = sorted((folder / attr).glob("*.safetensors"))
    if not weights:
        raise DipgoError(f"{folder}/{attr} has no .safetensors weights")
    state = {}
    for w in weights:
        state.update(load_file(str(w)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DipgoError(f"the weights in {folder}/{attr} do not fit the pruned architecture (missing "
                         f"{list(missing)[:4]}, unexpected {list(unexpected)[:4]}): the base model does not match")
    model = model.to(dtype).eval()
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype, **{attr: model})
    pipe.set_progress_bar_config(disable=True)
    return pipe
