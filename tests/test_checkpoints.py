"""Checkpoints are read with ``weights_only=True``: a crafted pickle is refused before it can run code, with a
message naming the file; a checkpoint whose fields are missing or of the wrong type is refused naming the field."""

import pathlib
import pickle

import pytest
import torch

from dipgo.cache.search import Search, SearchCheckpoint, SearchConfig
from dipgo.errors import DipgoError
from dipgo.fileio import read_checkpoint
from dipgo.models.distill import DistillConfig, _read


def leave_marker(path: str) -> None:
    pathlib.Path(path).touch()


class Touch:
    """Unpickling this calls ``leave_marker(marker)``: harmless, and visible if it ever ran."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return leave_marker, (str(self.marker),)


def crafted(tmp_path, legacy: bool = False) -> tuple[pathlib.Path, pathlib.Path]:
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    state = {"iteration": 0, "history": [], "payload": Touch(marker)}
    if legacy:  # a plain pickle, not torch's zip format
        path.write_bytes(pickle.dumps(state, protocol=4))
    else:
        torch.save(state, path)
    return path, marker


@pytest.mark.parametrize("legacy", [False, True])
def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path, legacy):
    path, marker = crafted(tmp_path, legacy)
    with pytest.raises(DipgoError, match=r"evil\.pt is not a dipgo checkpoint or is unsafe to load") as err:
        SearchCheckpoint(path)._read()
    assert legacy or "leave_marker" in str(err.value)  # it names what the file tried to call, when torch says
    with pytest.raises(DipgoError, match="distillation checkpoint .*evil.pt is not a dipgo checkpoint or is unsafe"):
        _read(path, DistillConfig(steps=2), {})
    assert not marker.exists()


def test_a_search_resumed_from_a_crafted_checkpoint_refuses_it(sd_pipe, tmp_path):
    path, marker = crafted(tmp_path)
    with pytest.raises(DipgoError, match="unsafe to load"):
        Search(sd_pipe, SearchConfig(ratio=0.5, num_inference_steps=4, iterations=1, batch=1), checkpoint_path=path)
    assert not marker.exists()


def test_fields_are_checked_by_name(tmp_path):
    path = tmp_path / "c.pt"
    fields = {"step": int, "rng": torch.Tensor, "ema": (list, type(None))}
    good = {"step": 3, "rng": torch.zeros(4, dtype=torch.uint8), "ema": None}
    torch.save(good, path)
    assert read_checkpoint(path, "x checkpoint", fields)["step"] == 3
    for name, value in [("step", 2.5), ("step", True), ("rng", [1, 2]), ("ema", {})]:
        torch.save({**good, name: value}, path)
        with pytest.raises(DipgoError, match=f"x checkpoint .*c.pt: field '{name}' must be"):
            read_checkpoint(path, "x checkpoint", fields)
    torch.save({k: v for k, v in good.items() if k != "rng"}, path)
    with pytest.raises(DipgoError, match="has no field 'rng'"):
        read_checkpoint(path, "x checkpoint", fields)
    torch.save([good], path)
    with pytest.raises(DipgoError, match="not a dipgo checkpoint"):
        read_checkpoint(path, "x checkpoint", fields)
