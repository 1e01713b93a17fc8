"""LAPTOP-Diff layer pruning: candidates, exact removal, criteria, knapsack selection, folders, CLI.
Tiny random pipelines from tests/families.py (and the zoo for the CLI)."""

import copy
import itertools
import json
import random

import numpy as np
import pytest
import torch
from families import FAMILIES

from dipgo.cli import main
from dipgo.errors import DipgoError
from dipgo.layers import layer_scores, load_pruned, prune_layers, save_pruned
from dipgo.layers.candidates import candidates, removed
from dipgo.layers.criteria import additivity, handcrafted_order, output_loss, spearman
from dipgo.models.calibration import Calibration
from dipgo.models.costs import count_macs
from dipgo.models.data import capture_calls, output_of
from dipgo.models.pipelines import capture_denoiser_call, default_calibration
from dipgo.models.select import select
from dipgo.models.surgery import Candidate, candidate_names, remove_layers

PROMPTS = Calibration.prompts(["a red cube", "a blue ball"])


@pytest.fixture(scope="module")
def sd():
    return FAMILIES["sd"]()


def _call(pipe, cal=PROMPTS):
    return capture_denoiser_call(pipe, cal, height=16, width=16)


def test_candidates_of_unet_and_dit(sd):
    names = candidate_names(sd.unet)
    assert "mid_block.resnets.0" in names and "mid_block.attentions.0" in names
    assert any(n.startswith("down_blocks") and ".attentions." in n for n in names)
    assert any(n.startswith("up_blocks") and ".resnets." in n for n in names)
    cands = candidates(sd.unet, _call(sd))
    assert all(c.params > 0 and c.macs > 0 for c in cands)
    dit = FAMILIES["dit"]()
    assert candidate_names(dit.transformer) == [f"transformer_blocks.{i}" for i in range(len(
        dit.transformer.transformer_blocks))]
    with pytest.raises(DipgoError, match="no candidate layers"):
        candidate_names(torch.nn.Linear(2, 2))
    with pytest.raises(DipgoError, match="unknown layer name"):
        candidate_names(sd.unet, ["nope"])


def test_removal_is_exactly_the_shortcut(sd):
    """A removed resnet = the resnet with its conv path zeroed; a removed attention = the identity."""
    args, kwargs = _call(sd)
    with torch.no_grad():
        for name, zero in (("up_blocks.0.resnets.1", "conv2"), ("mid_block.attentions.0", "proj_out")):
            reference = copy.deepcopy(sd.unet)
            layer = reference.get_submodule(f"{name}.{zero}")
            layer.weight.zero_()
            layer.bias.zero_()
            expected = output_of(reference(*args, **kwargs))
            with removed(sd.unet, [name]):
                got = output_of(sd.unet(*args, **kwargs))
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        full = output_of(sd.unet(*args, **kwargs))
        state = {k: v.clone() for k, v in sd.unet.state_dict().items()}
        kinds = [(n, type(m)) for n, m in sd.unet.named_modules()]
        with removed(sd.unet, ["up_blocks.0.resnets.1", "mid_block.attentions.0"]):
            inside = output_of(sd.unet(*args, **kwargs))  # the removed forms run inside the context
        assert not torch.equal(inside, full)
        # put back exactly: the same modules and weights, and bitwise the same output
        assert [(n, type(m)) for n, m in sd.unet.named_modules()] == kinds
        assert sd.unet.state_dict().keys() == state.keys()
        assert all(torch.equal(v, state[k]) for k, v in sd.unet.state_dict().items())
        assert torch.equal(output_of(sd.unet(*args, **kwargs)), full)


