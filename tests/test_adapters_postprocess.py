"""Block graphs, the dependency cascade and scores -> schedule post-processing."""

import pytest
import torch

from dipgo.cache.postprocess import pruned_ratio, threshold_for_ratio
from dipgo.errors import DipgoError
from dipgo.models.adapters import block_graph, effective_keep
from dipgo.models.costs import CostProfile


def test_unet_graph_and_cascade(sd_pipe):
    g = block_graph(sd_pipe.unet)
    assert g.names[0] == "down_blocks.0" and g.names[-1] == "up_blocks.3" and "mid_block" in g.names
    assert g.consumers["down_blocks.0"] == ["down_blocks.1", "up_blocks.3"]
    assert g.output_block == "up_blocks.3"
    keep = torch.ones(3, len(g.names))
    keep[1, g.names.index("up_blocks.3")] = 0          # reuse the last up block: nothing else is needed
    keep[2, g.names.index("up_blocks.1")] = 0          # reuse up_blocks.1: up_blocks.0, mid, down_blocks.3, .2 go
    eff = effective_keep(keep, g)
    assert eff[0].sum() == len(g.names)
    assert eff[1].sum() == 0
    computed = {n for n, v in zip(g.names, eff[2].tolist(), strict=True) if v}
    assert computed == {"down_blocks.0", "down_blocks.1", "up_blocks.2", "up_blocks.3"}


def test_transformer_graph_has_no_cascade(dit_pipe):
    g = block_graph(dit_pipe.transformer)
    assert len(g.names) == 8 and set(g.modes.values()) == {"residual"}
    keep = torch.zeros(2, 8)
    keep[:, 3] = 1
    assert torch.equal(effective_keep(keep, g), keep)


def test_custom_names_and_errors():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    assert block_graph(model, names=["0", "2"]).names == ["0", "2"]
    with pytest.raises(DipgoError, match=r"unknown block name\(s\) \['9'\]"):
        block_graph(model, names=["0", "9"])
    with pytest.raises(DipgoError, match="no block adapter for Sequential"):
        block_graph(model)
    with pytest.raises(DipgoError, match="granularity"):
        block_graph(model, granularity="atoms")


def test_bisection_reaches_any_ratio(sd_pipe):
    g = block_graph(sd_pipe.unet)
    profile = CostProfile(g.names, [30, 25, 8, 1, 4, 4, 25, 89, 79], 270)
    torch.manual_seed(0)
    scores = torch.rand(50, len(g.names))
    for ratio in (0.3, 0.5, 0.6, 0.8, 0.9):
        mask, achieved = threshold_for_ratio(scores, ratio, g, profile)
        assert abs(achieved - ratio) <= 0.0125
        assert mask[0].sum() == len(g.names)                 # call 0 stays full
        assert torch.equal(effective_keep(mask, g), mask)   # the cascade is already applied
        assert achieved == pytest.approx(pruned_ratio(mask, profile))
    with pytest.raises(DipgoError, match=r"ratio must be in \(0, 1\)"):
        threshold_for_ratio(scores, 1.2, g, profile)
    with pytest.raises(DipgoError, match="out of reach"):
        threshold_for_ratio(scores[:2], 0.9, g, profile)    # 2 calls, call 0 full: at most ~0.5
