"""A pruned pipeline as a folder: the record every kind shares, and the layer-removed kind.

A pruned folder is a normal ``save_pretrained`` folder plus a JSON record of what was done to its
denoiser and the hash of the architecture it was done to. The denoiser's weight file holds only what is
left, so a stock ``from_pretrained`` would re-create the pruned parts at random; :func:`load_edited`
builds the stock denoiser class from its config, edits it the same way (layers removed, blocks merged),
loads the weights strictly and hands back a ready pipeline of the stock class.

Layer pruning, and depth pruning's ``mode="remove"`` baseline, write ``dipgo-layers.json`` (which layers
are gone): :func:`save_pruned` / :func:`load_pruned` here. Depth pruning's merged folders add their own
record on top of :func:`write_info` / :func:`read_info`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import DipgoError
from ..fileio import atomic_path
from .identity import base_hash, config_hash
from .pipelines import denoiser_name, denoiser_of, quiet_libraries
from .surgery import remove_layers

INFO = "dipgo-layers.json"
FORMAT, VERSION = "dipgo-layers", 1


def save_pruned(pipe, folder: str | Path, info: dict | None = None) -> Path:
    """Save a pipeline whose denoiser had layers removed (``remove_layers``), with what was removed."""
    removed = list(getattr(denoiser_of(pipe), "_dipgo_removed", []))
    if not removed:
        raise DipgoError("this pipeline's denoiser has no removed layers; save it with pipe.save_pretrained")
    return write_info(pipe, Path(folder), INFO, {"format": FORMAT, "version": VERSION, "removed": removed,
                                                 **(info or {})})


def read_info(folder: str | Path, name: str = INFO, fmt: str = FORMAT, version: int = VERSION,
              kind: str = "layer-pruned", check: Callable[[dict, Path], None] | None = None) -> dict:
    """The record ``name`` of a pruned folder, checked to be of format ``fmt`` at ``version`` and to hold the
    fields every record has; ``check(info, path)`` checks the kind's own fields."""
    path = Path(folder) / name
    if not path.is_file():
        raise DipgoError(f"{folder} is not a dipgo {kind} folder (no {name}); "
                         "load it with DiffusionPipeline.from_pretrained")
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DipgoError(f"{path} is corrupt or truncated ({err}); prune again") from err
    if not isinstance(info, dict) or info.get("format") != fmt or info.get("version") != version:
        raise DipgoError(f"{path} is not a version-{version} {fmt} file (fields 'format' and 'version'); prune again")
    for field in ("denoiser", "base_model_class", "base_config_hash"):
        value = info.get(field)
        bad_field(path, field, "a non-empty string", value, isinstance(value, str) and value)
    params = info.get("params")
    bad_field(path, "params", "an integer >= 0", params, is_count(params, 0))
    (check or _check_removed)(info, path)
    return info


def is_count(value, low: int) -> bool:
    """Whether ``value`` is an integer (not a bool) of at least ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def bad_field(path: Path, field: str, rule: str, value, ok) -> None:
    """Raise a :class:`DipgoError` naming ``field`` (whose value is ``value``) of the record at ``path`` unless
    ``ok``."""
    if not ok:
        raise DipgoError(f"{path}: field {field!r} must be {rule}, got {repr(value)[:80]}; the file was modified "
                         "after pruning: prune again")


def _check_removed(info: dict, path: Path) -> None:
    removed = info.get("removed")
    bad_field(path, "removed", "a non-empty list of distinct module names", removed,
              isinstance(removed, list) and removed and all(isinstance(n, str) and n for n in removed)
              and len(set(removed)) == len(removed))


def write_info(pipe, folder: Path, name: str, record: dict) -> Path:
    """``pipe.save_pretrained(folder)`` plus the record of what was done to its denoiser (atomic)."""
    den = denoiser_of(pipe)
    pipe.save_pretrained(folder)
    record = {**record, "denoiser": denoiser_name(pipe), "base_model_class": type(den).__name__,
              "base_config_hash": base_hash(den), "params": sum(p.numel() for p in den.parameters())}
    with atomic_path(folder / name) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return folder


def _denoiser_class(folder: Path, attr: str) -> type:
    """The diffusers class that ``model_index.json`` gives the denoiser ``attr`` (the record's field 'denoiser')."""
    import diffusers

    try:
        entry = json.loads((folder / "model_index.json").read_text()).get(attr)
    except (OSError, ValueError, AttributeError) as err:
        raise DipgoError(f"{folder}/model_index.json is missing or corrupt ({err}); prune again") from err
    if not (isinstance(entry, list) and len(entry) == 2 and hasattr(diffusers, str(entry[1]))):
        raise DipgoError(f"{folder}: field 'denoiser' names {attr!r}, which model_index.json does not list as a "
                         "diffusers model; the folder was modified after pruning: prune again")
    return getattr(diffusers, entry[1])


def load_edited(folder: str | Path, info: dict, edit: Callable[[torch.nn.Module], None], base=None,
                dtype: torch.dtype = torch.float32, recorded: str = "removed"):
    """The pipeline saved in ``folder`` whose denoiser is the stock class built from its config, then
    ``edit``-ed (layers removed, blocks merged) so that the saved weights fit it exactly. ``recorded``: the
    record's field that says what the edit is, named when the weights do not fit it."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    quiet_libraries()
    folder = Path(folder)
    attr = info["denoiser"]
    cls = _denoiser_class(folder, attr)
    model = cls.from_config(cls.load_config(folder / attr))
    if config_hash(model) != info["base_config_hash"]:
        raise DipgoError(f"{folder}/{attr}/config.json does not match the model it was pruned from "
                         f"(hash {config_hash(model)}, field 'base_config_hash' {info['base_config_hash']}); the "
                         "folder was modified after pruning: prune again")
    if base is not None:
        theirs = denoiser_of(base)
        if base_hash(theirs) != info["base_config_hash"] or type(theirs).__name__ != info["base_model_class"]:
            raise DipgoError(f"{folder} was pruned from a {info['base_model_class']} ({info['base_config_hash']}), "
                             f"not from this {type(theirs).__name__} ({base_hash(theirs)})")
    try:
        edit(model)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise DipgoError(f"{folder}: field {recorded!r} does not fit the base model ({err}); the folder was "
                         "modified after pruning: prune again") from err
    weights = sorted((folder / attr).glob("*.safetensors"))
    if not weights:
        raise DipgoError(f"{folder}/{attr} has no .safetensors weights")
    state = {}
    for w in weights:
        state.update(load_file(str(w)))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        missing, unexpected = [str(err).splitlines()[-1].strip()], []
    if missing or unexpected:
        raise DipgoError(f"the weights in {folder}/{attr} do not fit the pruned architecture that field {recorded!r} "
                         f"describes (missing {list(missing)[:4]}, unexpected {list(unexpected)[:4]}): the base model "
                         "does not match, or the record was modified after pruning; prune again")
    model = model.to(dtype).eval()
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=dtype, **{attr: model})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pruned(folder: str | Path, base=None, dtype: torch.dtype = torch.float32):
    """The layer-pruned pipeline saved in ``folder``, of the stock pipeline class.

    ``base`` (optional): the pipeline (or denoiser) it is supposed to come from; refused if it is another
    architecture. A folder whose denoiser config no longer matches the recorded base is refused too.
    """
    info = read_info(folder)
    return load_edited(folder, info, lambda model: remove_layers(model, info["removed"]), base, dtype)
