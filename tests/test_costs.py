"""The MAC counter against hand counts on tiny models, and the latency helper."""

import pytest
import torch
from torch import nn

from dipgo.models.costs import count_macs, count_params, measure_latency


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)          # 8 out ch * 3 in ch * 3*3 kernel per output pixel
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = self.up(self.down(self.conv(x)))                # (N, 4, 16, 16)
        tokens = x.flatten(2).transpose(1, 2)               # (N, 256, 4)
        q = tokens.view(len(x), 1, 256, 4)
        attn = nn.functional.scaled_dot_product_attention(q, q, q)
        return self.head(attn.squeeze(1))


def hand_count(n: int) -> dict:
    conv = n * 16 * 16 * 8 * (3 * 3 * 3)
    down = n * 8 * 8 * 8 * (4 * 3 * 3)                     # groups=2: each output sees 4 input channels
    up = n * 8 * 8 * 8 * (4 * 2 * 2)                       # every input pixel feeds 4 ch x 2x2 outputs
    attn = n * 1 * 256 * 256 * (4 + 4)                     # Q K^T and A V
    head = n * 256 * 4 * 5
    return {"conv": conv, "down": down, "up": up, "attn": attn, "head": head}


@pytest.mark.parametrize("n", [1, 3])
def test_mac_counter_matches_hand_count(n):
    model = Tiny()
    counter = count_macs(model, (torch.randn(n, 3, 16, 16),),
                         scopes={"conv": model.conv, "up": model.up, "head": model.head})
    hand = hand_count(n)
    assert counter.total == sum(hand.values())
    assert counter.by_scope["conv"] == hand["conv"]
    assert counter.by_scope["up"] == hand["up"]
    assert counter.by_scope["head"] == hand["head"]


def test_bmm_and_nested_scopes():
    outer = nn.Sequential(nn.Linear(6, 7, bias=False), nn.Sequential(nn.Linear(7, 2)))
    counter = count_macs(outer, (torch.randn(5, 6),), scopes={"all": outer, "inner": outer[1]})
    assert counter.total == 5 * 6 * 7 + 5 * 7 * 2
    assert counter.by_scope["all"] == counter.total
    assert counter.by_scope["inner"] == 5 * 7 * 2
    a, b = torch.randn(4, 3, 5), torch.randn(4, 5, 2)
    assert count_macs(lambda_module(torch.bmm), (a, b)).total == 4 * 3 * 5 * 2


def lambda_module(fn):
    class Wrap(nn.Module):
        def forward(self, *args):
            return fn(*args)
    return Wrap()


def test_hooks_are_removed_after_counting():
    model = Tiny()
    count_macs(model, (torch.randn(1, 3, 16, 16),), scopes={"conv": model.conv})
    assert not model.conv._forward_hooks and not model.conv._forward_pre_hooks


def test_params_and_latency():
    assert count_params(nn.Linear(3, 4)) == 16
    calls = []
    lat = measure_latency(lambda: calls.append(1), runs=5, warmup=2)
    assert len(calls) == 7 and lat.runs == 5
    assert lat.min_ms <= lat.p25_ms <= lat.median_ms <= lat.p75_ms <= lat.max_ms
    with pytest.raises(ValueError, match="runs"):
        measure_latency(lambda: None, runs=0)
