"""UPDP pruned forms: at lam = 0 each is the original block; at lam = 1 its merged op gives the same outputs
(1e-5, fp32) with less depth; bad blocks get clear errors. Blocks come from tiny random diffusers models
and from small timm-style blocks built here."""

from __future__ import annotations

import pytest
import torch
from families import tiny_dit, tiny_pixart, tiny_sd
from torch import nn

from dipgo.depth.forms import (
    FrozenNorm,
    MergedConv,
    MergedLinear,
    compose_kernels,
    pruned_form,
)
from dipgo.errors import DipgoError


def _randomise_norms(form):
    """Frozen-norm statistics that are not the identity, so folding them is actually tested."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n in form.norms():
            n.mean.copy_(torch.randn(n.mean.shape, generator=g) * 0.3)
            n.var.copy_(torch.rand(n.var.shape, generator=g) + 0.5)
            n.weight.copy_(torch.randn(n.weight.shape, generator=g) * 0.5 + 1)
            n.bias.copy_(torch.randn(n.bias.shape, generator=g) * 0.2)


def _check(block, *args, **kwargs):
    """pruned(lam=0) == block; pruned(lam=1) == merged; returns (pruned, merged)."""
    with torch.no_grad():
        ref = block(*args, **kwargs)
        form = pruned_form(block)
        torch.testing.assert_close(form(*args, **kwargs), ref, atol=1e-6, rtol=1e-5)
        _randomise_norms(form)
        form.lam = 1.0
        lin = form(*args, **kwargs)
        merged = form.merge()
        out = merged(*args, **kwargs)
    assert (out - lin).abs().max().item() < 1e-5 * max(1.0, lin.abs().max().item())
    assert not torch.allclose(lin, ref, atol=1e-3)  # linearising changed something: the test is not vacuous
    return form, merged


def test_compose_kernels_is_two_convs():
    g = torch.Generator().manual_seed(0)
    k1, k2 = torch.randn(5, 3, 3, 3, generator=g), torch.randn(4, 5, 3, 3, generator=g)
    x = torch.randn(2, 3, 9, 9, generator=g)
    two = nn.functional.conv2d(nn.functional.conv2d(x, k1), k2)
    one = nn.functional.conv2d(x, compose_kernels(k2, k1))
    torch.testing.assert_close(one, two, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["down_blocks.0.resnets.0", "down_blocks.1.resnets.0", "up_blocks.0.resnets.1"])
def test_unet_resnet_merges_exactly(name):
    unet = tiny_sd().unet
    block = unet.get_submodule(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, block.conv1.in_channels, 8, 8, generator=g)
    temb = torch.randn(2, block.time_emb_proj.in_features, generator=g)
    form, merged = _check(block, x, temb)
    assert isinstance(merged, MergedConv) and merged.weight.shape[-1] == 5
    # another resolution: the edge map is recomputed, still exact
    x2 = torch.randn(1, block.conv1.in_channels, 5, 7, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(merged(x2, temb[:1]), form(x2, temb[:1]), atol=1e-5, rtol=1e-5)


def test_resnet_intermediate_lam_blends_ring():
    """At 0 < lam < 1 the form is between the two ends (continuous in lam)."""
    block = tiny_sd().unet.down_blocks[0].resnets[0]
    x = torch.randn(1, block.conv1.in_channels, 8, 8)
    temb = torch.randn(1, block.time_emb_proj.in_features)
    form = pruned_form(block)
    outs = []
    with torch.no_grad():
        for lam in (0.0, 1e-4, 0.5, 1.0):
            form.lam = lam
            outs.append(form(x, temb))
    assert (outs[1] - outs[0]).abs().max() < 1e-2
    assert (outs[2] - outs[0]).abs().max() > 1e-3 and (outs[2] - outs[3]).abs().max() > 1e-3


def _dit_inputs(block, batch=2, tokens=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, block.ff.net[2].out_features, generator=g)
    return x, torch.tensor([10, 500][:batch]), torch.tensor([1, 3][:batch])


def test_dit_block_merges_exactly():
    block = tiny_dit().transformer.transformer_blocks[1]
    x, t, y = _dit_inputs(block)
    _, merged = _check(block, x, timestep=t, class_labels=y)
    assert not hasattr(merged, "attn1")


def test_dit_merged_fast_conditioning_matches_the_stock_embedding():
    """The merged op's fast path (frequencies computed once, functional calls) is the stock embedding's map;
    training (label dropout) goes through the module itself."""
    block = tiny_dit().transformer.transformer_blocks[1]
    x, t, y = _dit_inputs(block)
    form, merged = _check(block, x, timestep=t, class_labels=y)  # the merged op is built in training mode
    emb = merged.norm1
    assert emb.fast
    with torch.no_grad():
        train = merged(x, timestep=t, class_labels=y)
        merged.eval()
        torch.testing.assert_close(emb.conditioning(t, y, x.dtype), block.norm1.emb(t, y, hidden_dtype=x.dtype),
                                   atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(merged(x, timestep=t, class_labels=y), train, atol=1e-6, rtol=1e-6)
        emb.fast = False
        torch.testing.assert_close(merged(x, timestep=t, class_labels=y), train, atol=1e-6, rtol=1e-6)


def test_dit_merged_loads_the_unfolded_layout():
    """Folders written before the modulation was folded (the whole adaLN map, the norm's scale and shift)
    load into today's merged op and give the same outputs."""
    block = tiny_dit().transformer.transformer_blocks[1]
    x, t, y = _dit_inputs(block)
    form, merged = _check(block, x, timestep=t, class_labels=y)
    a, c = form.bn.affine()
    old = {k: v for k, v in merged.state_dict().items() if not k.startswith("ada.")}
    old.update({"norm1.linear.weight": form.norm1.linear.weight, "norm1.linear.bias": form.norm1.linear.bias,
                "scale": a, "shift": c})
    fresh = type(merged)(block)
    fresh.load_state_dict(old)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, timestep=t, class_labels=y), merged(x, timestep=t, class_labels=y),
                                   atol=1e-6, rtol=1e-5)
    assert fresh.ada.out_features == 3 * fresh.linear.in_features  # the attention's modulation is dropped


