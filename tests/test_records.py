"""The records of pruned folders (``dipgo-layers.json``, ``dipgo-depth.json``) and prompts files: each bad
field or line is refused with a :class:`DipgoError` that names it."""

from __future__ import annotations

import copy
import json
import re
import shutil

import pytest
import torch
from families import tiny_dit

import dipgo
from dipgo.depth import prune_depth, save_depth
from dipgo.errors import DipgoError
from dipgo.models.calibration import read_prompts
from dipgo.models.folders import save_pruned
from dipgo.models.surgery import remove_layers


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A layer-removed and a depth-merged folder of the same tiny DiT."""
    root = tmp_path_factory.mktemp("records")
    pipe = tiny_dit()
    removed = copy.deepcopy(pipe)
    remove_layers(removed.transformer, ["transformer_blocks.0"])
    layers = save_pruned(removed, root / "layers", {"ratio": 0.5})
    res = prune_depth(pipe, 0.5, train_steps=0, n_images=2, num_inference_steps=3, progress=False)
    depth = save_depth(res.pipe, root / "depth", res.info())
    return {"dipgo-layers.json": layers, "dipgo-depth.json": depth}


def rewrite(folders, tmp_path, name: str, change) -> object:
    """A copy of the folder holding record ``name``, with ``change(record)`` applied to its record."""
    folder = shutil.copytree(folders[name], tmp_path / "copy")
    record = json.loads((folder / name).read_text())
    change(record)
    (folder / name).write_text(json.dumps(record))
    return folder


def _set(**values):
    return lambda record: record.update(values)


def _drop(key):
    return lambda record: record.pop(key)


COMMON = [(_drop("denoiser"), "denoiser"), (_set(denoiser=3), "denoiser"), (_set(denoiser="vae_x"), "denoiser"),
          (_set(base_config_hash=None), "base_config_hash"), (_set(base_config_hash="0" * 16), "base_config_hash"),
          (_set(base_model_class=[]), "base_model_class"), (_set(params=-1), "params"), (_set(params=2.5), "params"),
          (_set(version=2), "version"), (_drop("format"), "format")]


@pytest.mark.parametrize("change,field", COMMON + [
    (_set(removed="transformer_blocks.0"), "removed"), (_set(removed=[]), "removed"), (_drop("removed"), "removed"),
    (_set(removed=["transformer_blocks.0", "transformer_blocks.0"]), "removed"),
    (_set(removed=["transformer_blocks.0", 1]), "removed"),
    (_set(removed=["transformer_blocks.9"]), "removed"),                       # not in the base model
    (_set(removed=["transformer_blocks.0", "transformer_blocks.1"]), "removed"),  # the weights say otherwise
])
def test_layer_record_names_the_bad_field(folders, tmp_path, change, field):
    folder = rewrite(folders, tmp_path, "dipgo-layers.json", change)
    with pytest.raises(DipgoError, match=re.escape(repr(field))):
        dipgo.load_pruned(folder)


CONV = {"type": "MergedConv", "c_in": 4, "c_out": 4, "kernel": 3, "stride": 1, "padding": 1, "temb_dim": None,
        "time_act": False}


def _spec(**values):
    return lambda record: record["merged"]["transformer_blocks.0"].update(values)


@pytest.mark.parametrize("change,field", COMMON + [
    (_drop("merged"), "merged"), (_set(merged={}), "merged"), (_set(merged=["transformer_blocks.0"]), "merged"),
    (_spec(type="MergedMagic"), "merged['transformer_blocks.0']"),
    (_spec(type=["MergedLinear"]), "merged['transformer_blocks.0']"),
    (_spec(dim=0), "merged['transformer_blocks.0'].dim"), (_spec(dim="16"), "merged['transformer_blocks.0'].dim"),
    (_spec(dim=True), "merged['transformer_blocks.0'].dim"),
    (_spec(type="MergedLinear"), "merged"),                                     # the weights say otherwise
    (_set(merged={"transformer_blocks.0": {**CONV, "kernel": -3}}), "merged['transformer_blocks.0'].kernel"),
    (_set(merged={"transformer_blocks.0": {**CONV, "temb_dim": 0}}), "merged['transformer_blocks.0'].temb_dim"),
    (_set(merged={"transformer_blocks.0": {**CONV, "time_act": "yes"}}), "merged['transformer_blocks.0'].time_act"),
    (_set(merged={"transformer_blocks.7": {"type": "MergedLinear", "dim": 16}}), "merged"),
])
def test_depth_record_names_the_bad_field(folders, tmp_path, change, field):
    folder = rewrite(folders, tmp_path, "dipgo-depth.json", change)
    with pytest.raises(DipgoError, match=re.escape(repr(field))):
        dipgo.load_pruned(folder)


@pytest.mark.parametrize("name", ["dipgo-layers.json", "dipgo-depth.json"])
def test_records_load_and_refuse_corrupt_ones(folders, tmp_path, name):
    back = dipgo.load_pruned(folders[name])
    assert all(not torch.isnan(p).any() for p in back.transformer.parameters())
    folder = shutil.copytree(folders[name], tmp_path / "copy")
    text = (folder / name).read_text()
    for bad in (text[: len(text) // 2], "[1, 2]", "\x00\xff"):
        (folder / name).write_text(bad)
        with pytest.raises(DipgoError, match="corrupt or truncated|is not a version-1"):
            dipgo.load_pruned(folder)


@pytest.mark.parametrize("content,needle", [
    (b"a cat\nno\x00pe\n", "line 2 holds control characters .*U\\+0000"),
    (b"a cat\n\x1b[31mred\n", "line 2 holds control characters .*U\\+001B"),
    (b"a caf\xc3", "is not UTF-8 text, or is corrupt or truncated"),
    (b"\xff\xfe\x00a", "is not UTF-8 text"),
    (b"\n# nothing\n", "is empty"),
])
def test_prompts_files_name_the_bad_line(tmp_path, content, needle):
    path = tmp_path / "p.txt"
    path.write_bytes(content)
    with pytest.raises(DipgoError, match=f"prompts file .*p.txt {needle}"):
        read_prompts(path)


def test_prompts_files_read_text_with_tabs_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffa cat\twith a hat\r\n  # a comment\r\nun café\n".encode())
    assert read_prompts(path) == ["a cat\twith a hat", "un café"]
    with pytest.raises(DipgoError, match="is not a file"):
        read_prompts(tmp_path)
