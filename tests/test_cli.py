"""The dipgo command line: info (table and JSON), sample, and its error messages."""

import json

import pytest
from PIL import Image

from dipgo.cli import main


def test_info_json_keys(capsys):
    assert main(["info", "mnist-sd", "--json", "--runs", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"blocks", "macs_per_call", "params", "latency_ms"} <= set(info)
    names = [b["name"] for b in info["blocks"]]
    assert names == [f"down_blocks.{i}" for i in range(4)] + ["mid_block"] + [f"up_blocks.{i}" for i in range(4)]
    assert all(b["macs"] > 0 and b["params"] > 0 for b in info["blocks"])
    assert sum(b["macs"] for b in info["blocks"]) < info["macs_per_call"]  # conv_in/out run outside blocks
    assert info["latency_ms"] > 0
    assert info["input_shape"] == [1, 4, 8, 8]


def test_info_table_for_dit(capsys):
    assert main(["info", "mnist-dit", "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert "transformer_blocks.7" in out and "latency per call" in out


def test_sample_writes_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", "mnist-dit", "--n", "4", "--steps", "3", "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.size == (4 * (96 + 2) + 2, 96 + 2 + 2)  # 32-px digits shown at 3x


@pytest.mark.parametrize("argv,needle", [
    (["info", "no-such-model"], "unknown model 'no-such-model'"),
    (["sample", "./missing/folder"], "does not exist"),
    (["sample", "mnist-dit", "--label", "12", "--steps", "2", "--n", "1"], "out of range"),
    (["prune", "mnist-sd", "--ratio", "1.5"], "argument --ratio: must be a number in (0, 1)"),
    (["prune", "mnist-sd", "--ratio", "0.5", "--blocks", "down_blocks.0,nope"], "unknown block name"),
    (["show", "/nonexistent/schedule.json"], "does not exist"),
])
def test_bad_model_exits_2_with_message(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_prune_show_and_sample_with_schedule(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["prune", "mnist-sd", "--ratio", "0.4,0.6", "--steps", "4", "--iterations", "2", "--batch", "1",
                 "--effort", "quick", "--evaluations", "8", "--held-out", "1",
                 "--out", str(out)]) == 0
    paths = [tmp_path / "s-r0.4.json", tmp_path / "s-r0.6.json"]
    assert all(p.is_file() for p in paths)
    # the search's default checkpoint goes once the schedules are written: a prune with other settings to the
    # same --out must not find it and refuse ("from a different search")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-r0.4.json", "s-r0.6.json"]
    data = json.loads(paths[1].read_text())
    assert data["num_inference_steps"] == 4 and data["scheduler"] == "DDIMScheduler"
    assert data["requested_ratio"] == 0.6 and data["model_class"] == "UNet2DConditionModel"
    assert main(["show", str(paths[1])]) == 0
    assert "up_blocks.3" in capsys.readouterr().out
    grid = tmp_path / "grid.png"
    assert main(["sample", "mnist-sd", "--schedule", str(paths[1]), "--compare", "--n", "3", "--out", str(grid)]) == 0
    assert Image.open(grid).height > 2 * 34  # two captioned rows: full model and dipgo
    capsys.readouterr()
    # --steps other than the schedule's is the explicit opt-in to a step-count transfer, and says so
    assert main(["sample", "mnist-sd", "--schedule", str(paths[1]), "--steps", "6", "--n", "1",
                 "--out", str(grid)]) == 0
    assert "searched for 4 steps; its gates are mapped to 6 steps" in capsys.readouterr().out


def test_cli_output_is_quiet(capsys, tmp_path):
    """No "requires torchvision" notices, no nested "Loading pipeline components" bars, no scipy noise."""
    assert main(["sample", "mnist-dit", "--n", "2", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert main(["info", "mnist-sd", "--runs", "2"]) == 0
    err = capsys.readouterr().err
    assert "torchvision" not in err and "Loading pipeline components" not in err