def test_pixart_block_keeps_cross_attention():
    pipe = tiny_pixart()
    block = pipe.transformer.transformer_blocks[0]
    dim = block.ff.net[2].out_features
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, dim, generator=g)
    ctx = torch.randn(2, 5, block.attn2.to_k.in_features, generator=g)
    t = torch.randn(2, 6 * dim, generator=g)
    _, merged = _check(block, x, encoder_hidden_states=ctx, timestep=t)
    assert merged.attn2 is block.attn2


# ---- timm-style blocks built here (the generic CNN / ViT paths)


class Mlp(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, h), nn.GELU(), nn.Linear(h, d)


class LayerScale(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        return x * self.gamma


class ViTBlock(nn.Module):
    def __init__(self, d=24, heads=4):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self._attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.attn = lambda x: self._attn(x, x, x, need_weights=False)[0]
        self.mlp, self.ls1, self.ls2 = Mlp(d, 4 * d), LayerScale(d), LayerScale(d)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp.fc2(self.mlp.act(self.mlp.fc1(self.norm2(x)))))


class ConvNeXtBlock(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm, self.mlp = nn.LayerNorm(c), Mlp(c, 4 * c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        h = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        h = self.mlp.fc2(self.mlp.act(self.mlp.fc1(h))) * self.gamma
        return x + h.permute(0, 3, 1, 2)


class InvertedResidual(nn.Module):
    def __init__(self, c_in=8, c_out=8, expand=6, stride=1):
        super().__init__()
        e = c_in * expand
        self.conv_pw, self.bn1 = nn.Conv2d(c_in, e, 1, bias=False), nn.BatchNorm2d(e)
        self.conv_dw, self.bn2 = nn.Conv2d(e, e, 3, stride, 1, groups=e, bias=False), nn.BatchNorm2d(e)
        self.conv_pwl, self.bn3 = nn.Conv2d(e, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.act = nn.ReLU6()
        self.has_skip = stride == 1 and c_in == c_out
        g = torch.Generator().manual_seed(3)
        for bn in (self.bn1, self.bn2, self.bn3):  # non-trivial statistics, as a trained model has
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.weight.data.copy_(torch.randn(bn.num_features, generator=g) * 0.3 + 1)
            bn.bias.data.copy_(torch.randn(bn.num_features, generator=g) * 0.3)
        self.eval()

    def forward(self, x):
        h = self.act(self.bn1(self.conv_pw(x)))
        h = self.act(self.bn2(self.conv_dw(h)))
        h = self.bn3(self.conv_pwl(h))
        return x + h if self.has_skip else h


def test_vit_block_merges_into_one_linear():
    torch.manual_seed(0)
    block = ViTBlock().eval()
    _, merged = _check(block, torch.randn(2, 10, 24))
    assert isinstance(merged, MergedLinear)


def test_convnext_block_merges():
    torch.manual_seed(0)
    block = ConvNeXtBlock().eval()
    _, merged = _check(block, torch.randn(2, 16, 9, 9))
    assert type(merged).__name__ == "MergedDepthwisePoint"


@pytest.mark.parametrize("stride,c_out", [(1, 8), (2, 12)])
def test_inverted_residual_merges_into_one_conv(stride, c_out):
    torch.manual_seed(0)
    block = InvertedResidual(stride=stride, c_out=c_out)
    x = torch.randn(2, 8, 9, 9) + 0.5  # off-centre input: the border (edge) terms matter
    with torch.no_grad():
        ref = block(x)
        form = pruned_form(block)
        torch.testing.assert_close(form(x), ref, atol=1e-6, rtol=1e-5)
        form.lam = 1.0
        lin = form(x)
        merged = form.merge()
        torch.testing.assert_close(merged(x), lin, atol=1e-5, rtol=1e-5)
    assert isinstance(merged, MergedConv) and merged.stride == stride
    assert merged.edge.abs().max() > 0  # border terms exist and were needed


def test_block_without_form_names_its_type():
    with pytest.raises(DipgoError, match="GRU has no pruned form"):
        pruned_form(nn.GRU(4, 4))


def test_merge_before_ramp_end_is_refused():
    block = tiny_dit().transformer.transformer_blocks[0]
    form = pruned_form(block)
    form.lam = 0.5
    with pytest.raises(DipgoError, match="lam=0.500"):
        form.merge()


def test_frozen_norm_statistics():
    norm = FrozenNorm(3, 1)
    x = torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 2.0, 3.0])[None, :, None, None] + 1.0
    norm.observe(x[:2])
    norm.observe(x[2:])
    norm.finish()
    torch.testing.assert_close(norm.mean, x.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.var, x.var((0, 2, 3), unbiased=False), atol=1e-4, rtol=1e-4)
    with pytest.raises(DipgoError, match="saw no calibration"):
        FrozenNorm(3, 1).finish()
