"""A depth-pruned pipeline as a folder, and ``load_pruned`` for every kind of pruned folder.

The folder is a normal ``save_pretrained`` folder plus ``dipgo-depth.json``: which blocks were merged and
the shape of each merged op, and the hash of the architecture they came from. ``load_pruned`` builds the
stock denoiser from its config, swaps the same blocks for empty merged ops and loads the weights
strictly; a layer-removed folder (``dipgo-layers.json``) is loaded by :func:`dipgo.models.folders.load_pruned`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import DipgoError
from ..models.folders import INFO as LAYERS_INFO
from ..models.folders import bad_field, is_count, load_edited, read_info, write_info
from ..models.folders import load_pruned as load_layers
from ..models.pipelines import denoiser_of
from ..models.surgery import swap
from .forms import MERGED, MergedConv, MergedDepthwisePoint, MergedLinear, MergedTransformer

INFO = "dipgo-depth.json"
FORMAT, VERSION = "dipgo-depth", 1
# Each merged op's recorded shape: the integer fields and their lowest values (MergedConv adds temb_dim,
# null or an integer, and time_act, a bool).
SPEC_FIELDS = {"MergedConv": {"c_in": 1, "c_out": 1, "kernel": 1, "stride": 1, "padding": 0},
               "MergedLinear": {"dim": 1}, "MergedDepthwisePoint": {"channels": 1, "kernel": 1, "padding": 0},
               "MergedTransformer": {"dim": 1}}


def save_depth(pipe, folder: str | Path, info: dict | None = None) -> Path:
    """Save a pipeline whose denoiser has merged blocks (:func:`dipgo.depth.prune`), with what was merged."""
    merged = dict(getattr(denoiser_of(pipe), "_dipgo_merged", {}) or {})
    if not merged:
        raise DipgoError("this pipeline's denoiser has no merged blocks; a mode='remove' result saves with "
                         "dipgo.models.folders.save_pruned, an unpruned one with pipe.save_pretrained")
    return write_info(pipe, Path(folder), INFO, {"format": FORMAT, "version": VERSION, "merged": merged,
                                                 **(info or {})})


def _check_merged(info: dict, path: Path) -> None:
    """Field 'merged' of a depth record: block name -> the shape of its merged op (:data:`SPEC_FIELDS`)."""
    merged = info.get("merged")
    bad_field(path, "merged", "a non-empty dict from block name to merged-op shape", merged,
              isinstance(merged, dict) and merged and all(isinstance(n, str) and n for n in merged))
    for name, spec in merged.items():
        where = f"merged[{name!r}]"
        kind = spec.get("type") if isinstance(spec, dict) else None
        bad_field(path, where, f"a dict whose 'type' is one of {sorted(SPEC_FIELDS)}", spec,
                  isinstance(kind, str) and kind in SPEC_FIELDS)
        for key, low in SPEC_FIELDS[kind].items():
            bad_field(path, f"{where}.{key}", f"an integer >= {low}", spec.get(key), is_count(spec.get(key), low))
        if kind == "MergedConv":
            temb = spec.get("temb_dim")
            bad_field(path, f"{where}.temb_dim", "null or an integer >= 1", temb, temb is None or is_count(temb, 1))
            act = spec.get("time_act")
            bad_field(path, f"{where}.time_act", "true or false", act, isinstance(act, bool))


def build_merged(stock: nn.Module, spec: dict) -> nn.Module:
    """An empty merged op of the shape ``spec`` records, in place of the stock block ``stock``."""
    kind = spec.get("type")
    if kind not in MERGED:
        raise DipgoError(f"unknown merged block type {kind!r} (known: {sorted(MERGED)}); the folder was written "
                         "by a newer dipgo")
    if kind == "MergedConv":
        act = getattr(stock, "nonlinearity", None) if spec.get("time_act") else None
        return MergedConv(spec["c_in"], spec["c_out"], spec["kernel"], spec["stride"], spec["padding"],
                          spec.get("temb_dim"), act)
    if kind == "MergedLinear":
        return MergedLinear(spec["dim"])
    if kind == "MergedDepthwisePoint":
        return MergedDepthwisePoint(spec["channels"], spec["kernel"], spec["padding"])
    return MergedTransformer(stock)


def merge_specs(model: nn.Module, merged: dict[str, dict]) -> nn.Module:
    """Swap each named block of a stock model for an empty merged op (weights come after)."""
    for name, spec in merged.items():
        try:
            stock = model.get_submodule(name)
        except AttributeError as err:
            raise DipgoError(f"the base model has no block {name!r}: the base model does not match") from err
        swap(model, name, build_merged(stock, spec))
    model._dipgo_merged = dict(merged)
    return model


def load_pruned(folder: str | Path, base=None, dtype: torch.dtype = torch.float32):
    """A pruned pipeline saved by dipgo (depth: ``dipgo depth``; layers: ``dipgo layers``), of the stock
    pipeline class. ``base``: the pipeline it must come from (another architecture is refused)."""
    folder = Path(folder)
    if (folder / INFO).is_file():
        info = read_info(folder, INFO, FORMAT, VERSION, "depth-pruned", check=_check_merged)
        return load_edited(folder, info, lambda model: merge_specs(model, info["merged"]), base, dtype,
                           recorded="merged")
    if (folder / LAYERS_INFO).is_file():
        return load_layers(folder, base, dtype)
    raise DipgoError(f"{folder} is not a dipgo pruned folder (no {INFO} or {LAYERS_INFO}); load an unpruned "
                     "model with DiffusionPipeline.from_pretrained")
