"""UPDP depth pruning end to end on tiny random DiT and SD pipelines (models the zoo does not ship):
choice, progressive training, merge, save/load, composition with DiP-GO, and bad input."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from families import tiny_dit, tiny_sd
from torch import nn

import dipgo
from dipgo.depth import depth_scores, prune_depth, ramp, save_depth
from dipgo.depth.forms import MergedConv, MergedTransformer, PrunedForm
from dipgo.depth.supernet import depth_candidates
from dipgo.errors import DipgoError
from dipgo.models.costs import count_macs
from dipgo.models.data import TrainingSet, output_of
from dipgo.models.pipelines import capture_denoiser_call, default_calibration
from dipgo.models.surgery import Candidate

FAST = dict(n_images=2, num_inference_steps=3, progress=False)


@functools.cache
def _dit():
    return tiny_dit()


@functools.cache
def _sd():
    return tiny_sd()


def _data(pipe, n=8) -> TrainingSet:
    """A tiny training set of random latents with the calibration conditioning (fast, deterministic)."""
    from dipgo.models.data import conditional_kwargs

    cal = default_calibration(pipe)
    g = torch.Generator().manual_seed(0)
    den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    c = den.config
    x0 = torch.randn(n, c.in_channels, c.sample_size, c.sample_size, generator=g)
    kw = conditional_kwargs(pipe, cal, cal.cycle(n))
    cond = {k: v for k, v in kw.items() if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n}
    static = {k: v for k, v in kw.items() if k not in cond}
    arg = "sample" if hasattr(pipe, "unet") else "hidden_states"
    return TrainingSet(x0, cond, static, arg, "timestep")


def test_ramp_goes_to_one_and_stays():
    lams = [ramp(s, 10, 0.5) for s in range(10)]
    assert lams[0] == pytest.approx(0.2) and lams[4] == 1.0 and lams[-1] == 1.0
    assert all(a <= b for a, b in zip(lams, lams[1:], strict=False))


def test_candidates_are_blocks_with_forms():
    assert depth_candidates(_dit().transformer) == ["transformer_blocks.0", "transformer_blocks.1"]
    names = depth_candidates(_sd().unet)
    assert names and all(".resnets." in n for n in names)  # attentions have no linear form
    with pytest.raises(DipgoError, match="Transformer2DModel has no pruned form"):
        depth_candidates(_sd().unet, ["down_blocks.1.attentions.0"])


@pytest.mark.parametrize("make", [_dit, _sd], ids=["dit", "sd"])
def test_progressive_prune_merges_saves_and_loads(make, tmp_path):
    pipe = make()
    res = prune_depth(pipe, 0.5, mode="progressive", train_steps=3, data=_data(pipe),
                      distill_kwargs={"batch": 4, "checkpoint_every": 0}, **FAST)
    den = res.pipe.unet if hasattr(pipe, "unet") else res.pipe.transformer
    assert res.selection.names and len(res.history) == 3
    assert not any(isinstance(m, PrunedForm) for m in den.modules())  # everything merged
    merged = [den.get_submodule(n) for n in res.selection.names]
    assert all(isinstance(m, (MergedConv, MergedTransformer)) for m in merged)
    assert sorted(den._dipgo_merged) == sorted(res.selection.names)
    folder = save_depth(res.pipe, tmp_path / "pruned", res.info())
    info = json.loads((folder / "dipgo-depth.json").read_text())
    assert info["merged"] and info["mode"] == "progressive"
    back = dipgo.load_pruned(folder, base=pipe)
    assert type(back) is type(pipe)
    args, kwargs = capture_denoiser_call(res.pipe, default_calibration(pipe))
    bden = back.unet if hasattr(back, "unet") else back.transformer
    with torch.no_grad():
        torch.testing.assert_close(output_of(bden(*args, **kwargs)), output_of(den(*args, **kwargs)))
    assert count_macs(bden, args, kwargs).total == res.macs
    # the original pipeline is untouched
    orig = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    assert not getattr(orig, "_dipgo_merged", None) and not any(isinstance(m, PrunedForm) for m in orig.modules())


def test_dit_merging_cuts_macs_and_one_shot_is_exact_linearisation():
    """One shot (no training): the merged denoiser computes exactly what the same blocks, linearised and
    calibrated on the same calls but left unmerged, compute; and that differs from the original."""
    import copy

    from dipgo.depth.supernet import calibrate, linearise, set_lam

    pipe = _dit()
    scored = depth_scores(pipe, n_images=2, num_inference_steps=3, progress=False)
    res = prune_depth(pipe, 0.5, mode="abrupt", train_steps=0, scored=scored, **FAST)
    assert res.macs < 0.8 * res.macs_full and res.params < res.params_full
    _, _, calls, (args, kwargs) = scored
    teacher = pipe.transformer
    linear = copy.deepcopy(teacher).eval()
    forms = linearise(linear, res.selection.names)
    calibrate(linear, forms, calls.calls)
    set_lam(forms, 1.0)
    with torch.no_grad():
        merged, unmerged, original = (m(*args, **kwargs).sample for m in (res.pipe.transformer, linear, teacher))
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)  # folding is exact up to float rounding
    assert (unmerged - original).abs().max() > 1e-3  # the linearisation really changed the model


def test_wrong_base_is_refused(tmp_path):
    res = prune_depth(_dit(), 0.5, train_steps=0, **FAST)
    folder = save_depth(res.pipe, tmp_path / "d", res.info())
    with pytest.raises(DipgoError, match="not from this"):
        dipgo.load_pruned(folder, base=_sd())
    with pytest.raises(DipgoError, match="not a dipgo pruned folder"):
        dipgo.load_pruned(tmp_path)
    (folder / "dipgo-depth.json").write_text("{oops")
    with pytest.raises(DipgoError, match="corrupt"):
        dipgo.load_pruned(folder)


def test_merged_model_refuses_the_unpruned_schedule():
    import dipgo
    from dipgo.evaluate.baselines import DeepCache

    full = _dit()
    schedule = DeepCache(2).bind(full, 4, 1.0).schedule  # a schedule of the unpruned transformer
    dipgo.apply(full, schedule)  # fits the model it was made on
    dipgo.remove(full)
    res = prune_depth(_dit(), 0.5, train_steps=0, **FAST)
    with pytest.raises(dipgo.ScheduleError, match="model config hash"):
        dipgo.apply(res.pipe, schedule)
    assert not dipgo.is_applied(res.pipe)


def test_bad_ratios_and_modes():
    pipe = _dit()
    scored = depth_scores(pipe, **FAST)
    with pytest.raises(DipgoError, match=r"ratio must be in \(0, 1\)"):
        prune_depth(pipe, 1.0, scored=scored, **FAST)
    with pytest.raises(DipgoError, match="cannot be reached.*at most"):
        prune_depth(pipe, 0.9, by="params", scored=scored, **FAST)
    with pytest.raises(DipgoError, match="unknown mode"):
        prune_depth(pipe, 0.5, mode="sudden", scored=scored, **FAST)
    # a UNet resnet merged into one 5x5 conv costs more MACs than its two 3x3 convs
    mid = depth_scores(_sd(), names=["mid_block.resnets.0"], **FAST)
    with pytest.raises(DipgoError, match="saves macs"):
        prune_depth(_sd(), 0.3, by="macs", scored=mid, **FAST)


def test_interrupted_training_resumes_exactly(tmp_path, monkeypatch):
    """Progressive: the blend factor comes from the step, so a run killed after its step-2 checkpoint and
    started again equals an uninterrupted one."""
    import dipgo.models.distill as distill_mod

    pipe, data = _dit(), _data(_dit())
    scored = depth_scores(pipe, **FAST)
    kw = dict(mode="progressive", data=data, scored=scored, train_steps=4, **FAST)
    straight = prune_depth(pipe, 0.5, distill_kwargs={"batch": 4, "checkpoint_every": 0}, **kw)
    ckpt = tmp_path / "d.pt"
    real_save = distill_mod._save

    def dying_save(path, student, opt, step, *args):
        real_save(path, student, opt, step, *args)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(distill_mod, "_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        prune_depth(pipe, 0.5, checkpoint=ckpt, distill_kwargs={"batch": 4, "checkpoint_every": 1}, **kw)
    monkeypatch.setattr(distill_mod, "_save", real_save)
    resumed = prune_depth(pipe, 0.5, checkpoint=ckpt, distill_kwargs={"batch": 4, "checkpoint_every": 1}, **kw)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in straight.history], rel=1e-5)
    for a, b in zip(resumed.pipe.transformer.parameters(), straight.pipe.transformer.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(DipgoError, match="different distillation"):
        prune_depth(pipe, 0.5, checkpoint=ckpt, distill_kwargs={"batch": 4, "lr": 3e-4}, **kw)


def test_composes_with_dipgo():
    res = prune_depth(_dit(), 0.5, train_steps=0, **FAST)
    pipe = res.pipe
    schedule = dipgo.prune(pipe, ratio=0.5, num_inference_steps=4, iterations=2, batch=1, progress=False,
                           evaluations=8, held_out=1, references=0)
    # the schedule's costs are the merged model's: its MACs per call times the calls (twice with CFG)
    assert schedule.macs_full / (schedule.num_calls * res.macs) in (1, 2) and res.macs < res.macs_full
    assert schedule.macs < schedule.macs_full

    def run():
        return pipe(class_labels=[1], num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                    output_type="np").images

    merged = run()
    dipgo.apply(pipe, schedule)
    try:
        out = run()
    finally:
        dipgo.remove(pipe)
    assert out.shape == merged.shape and np.isfinite(out).all()
    assert not np.array_equal(out, merged) or all(len(s) == len(schedule.blocks) for s in schedule.steps)
    assert np.array_equal(run(), merged)  # removed: the merged model alone again
    with pytest.raises(dipgo.ScheduleError):  # searched on the merged model: refused on the unpruned one
        dipgo.apply(_dit(), schedule)


class _NoForms(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 4)


def test_model_without_forms_is_refused():
    with pytest.raises(DipgoError, match="no block with a pruned form"):
        depth_candidates(_NoForms())


def test_depth_cli(tmp_path, capsys):
    from dipgo.cli import main

    small = ["--calib-images", "2", "--steps", "3"]
    assert main(["depth", "mnist-dit", "--scores", *small]) == 0
    out = capsys.readouterr().out
    assert "transformer_blocks.7" in out and "linearise loss" in out
    assert main(["depth", "mnist-dit", "--ratio", "1.5", "--out", str(tmp_path / "x"), *small]) == 2
    assert "argument --ratio: must be a number in (0, 1)" in capsys.readouterr().err
    folder = tmp_path / "quarter"
    assert main(["depth", "mnist-dit", "--ratio", "0.25", "--train-steps", "2", "--batch", "4", "--out", str(folder),
                 *small]) == 0
    out = capsys.readouterr().out
    assert "merged 2 of 8 blocks (progressive)" in out
    assert json.loads((folder / "dipgo.json").read_text())["pruned_from"] == "mnist-dit"
    trained = torch.load(folder.with_suffix(".distill.pt"), weights_only=True)  # the CLI's training defaults
    assert {k: trained["config"][k] for k in ("lr", "lr_schedule", "warmup", "ema", "p_uncond")} == {
        "lr": 5e-4, "lr_schedule": "cosine", "warmup": None, "ema": 0.999, "p_uncond": 0.1}
    assert trained["ema"] is not None
    assert trained["fingerprint"]["uncond"] == ["class_labels"]  # the guided pipeline's null class was found
    assert main(["info", str(folder), "--runs", "2"]) == 0
    assert "transformer_blocks" in capsys.readouterr().out


def test_depth_ratio_takes_exactly_the_share_of_blocks():
    from dipgo.models.select import select

    cands = [Candidate(f"b{i}", "resnet", 1, 1, 1) for i in range(14)]
    scores = {c.name: float(i) for i, c in enumerate(cands)}
    chosen = select(cands, scores, 0.5, 14, "depth")
    assert len(chosen.names) == 7 and chosen.names == [f"b{i}" for i in range(7)]  # the 7 cheapest, no more