def test_knapsack_is_optimal_and_greedy_is_not_better():
    rng = random.Random(0)
    for _ in range(20):
        cands = [Candidate(f"l{i}", "module", rng.randint(1, 50), 1) for i in range(9)]
        scores = {c.name: rng.random() for c in cands}
        total = sum(c.params for c in cands) + 20
        ratio = rng.uniform(0.1, 0.6)
        best = min(sum(scores[c.name] for c in s) for k in range(len(cands) + 1)
                    for s in itertools.combinations(cands, k) if sum(c.params for c in s) >= ratio * total)
        exact = select(cands, scores, ratio, total, method="knapsack", bins=20000)
        greedy = select(cands, scores, ratio, total, method="greedy")
        assert exact.removed >= ratio - 1e-9 and greedy.removed >= ratio - 1e-9
        assert exact.score == pytest.approx(best, abs=1e-6)
        assert greedy.score >= exact.score - 1e-9


def test_selection_errors():
    cands = [Candidate("a", "module", 10, 1), Candidate("b", "module", 10, 1)]
    with pytest.raises(DipgoError, match=r"ratio must be in \(0, 1\)"):
        select(cands, {"a": 0, "b": 0}, 1.2, 100)
    with pytest.raises(DipgoError, match="cannot be reached.*at most 0.200"):
        select(cands, {"a": 0, "b": 0}, 0.5, 100)


