"""The two weight-pruning methods' shared API shape: typed configs checked on creation, ``prune(pipe,
config)`` returning a :class:`PrunedModel`, and the keyword aliases ``prune_layers`` / ``prune_depth``
giving the same result. Tiny random pipelines from tests/families.py."""

from __future__ import annotations

import functools

import pytest
from families import tiny_dit, tiny_sd

import dipgo
from dipgo import depth, layers
from dipgo.errors import DipgoError
from dipgo.models.checks import check_ratio
from dipgo.models.distill import DistillConfig
from dipgo.models.result import PrunedModel

FAST = dict(n_images=2, num_inference_steps=3)
SMALL = {"height": 16, "width": 16}


@functools.cache
def _sd():
    return tiny_sd()


@functools.cache
def _dit():
    return tiny_dit()


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1, "half"])
def test_a_bad_ratio_names_the_field_and_what_it_is_a_share_of(ratio):
    with pytest.raises(DipgoError, match=r"ratio must be (a number )?in \(0, 1\) \(the removed share of the "
                                         r"denoiser's parameters\)"):
        layers.LayersConfig(ratio)
    with pytest.raises(DipgoError, match=r"MACs per call"):
        layers.LayersConfig(ratio, by="macs")
    with pytest.raises(DipgoError, match=r"ratio must be (a number )?in \(0, 1\) \(the share of the candidate"):
        depth.DepthConfig(ratio)
    with pytest.raises(DipgoError, match=r"parameters\) that pruning saves|parameters that pruning saves"):
        depth.DepthConfig(ratio, by="params")


def test_check_ratio_is_the_one_place():
    assert check_ratio(0.25, "a share") == 0.25
    with pytest.raises(DipgoError, match=r"keep must be in \(0, 1\) \(a share\), got 2"):
        check_ratio(2, "a share", name="keep")


def test_other_bad_settings_name_their_field():
    for kwargs, match in (({"criterion": "vibes"}, "unknown criterion 'vibes'"),
                          ({"by": "depth"}, "unknown by 'depth'"),
                          ({"method": "order"}, "unknown selection method 'order'"),
                          ({"n_images": 0}, "n_images must be an integer >= 1"),
                          ({"distill": 3}, "distill must be a DistillConfig"),
                          ({"distill": {"lr": -1.0}}, "lr must be > 0")):
        with pytest.raises(DipgoError, match=match):
            layers.LayersConfig(0.3, **kwargs)
    for kwargs, match in (({"mode": "sudden"}, "unknown mode 'sudden'"),
                          ({"by": "layers"}, "unknown by 'layers'"),
                          ({"ramp_share": 0.0}, r"ramp_share must be in \(0, 1\]"),
                          ({"num_inference_steps": 0}, "num_inference_steps must be an integer >= 1"),
                          ({"distill": {"ema": 1.0}}, r"ema must be in \[0, 1\)")):
        with pytest.raises(DipgoError, match=match):
            depth.DepthConfig(0.3, **kwargs)


def test_defaults_are_one_shot_and_a_dict_makes_the_nested_config():
    assert layers.LayersConfig(0.3).distill.steps == 0 and depth.DepthConfig(0.3).distill.steps == 0
    config = depth.DepthConfig(0.3, distill={"steps": 5, "batch": 2})
    assert config.distill == DistillConfig(steps=5, batch=2)
    with pytest.raises(DipgoError, match="config must be a LayersConfig"):
        layers.prune(_sd(), depth.DepthConfig(0.3))
    with pytest.raises(DipgoError, match="config must be a DepthConfig"):
        depth.prune(_dit(), layers.LayersConfig(0.3))


def test_prune_layers_is_prune_with_a_config(tmp_path):
    config = layers.LayersConfig(0.2, "magnitude", guidance_scale=2.0, **FAST)
    new = layers.prune(_sd(), config, progress=False, call_kwargs=SMALL)
    old = layers.prune_layers(_sd(), 0.2, "magnitude", guidance_scale=2.0, progress=False, call_kwargs=SMALL, **FAST)
    assert isinstance(new, PrunedModel) and isinstance(old, layers.LayerPruning)
    assert new.selection == old.selection and (new.params, new.macs) == (old.params, old.macs)
    assert {k: v for k, v in new.info().items() if k != "seconds"} == \
        {k: v for k, v in old.info().items() if k != "seconds"}
    assert {"criterion", "by", "ratio", "method", "removed_share", "params_full", "macs_full", "macs",
            "retrain_steps"} <= set(new.info())
    back = dipgo.load_pruned(new.save(tmp_path / "layers"))
    assert sum(p.numel() for p in back.unet.parameters()) == new.params


def test_prune_depth_is_prune_with_a_config(tmp_path):
    scored = depth.depth_scores(_dit(), progress=False, **FAST)
    new = depth.prune(_dit(), depth.DepthConfig(0.5, mode="abrupt", **FAST), progress=False, scored=scored)
    old = depth.prune_depth(_dit(), 0.5, mode="abrupt", progress=False, scored=scored, **FAST)
    assert isinstance(new, depth.DepthPruning) and isinstance(new, PrunedModel)
    assert new.selection == old.selection and (new.params, new.macs) == (old.params, old.macs)
    assert {"mode", "by", "ratio", "blocks", "candidates", "params_full", "params", "macs_full", "macs",
            "train_steps"} <= set(new.info())
    removed = depth.prune(_dit(), depth.DepthConfig(0.5, mode="remove", **FAST), progress=False, scored=scored)
    assert (removed.save(tmp_path / "removed") / "dipgo-layers.json").is_file()  # removal writes a layers folder
    back = dipgo.load_pruned(new.save(tmp_path / "merged"))
    assert sum(p.numel() for p in back.transformer.parameters()) == new.params
