"""Pruning a research model with its own sampling loop (examples/research_unet.py), and the bad inputs
of the custom-loop and calibration paths."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import dipgo
from dipgo.cli import main
from dipgo.models.calibration import parse_class_labels, read_prompts
from dipgo.models.costs import ExecutionProbe
from dipgo.models.similarity import psnr

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "research_unet.py"
BLOCKS = ["down.0", "down.1", "mid", "up.0", "up.1"]
STEPS = 6


@pytest.fixture(scope="module")
def ex():
    spec = importlib.util.spec_from_file_location("research_unet_for_dipgo", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def model(ex):
    torch.manual_seed(0)
    net = ex.TinyUNet(in_channels=1, image_size=16, base_channels=8, channel_mult=(1, 2), norm_groups=4).eval()
    return net.requires_grad_(False)


def test_prune_a_custom_loop_then_apply_it_to_the_same_loop(ex, model, tmp_path):
    def sample_fn(gens):
        return ex.ddim_sample(model, gens, steps=STEPS, shape=(1, 16, 16))

    schedule = dipgo.prune(sample_fn, denoiser=model, blocks=BLOCKS, ratio=0.4, num_inference_steps=STEPS,
                           iterations=3, batch=2, progress=False, checkpoint=tmp_path / "s.pt")
    assert schedule.blocks == BLOCKS and schedule.num_calls == STEPS and schedule.scheduler == "custom"
    assert schedule.macs < schedule.macs_full
    path = schedule.save(tmp_path / "custom.json")
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    with torch.no_grad():
        full = sample_fn([torch.Generator().manual_seed(i) for i in range(2)])
        x = torch.randn(1, 1, 16, 16)
        probe = ExecutionProbe(model, {b: model.get_submodule(b) for b in BLOCKS}, (x, torch.tensor([10])), {})
        dipgo.apply(model, path)
        try:
            pruned = sample_fn(gens)
            assert "reused from cache" in dipgo.summary(model)
        finally:
            dipgo.remove(model)
        ran = probe.mask()
        probe.remove()
    torch.testing.assert_close(ran, schedule.mask())  # skipped stages did no work in the user's own loop
    assert not torch.equal(pruned, full) and float(psnr(pruned, full).mean()) > 10


def test_custom_loop_bad_inputs(ex, model):
    def never(gens):
        return torch.zeros(len(gens), 1, 16, 16)

    with pytest.raises(dipgo.DipgoError, match="never called the denoiser"):
        dipgo.prune(never, denoiser=model, blocks=BLOCKS, num_inference_steps=STEPS, iterations=1, progress=False)

    def too_many(gens):
        return ex.ddim_sample(model, gens, steps=STEPS + 2, shape=(1, 16, 16))

    with pytest.raises(dipgo.DipgoError, match=f"called the denoiser {STEPS + 2} times.*implies {STEPS}"):
        dipgo.prune(too_many, denoiser=model, blocks=BLOCKS, num_inference_steps=STEPS, iterations=1,
                    progress=False)
    with pytest.raises(dipgo.DipgoError, match="unknown block name"):
        dipgo.prune(too_many, denoiser=model, blocks=["down.0", "middle"], num_inference_steps=STEPS, iterations=1,
                    progress=False)
    with pytest.raises(dipgo.DipgoError, match="denoiser=module"):
        dipgo.prune(lambda gens: None, blocks=BLOCKS, progress=False)
    with pytest.raises(dipgo.DipgoError, match="bare module"):
        dipgo.prune(model, blocks=BLOCKS, progress=False)
    with pytest.raises(dipgo.DipgoError, match="no block adapter for TinyUNet.*blocks="):
        dipgo.prune(too_many, denoiser=model, num_inference_steps=STEPS, iterations=1, progress=False)


def test_prompt_files_and_label_lists(tmp_path):
    with pytest.raises(dipgo.DipgoError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n# only a comment\n")
    with pytest.raises(dipgo.DipgoError, match="is empty"):
        read_prompts(empty)
    good = tmp_path / "p.txt"
    good.write_text("a cat\n\n# skip\n  a dog  \n")
    assert read_prompts(good) == ["a cat", "a dog"]
    assert parse_class_labels("1,5,207") == [1, 5, 207] and parse_class_labels("0-3") == [0, 1, 2, 3]
    with pytest.raises(dipgo.DipgoError, match="integers"):
        parse_class_labels("one,two")


@pytest.mark.parametrize("argv,needle", [
    (["prune", "mnist-sd", "--prompts", "/nonexistent/prompts.txt"], "does not exist"),
    (["prune", "mnist-dit", "--class-labels", "3,1000"], "out of range: this model has classes 0..999"),
    (["prune", "mnist-dit", "--prompts", "EMPTY"], "give class labels, not prompts"),
])
def test_cli_calibration_errors(argv, needle, capsys, tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("a prompt\n")
    argv = [str(empty) if a == "EMPTY" else a for a in argv]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_schedule_records_its_calibration(sd_pipe, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a handwritten digit 3\na handwritten digit 8\n")
    out = tmp_path / "s.json"
    assert main(["prune", "mnist-sd", "--ratio", "0.5", "--steps", "3", "--iterations", "1", "--batch", "1",
                 "--prompts", str(prompts), "--out", str(out)]) == 0
    assert "calibrating on 2 prompts" in capsys.readouterr().out
    cal = dipgo.Schedule.load(out).meta["calibration"]
    assert cal["kind"] == "prompt" and cal["count"] == 2 and len(cal["sha256"]) == 16