def test_criteria_and_additivity(sd):
    cal = PROMPTS
    calls = capture_calls(sd, cal, n_images=2, num_inference_steps=4, guidance_scale=2.0, height=16, width=16)
    assert len(calls.calls) == 2  # 4 calls per generation, every 2nd kept, one batch
    for criterion in ("output", "magnitude", "similarity", "handcrafted"):
        cands, scores, _ = layer_scores(sd, criterion, cal, n_images=2, num_inference_steps=4, guidance_scale=2.0,
                                        progress=False, call_kwargs={"height": 16, "width": 16})
        assert set(scores) == {c.name for c in cands}
        assert all(s >= 0 for s in scores.values())
    single = layer_scores(sd, "output", cal, n_images=2, num_inference_steps=4, guidance_scale=2.0,
                          progress=False, call_kwargs={"height": 16, "width": 16})[1]
    some = sorted(single)[:3]  # the output criterion is the output loss of removing the layer alone
    assert [single[n] for n in some] == pytest.approx([output_loss(sd.unet, calls, [n]) for n in some], rel=1e-5)
    add = additivity(sd.unet, calls, single, sets=6, seed=1)
    assert len(add.joint) == 6 and -1 <= add.spearman <= 1 and -1 <= add.pearson <= 1
    rng, names = random.Random(1), list(single)  # the same draws: each joint loss is that set's, summed its parts'
    for summed, joint, size in zip(add.summed, add.joint, add.sizes, strict=True):
        chosen = rng.sample(names, rng.randint(2, max(2, len(names) // 2)))
        assert size == len(chosen) and summed == pytest.approx(sum(single[n] for n in chosen))
        assert joint == pytest.approx(output_loss(sd.unet, calls, chosen), rel=1e-5)
    assert add.pearson == pytest.approx(float(np.corrcoef(add.summed, add.joint)[0, 1]))
    ranks = [np.argsort(np.argsort(v)) for v in (add.summed, add.joint)]
    assert add.spearman == pytest.approx(float(np.corrcoef(*ranks)[0, 1]))
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    order = handcrafted_order(candidates(sd.unet, _call(sd)))
    assert order[0].startswith("mid_block")


def test_prune_save_load_round_trip(sd, tmp_path):
    res = prune_layers(sd, 0.2, "magnitude", calibration=PROMPTS, guidance_scale=2.0, num_inference_steps=4,
                       n_images=2, progress=False, call_kwargs={"height": 16, "width": 16})
    assert res.selection.removed >= 0.2 and res.params < res.params_full and res.macs < res.macs_full
    assert sum(p.numel() for p in sd.unet.parameters()) == res.params_full  # the original is untouched
    folder = save_pruned(res.pipe, tmp_path / "pruned", res.info())
    back = load_pruned(folder)
    assert type(back) is type(sd) and type(back.unet) is type(sd.unet)
    args, kwargs = _call(sd)
    with torch.no_grad():
        torch.testing.assert_close(output_of(back.unet(*args, **kwargs)), output_of(res.pipe.unet(*args, **kwargs)))
    assert count_macs(back.unet, args, kwargs).total == res.macs  # removed layers cost nothing
    assert sum(p.numel() for p in back.unet.parameters()) == res.params
    with pytest.raises(DipgoError, match="not from this"):
        load_pruned(folder, base=FAMILIES["sdxl"]())
    load_pruned(folder, base=sd)
    cfg = folder / "unet" / "config.json"
    data = json.loads(cfg.read_text())
    data["layers_per_block"] = 2
    cfg.write_text(json.dumps(data))
    with pytest.raises(DipgoError, match="does not match"):
        load_pruned(folder)
    with pytest.raises(DipgoError, match="not a dipgo layer-pruned folder"):
        load_pruned(tmp_path)


def test_remove_twice_and_schedule_hash(sd):
    from dipgo.models.identity import config_hash

    unet = copy.deepcopy(sd.unet)
    before = config_hash(unet)
    remove_layers(unet, ["mid_block.attentions.0"])
    assert config_hash(unet) != before  # a DiP-GO schedule of the full model is refused on the pruned one
    with pytest.raises(DipgoError, match="already removed"):
        remove_layers(unet, ["mid_block.attentions.0"])


def test_layers_cli(tmp_path, capsys):
    assert main(["layers", "mnist-sd", "--scores", "--criterion", "output", "--calib-images", "2", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "mid_block.resnets.0" in out and "output score" in out
    assert main(["layers", "mnist-sd", "--ratio", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert "argument --ratio: must be a number in (0, 1)" in capsys.readouterr().err
    assert main(["layers", "mnist-sd", "--ratio", "0.99", "--criterion", "magnitude", "--out",
                 str(tmp_path / "x")]) == 2
    assert "cannot be reached" in capsys.readouterr().err
    folder = tmp_path / "half"
    assert main(["layers", "mnist-sd", "--ratio", "0.3", "--criterion", "magnitude", "--calib-images", "2",
                 "--steps", "3", "--out", str(folder)]) == 0
    assert main(["info", str(folder), "--runs", "2"]) == 0
    assert "mnist-sd" not in capsys.readouterr().err
    assert json.loads((folder / "dipgo.json").read_text())["pruned_from"] == "mnist-sd"


def test_default_calibration_for_layers_is_generic(sd):
    assert default_calibration(sd).generic


def test_retraining_end_to_end_and_zoo_data(sd, sd_pipe, tmp_path):
    from dipgo import zoo
    from dipgo.models.data import teacher_set

    data = teacher_set(sd, PROMPTS, n=4, num_inference_steps=3, guidance_scale=2.0, batch=4, progress=False,
                       height=16, width=16)
    assert data.x0.shape[0] == 4 and data.cond["encoder_hidden_states"].shape[0] == 4
    res = prune_layers(sd, 0.2, "magnitude", calibration=PROMPTS, guidance_scale=2.0, num_inference_steps=3,
                       n_images=2, progress=False, retrain_steps=3, data=data, distill_kwargs={"batch": 2},
                       checkpoint=tmp_path / "d.pt", call_kwargs={"height": 16, "width": 16})
    assert len(res.history) == 3 and (tmp_path / "d.pt").is_file()
    assert all(p.requires_grad for p in sd.unet.parameters())  # the teacher is handed back as it was given
    again = prune_layers(sd, 0.2, "magnitude", calibration=PROMPTS, guidance_scale=2.0, num_inference_steps=3,
                         n_images=2, progress=False, retrain_steps=1, data=data, distill_kwargs={"batch": 2},
                         call_kwargs={"height": 16, "width": 16})
    assert len(again.history) == 1
    source = zoo.resolve("mnist-sd")
    train = source.training_set(sd_pipe, default_calibration(sd_pipe, defaults=source.defaults))
    assert train.x0.shape == (5000, 4, 8, 8) and train.cond["encoder_hidden_states"].shape[0] == 5000
    with pytest.raises(DipgoError, match="flow matching"):
        prune_layers(FAMILIES["flux"](), 0.2, "magnitude", retrain_steps=1)
