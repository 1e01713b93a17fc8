"""UPDP's pruned forms of a block, and the single ops they merge into.

A block's *pruned form* computes ``(1 - lam) * original + lam * linear`` part by part: every activation
becomes ``(1 - lam) act(x) + lam x`` and every LayerNorm/GroupNorm ``(1 - lam) norm(x) + lam bn(x)``,
where ``bn`` is a :class:`FrozenNorm` (BatchNorm in eval mode: statistics measured once on calibration
inputs, affine trainable), which is a per-channel affine map. At ``lam = 0`` a pruned form is the
original block exactly; at ``lam = 1`` it is affine in its input and :meth:`merge` folds it into the
fewest plain ops, exactly (tests check 1e-5 in fp32):

* diffusers ``ResnetBlock2D`` (the UNet's CNN path): conv3x3 -> conv3x3 + shortcut becomes one 5x5 conv
  (:class:`MergedConv`) plus a per-sample bias from the time embedding. The second conv's zero padding
  would make the pair differ from any single conv at the border, so the pruned form computes the first
  conv one pixel wider and fades that ring in with ``lam`` as well: at ``lam = 1`` the pair *is* a 5x5
  conv. One conv instead of two halves the depth; its MACs are 25/18 of the pair's for equal channels,
  so on a UNet depth pruning lowers latency, not MACs.
* diffusers ``BasicTransformerBlock`` (DiT, PixArt; the ViT path) and timm-style ViT blocks: the
  self-attention is faded out (``(1 - lam) attn``: softmax has no linear form) and the MLP fc1 -> act ->
  fc2 becomes one d x d linear map (8x fewer MACs than the 4x-wide MLP). A plain pre-norm ViT block then
  merges with its residual into a single ``nn.Linear``; adaLN blocks keep their per-sample modulation,
  and PixArt keeps its cross-attention (the prompt enters there).
* inverted residual (MobileNetV2): 1x1 -> depthwise kxk -> 1x1 (+ skip) becomes one dense kxk conv.
* ConvNeXt: depthwise 7x7 -> norm -> MLP becomes the depthwise conv followed by one CxC linear map (the
  dense 7x7 alternative would cost more MACs than the block it replaces).

Zero padding of a bias is position dependent near the border; :class:`MergedConv` keeps that exact with an
``edge`` kernel convolved with a map of ones (cached per resolution, so any resolution works).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DipgoError


def blend(original: Callable[[], torch.Tensor], linear: Callable[[], torch.Tensor], lam: float) -> torch.Tensor:
    """``(1 - lam) original + lam linear``, computing only the side(s) that count."""
    if lam <= 0.0:
        return original()
    if lam >= 1.0:
        return linear()
    return (1.0 - lam) * original() + lam * linear()


class FrozenNorm(nn.Module):
    """A norm that folds away: per-channel ``(x - mean) / sqrt(var + eps) * weight + bias`` with mean and
    var measured on calibration inputs (:meth:`observe`, :meth:`finish`) and then fixed, i.e. BatchNorm in
    eval mode. ``dim`` is the channel dimension (1 for NCHW maps, -1 for tokens)."""

    def __init__(self, channels: int, dim: int, eps: float = 1e-5, weight: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(weight.detach().clone() if weight is not None else torch.ones(channels))
        self.bias = nn.Parameter(bias.detach().clone() if bias is not None else torch.zeros(channels))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self._sums: list[torch.Tensor] | None = None

    def _view(self, v: torch.Tensor, ndim: int) -> torch.Tensor:
        shape = [1] * ndim
        shape[self.dim] = -1
        return v.view(shape)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float().movedim(self.dim, -1).reshape(-1, x.shape[self.dim])
        s = [x.sum(0), x.pow(2).sum(0), torch.tensor(float(x.shape[0]))]
        self._sums = s if self._sums is None else [a + b for a, b in zip(self._sums, s, strict=True)]

    @torch.no_grad()
    def finish(self) -> None:
        if self._sums is None:
            raise DipgoError("a FrozenNorm saw no calibration inputs; run calibration calls before training")
        total, squares, n = self._sums
        mean = total / n
        self.mean.copy_(mean)
        self.var.copy_((squares / n - mean.pow(2)).clamp_min(0.0))
        self._sums = None

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) with ``norm(x) = x * scale + shift`` per channel."""
        scale = self.weight / torch.sqrt(self.var + self.eps)
        return scale, self.bias - self.mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine()
        return x * self._view(scale, x.ndim).to(x.dtype) + self._view(shift, x.ndim).to(x.dtype)


class PrunedForm(nn.Module):
    """Base of the pruned forms: ``lam`` (0 = the original block, 1 = linear, ready to :meth:`merge`) and
    ``observing`` (feed the frozen norms' calibration)."""

    kind = "block"

    def __init__(self):
        super().__init__()
        self.lam = 0.0
        self.observing = False

    def norms(self) -> list[FrozenNorm]:
        return [m for m in self.modules() if isinstance(m, FrozenNorm)]

    def _check_linear(self) -> None:
        if self.lam < 1.0:
            raise DipgoError(f"cannot merge a {type(self).__name__} at lam={self.lam:.3f}: only a fully "
                             "linearised block (lam = 1) merges; finish the ramp first")

    def merge(self) -> nn.Module:
        raise NotImplementedError


# ---------------------------------------------------------------- convolutions


def compose_kernels(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The kernel of ``conv(conv(x, inner), outer)`` (both stride 1, cross-correlation as torch computes
    it): ``(C_out, C_mid, a, a) o (C_mid, C_in, b, b) -> (C_out, C_in, a + b - 1, a + b - 1)``."""
    a, b = outer.shape[-1], inner.shape[-1]
    out = inner.new_zeros(outer.shape[0], inner.shape[1], a + b - 1, a + b - 1)
    for i in range(a):
        for j in range(outer.shape[-2]):
            out[:, :, j:j + b, i:i + b] += torch.einsum("oc,cihw->oihw", outer[:, :, j, i], inner)
    return out


class MergedConv(nn.Module):
    """One conv that replaces a linearised block: ``conv(x, weight, bias) + edge map (+ time-embedding
    bias)``. ``edge`` (C_out, 1, k, k) carries the biases that zero padding cut off near the border: its
    map is ``conv(ones(H, W), edge)``, computed once per resolution."""

    kind = "conv"

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0,
                 temb_dim: int | None = None, time_act: nn.Module | None = None):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.zeros(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.edge = nn.Parameter(torch.zeros(c_out, 1, kernel, kernel))
        self.time_emb_proj = nn.Linear(temb_dim, c_out) if temb_dim else None
        self.time_act = time_act
        self._edges: dict = {}

    def spec(self) -> dict:
        return {"type": "MergedConv", "c_in": self.weight.shape[1], "c_out": self.weight.shape[0],
                "kernel": self.weight.shape[-1], "stride": self.stride, "padding": self.padding,
                "temb_dim": self.time_emb_proj.in_features if self.time_emb_proj is not None else None,
                "time_act": self.time_act is not None}

    def _edge_map(self, h: int, w: int) -> torch.Tensor:
        """``conv(ones(h, w), edge)``: at each output position, the sum of the edge taps that land inside
        the image, i.e. a rectangle of the kernel, read off its 2-D prefix sums (no convolution: this is
        a per-resolution constant, not work per call)."""
        k, s, p = self.edge.shape[-1], self.stride, self.padding
        table = F.pad(self.edge[:, 0].cumsum(1).cumsum(2), (1, 0, 1, 0))  # (C_out, k + 1, k + 1)

        def ranges(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            start = torch.arange(0, n + 2 * p - k + 1, s, device=table.device) - p  # first input index per output
            return (-start).clamp(0, k), (n - start).clamp(0, k)  # taps [lo, hi) inside the image

        r0, r1 = ranges(h)
        c0, c1 = ranges(w)
        rect = (table[:, r1[:, None], c1[None, :]] - table[:, r0[:, None], c1[None, :]]
                - table[:, r1[:, None], c0[None, :]] + table[:, r0[:, None], c0[None, :]])
        return rect[None]

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs):
        x = input_tensor
        if torch.is_grad_enabled() and self.edge.requires_grad:  # training the merged model: no cache
            edge = self._edge_map(*x.shape[-2:])
        else:
            key = (*x.shape[-2:], x.device, x.dtype, self.edge._version)
            if key not in self._edges:
                self._edges.clear()
                with torch.no_grad():
                    self._edges[key] = self._edge_map(*x.shape[-2:]).to(x.dtype)
            edge = self._edges[key]
        y = F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding) + edge
        if self.time_emb_proj is not None and temb is not None:
            t = self.time_act(temb) if self.time_act is not None else temb
            y = y + self.time_emb_proj(t)[:, :, None, None]
        return y


def _group_norm_inside(x: torch.Tensor, gn: nn.GroupNorm, ring: int) -> torch.Tensor:
    """GroupNorm of ``x`` with statistics from its interior (``ring`` pixels in from each side), applied to
    every position: the original block normalises the un-widened map."""
    b, c, h, w = x.shape
    inside = x[:, :, ring:h - ring, ring:w - ring].reshape(b, gn.num_groups, -1)
    var, mean = torch.var_mean(inside, dim=-1, unbiased=False)
    xg = x.reshape(b, gn.num_groups, c // gn.num_groups, h, w)
    y = ((xg - mean[..., None, None, None]) * torch.rsqrt(var + gn.eps)[..., None, None, None]).reshape(b, c, h, w)
    if gn.affine:
        y = y * gn.weight[None, :, None, None] + gn.bias[None, :, None, None]
    return y


class PrunedResnet(PrunedForm):
    """Pruned form of a diffusers ``ResnetBlock2D`` (no resampling, ``time_embedding_norm="default"``).

    Its submodules keep the resnet's names, so teacher and student share state-dict keys."""

    kind = "resnet"

    def __init__(self, block: nn.Module):
        super().__init__()
        if getattr(block, "upsample", None) is not None or getattr(block, "downsample", None) is not None:
            raise DipgoError("a resampling ResnetBlock2D has no pruned form (its shortcut resamples)")
        if block.time_embedding_norm != "default":
            raise DipgoError(f"ResnetBlock2D with time_embedding_norm={block.time_embedding_norm!r} has no pruned "
                             "form (only 'default')")
        for conv in (block.conv1, block.conv2):
            if conv.stride != (1, 1) or conv.kernel_size[0] != 2 * conv.padding[0] + 1 or conv.groups != 1:
                raise DipgoError("ResnetBlock2D convs must be odd, 'same'-padded, stride 1 and ungrouped")
        for name in ("norm1", "conv1", "time_emb_proj", "norm2", "dropout", "conv2", "conv_shortcut",
                     "nonlinearity"):
            setattr(self, name, getattr(block, name))
        self.skip_time_act, self.scale = block.skip_time_act, float(block.output_scale_factor)
        if not isinstance(block.norm1, nn.GroupNorm) or not isinstance(block.norm2, nn.GroupNorm):
            raise DipgoError("ResnetBlock2D norms must be GroupNorm")
        self.bn1 = FrozenNorm(block.conv1.in_channels, 1, block.norm1.eps, block.norm1.weight, block.norm1.bias)
        self.bn2 = FrozenNorm(block.conv2.in_channels, 1, block.norm2.eps, block.norm2.weight, block.norm2.bias)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        x, lam = input_tensor, self.lam
        if self.observing:
            self.bn1.observe(x)
        u = blend(lambda: self.norm1(x), lambda: self.bn1(x), lam)
        u = blend(lambda: self.nonlinearity(u), lambda: u, lam)
        ring = self.conv2.padding[0] if lam > 0 else 0  # widen conv1 by conv2's padding; fade the ring in
        h = F.conv2d(u, self.conv1.weight, self.conv1.bias, padding=self.conv1.padding[0] + ring)
        if self.time_emb_proj is not None and temb is not None:
            t = temb if self.skip_time_act else self.nonlinearity(temb)
            h = h + self.time_emb_proj(t)[:, :, None, None]
        if self.observing:
            self.bn2.observe(h)
        h = blend(lambda: _group_norm_inside(h, self.norm2, ring) if ring else self.norm2(h),
                  lambda: self.bn2(h), lam)
        h = blend(lambda: self.nonlinearity(h), lambda: h, lam)
        if ring and lam < 1.0:
            mask = h.new_full(h.shape[-2:], lam)
            mask[ring:-ring, ring:-ring] = 1.0
            h = h * mask
        h = self.dropout(h)
        y = F.conv2d(h, self.conv2.weight, self.conv2.bias, padding=self.conv2.padding[0] - ring)
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return (shortcut + y) / self.scale

    @torch.no_grad()
    def merge(self) -> MergedConv:
        self._check_linear()
        a1, c1 = self.bn1.affine()
        a2, c2 = self.bn2.affine()
        k1, k2 = self.conv1.weight, self.conv2.weight
        k2a = k2 * a2[None, :, None, None]
        s2a, s2 = k2a.sum((2, 3)), k2.sum((2, 3))
        weight = compose_kernels(k2a, k1 * a1[None, :, None, None])
        edge = (compose_kernels(k2a, k1) * c1[None, :, None, None]).sum(1, keepdim=True)
        b1 = self.conv1.bias if self.conv1.bias is not None else torch.zeros_like(c2)
        bias = s2a @ b1 + s2 @ c2 + (self.conv2.bias if self.conv2.bias is not None else 0.0)
        center = weight.shape[-1] // 2
        if self.conv_shortcut is not None:
            weight[:, :, center, center] += self.conv_shortcut.weight[:, :, 0, 0]
            if self.conv_shortcut.bias is not None:
                bias = bias + self.conv_shortcut.bias
        else:
            weight[:, :, center, center] += torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
        proj = self.time_emb_proj
        merged = MergedConv(weight.shape[1], weight.shape[0], weight.shape[-1], 1, center,
                            proj.in_features if proj is not None else None,
                            None if self.skip_time_act else self.nonlinearity)
        merged.weight.copy_(weight / self.scale)
        merged.bias.copy_(bias / self.scale)
        merged.edge.copy_(edge / self.scale)
        if proj is not None:
            merged.time_emb_proj.weight.copy_(s2a @ proj.weight / self.scale)
            merged.time_emb_proj.bias.copy_(s2a @ proj.bias / self.scale)
        return merged.to(weight.dtype)


def _bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """A BatchNorm with its running statistics, whatever the mode: the pruned form must stay foldable."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (bn.weight if bn.weight is not None else 1.0) / torch.sqrt(bn.running_var + bn.eps)
    return scale, (bn.bias if bn.bias is not None else 0.0) - bn.running_mean * scale


class PrunedInvertedResidual(PrunedForm):
    """Pruned form of an inverted residual block (MobileNetV2) laid out as timm's: ``conv_pw`` (1x1),
    ``bn1``, ``conv_dw`` (depthwise kxk), ``bn2``, ``conv_pwl`` (1x1), ``bn3`` (BatchNorm2d), an ``act``
    module after bn1 and bn2, and ``has_skip``. BatchNorm already folds, so only the activations blend."""

    kind = "inverted_residual"

    def __init__(self, block: nn.Module):
        super().__init__()
        for name in ("conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3", "act"):
            setattr(self, name, getattr(block, name))
        self.has_skip = bool(getattr(block, "has_skip", False))
        dw = block.conv_dw
        if dw.groups != dw.in_channels or block.conv_pw.kernel_size != (1, 1) or block.conv_pwl.kernel_size != (1, 1):
            raise DipgoError("an inverted residual needs 1x1 -> depthwise -> 1x1 convs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.lam
        h = _bn(self.bn1, self.conv_pw(x))
        h = blend(lambda: self.act(h), lambda: h, lam)
        h = _bn(self.bn2, self.conv_dw(h))
        h = blend(lambda: self.act(h), lambda: h, lam)
        h = _bn(self.bn3, self.conv_pwl(h))
        return x + h if self.has_skip else h

    @torch.no_grad()
    def merge(self) -> MergedConv:
        self._check_linear()
        s1, t1 = _bn_affine(self.bn1)
        s2, t2 = _bn_affine(self.bn2)
        s3, t3 = _bn_affine(self.bn3)
        w1 = self.conv_pw.weight[:, :, 0, 0] * s1[:, None]                  # (E, C_in)
        c1 = (self.conv_pw.bias if self.conv_pw.bias is not None else 0.0) * s1 + t1
        dw = self.conv_dw.weight[:, 0] * s2[:, None, None]                   # (E, k, k)
        c2 = (self.conv_dw.bias if self.conv_dw.bias is not None else 0.0) * s2 + t2
        w3 = self.conv_pwl.weight[:, :, 0, 0] * s3[:, None]                 # (C_out, E)
        c3 = (self.conv_pwl.bias if self.conv_pwl.bias is not None else 0.0) * s3 + t3
        weight = torch.einsum("oe,ehw,ei->oihw", w3, dw, w1)
        edge = torch.einsum("oe,ehw,e->ohw", w3, dw, c1 * torch.ones_like(s1))[:, None]
        bias = w3 @ (c2 * torch.ones_like(s2)) + c3
        k, stride, pad = dw.shape[-1], self.conv_dw.stride[0], self.conv_dw.padding[0]
        if self.has_skip:
            weight[:, :, k // 2, k // 2] += torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
        merged = MergedConv(weight.shape[1], weight.shape[0], k, stride, pad)
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
        merged.edge.copy_(edge)
        return merged


# ---------------------------------------------------------------- MLPs (ViT, DiT, ConvNeXt)


def _merge_mlp(fc1: nn.Linear, fc2: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """fc2(fc1(x)) = x W^T + b with W = W2 W1 (d_out x d_in) and b = W2 b1 + b2."""
    w = fc2.weight @ fc1.weight
    b = (fc2.weight @ fc1.bias if fc1.bias is not None else 0.0) + (fc2.bias if fc2.bias is not None else 0.0)
    return w, b * torch.ones(w.shape[0], dtype=w.dtype, device=w.device)


def _gamma(module: nn.Module | None, like: torch.Tensor) -> torch.Tensor:
    """A layer scale as a vector (timm ``LayerScale.gamma`` or a bare parameter); ones if there is none."""
    g = getattr(module, "gamma", module) if module is not None else None
    return g.detach() if isinstance(g, torch.Tensor) else torch.ones_like(like)


class MergedLinear(nn.Module):
    """A plain pre-norm ViT block after merging: ``x @ weight^T + bias`` (residual, norm, MLP and layer
    scale folded in)."""

    kind = "linear"

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def spec(self) -> dict:
        return {"type": "MergedLinear", "dim": self.linear.in_features}

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.linear(x)


def _mlp_branch(form, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm -> fc1 -> act -> fc2`` of a ViT or ConvNeXt form, with the norm blended towards its frozen
    affine form and the activation towards the identity by ``form.lam`` (observing the norm's input while
    the frozen statistics are being calibrated)."""
    lam = form.lam
    if form.observing:
        form.bn.observe(x)
    h = blend(lambda: norm(x), lambda: form.bn(x), lam)
    h = form.mlp.fc1(h)
    h = blend(lambda: form.mlp.act(h), lambda: h, lam)
    return form.mlp.fc2(h)


class PrunedViT(PrunedForm):
    """Pruned form of a timm-style pre-norm ViT block: ``norm1``, ``attn``, ``norm2``, ``mlp.fc1``,
    ``mlp.act``, ``mlp.fc2``, optional ``ls1``/``ls2`` layer scales. Attention fades out; the MLP becomes
    linear; the whole block then merges into one ``nn.Linear``."""

    kind = "vit"

    def __init__(self, block: nn.Module):
        super().__init__()
        for name in ("norm1", "attn", "norm2", "mlp"):
            setattr(self, name, getattr(block, name))
        self.ls1, self.ls2 = getattr(block, "ls1", None), getattr(block, "ls2", None)
        if not isinstance(self.norm2, nn.LayerNorm):
            raise DipgoError(f"a ViT block's norm2 must be LayerNorm, not {type(self.norm2).__name__}")
        dim = self.mlp.fc2.out_features
        self.bn = FrozenNorm(dim, -1, self.norm2.eps, self.norm2.weight, self.norm2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.lam
        if lam < 1.0:
            a = self.attn(self.norm1(x))
            x = x + (1.0 - lam) * (self.ls1(a) if self.ls1 is not None else a)
        h = _mlp_branch(self, self.norm2, x)
        return x + (self.ls2(h) if self.ls2 is not None else h)

    @torch.no_grad()
    def merge(self) -> MergedLinear:
        self._check_linear()
        a, c = self.bn.affine()
        w, b = _merge_mlp(self.mlp.fc1, self.mlp.fc2)
        g = _gamma(self.ls2, b)
        merged = MergedLinear(w.shape[0])
        merged.linear.weight.copy_(torch.eye(w.shape[0], dtype=w.dtype) + g[:, None] * w * a[None, :])
        merged.linear.bias.copy_(g * (w @ c + b))
        return merged


class MergedDepthwisePoint(nn.Module):
    """A ConvNeXt block after merging: depthwise conv (norm folded in) -> one CxC linear map -> + x."""

    kind = "dw_point"

    def __init__(self, channels: int, kernel: int, padding: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(channels, channels, kernel, padding=padding, groups=channels)
        self.pw = nn.Linear(channels, channels)

    def spec(self) -> dict:
        return {"type": "MergedDepthwisePoint", "channels": self.pw.in_features,
                "kernel": self.conv_dw.kernel_size[0], "padding": self.conv_dw.padding[0]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_dw(x).permute(0, 2, 3, 1)
        return x + self.pw(h).permute(0, 3, 1, 2)


class PrunedConvNeXt(PrunedForm):
    """Pruned form of a timm-style ConvNeXt block (channels-last MLP): ``conv_dw`` (depthwise),
    ``norm`` (LayerNorm over channels), ``mlp.fc1``/``mlp.act``/``mlp.fc2`` (Linear), optional ``gamma``."""

    kind = "convnext"

    def __init__(self, block: nn.Module):
        super().__init__()
        for name in ("conv_dw", "norm", "mlp"):
            setattr(self, name, getattr(block, name))
        self.gamma = getattr(block, "gamma", None)
        dw = self.conv_dw
        if dw.groups != dw.in_channels or dw.in_channels != dw.out_channels or dw.stride != (1, 1):
            raise DipgoError("a ConvNeXt block needs a stride-1 depthwise conv_dw")
        self.bn = FrozenNorm(dw.out_channels, -1, self.norm.eps, self.norm.weight, self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _mlp_branch(self, self.norm, self.conv_dw(x).permute(0, 2, 3, 1))
        if self.gamma is not None:
            h = h * self.gamma
        return x + h.permute(0, 3, 1, 2)

    @torch.no_grad()
    def merge(self) -> MergedDepthwisePoint:
        self._check_linear()
        a, c = self.bn.affine()
        w, b = _merge_mlp(self.mlp.fc1, self.mlp.fc2)
        g = _gamma(self.gamma, b)
        dw = self.conv_dw
        merged = MergedDepthwisePoint(dw.in_channels, dw.kernel_size[0], dw.padding[0])
        merged.conv_dw.weight.copy_(dw.weight * a[:, None, None, None])
        merged.conv_dw.bias.copy_((dw.bias if dw.bias is not None else 0.0) * a + c)
        merged.pw.weight.copy_(g[:, None] * w)
        merged.pw.bias.copy_(g * b)
        return merged


# ---------------------------------------------------------------- diffusers transformer blocks

MODULATED = ("ada_norm_zero", "ada_norm_single")
TRANSFORMER_NORMS = ("ada_norm_zero", "ada_norm_single", "layer_norm")


def _ff_parts(block: nn.Module) -> tuple[nn.Linear, str, nn.Linear]:
    """(fc1, GELU approximation, fc2) of a diffusers ``FeedForward`` whose activation is GELU."""
    net = block.ff.net
    act = net[0]
    if type(act).__name__ != "GELU" or not hasattr(act, "proj"):
        raise DipgoError(f"a transformer block whose feed-forward uses {type(act).__name__} has no pruned form "
                         "(only GELU MLPs; GEGLU/SwiGLU gates are not linear)")
    return act.proj, act.approximate, net[2]


def _modulation(block: nn.Module, x: torch.Tensor, timestep, class_labels) -> list:
    """The adaLN shift, scale and gate of attention and MLP, per sample (DiT: ``norm1.emb`` + ``norm1.linear``;
    PixArt: ``scale_shift_table``); Nones for an unmodulated block. The part that survives merging."""
    if block.norm_type == "ada_norm_zero":
        emb = block.norm1.emb(timestep, class_labels, hidden_dtype=x.dtype)
        return [p[:, None] for p in block.norm1.linear(block.norm1.silu(emb)).chunk(6, dim=1)]
    if block.norm_type == "ada_norm_single":
        return list((block.scale_shift_table[None] + timestep.reshape(x.shape[0], 6, -1)).chunk(6, dim=1))
    return [None] * 6


def _cross_attention(block, x, encoder_hidden_states, encoder_attention_mask, cross_attention_kwargs):
    if getattr(block, "attn2", None) is None:
        return x
    n = x if block.norm_type == "ada_norm_single" else block.norm2(x)
    return x + block.attn2(n, encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask,
                           **(cross_attention_kwargs or {}))


class PrunedTransformer(PrunedForm):
    """Pruned form of a diffusers ``BasicTransformerBlock`` (``norm_type`` ada_norm_zero (DiT),
    ada_norm_single (PixArt) or layer_norm; GELU feed-forward). Keeps the block's submodule names."""

    kind = "transformer"

    def __init__(self, block: nn.Module):
        super().__init__()
        if block.norm_type not in TRANSFORMER_NORMS:
            raise DipgoError(f"BasicTransformerBlock with norm_type={block.norm_type!r} has no pruned form "
                             f"(supported: {TRANSFORMER_NORMS})")
        if getattr(block, "pos_embed", None) is not None or getattr(block, "fuser", None) is not None:
            raise DipgoError("BasicTransformerBlock with positional embeddings or GLIGEN has no pruned form")
        _, self.approximate, _ = _ff_parts(block)
        for name in ("norm1", "attn1", "norm2", "attn2", "norm3", "ff"):
            setattr(self, name, getattr(block, name, None))
        if block.norm_type == "ada_norm_single":
            self.scale_shift_table = block.scale_shift_table
        self.norm_type, self.only_cross_attention = block.norm_type, block.only_cross_attention
        ff_norm = self.ff_norm
        dim = self.fc2.out_features
        self.bn = FrozenNorm(dim, -1, ff_norm.eps, getattr(ff_norm, "weight", None), getattr(ff_norm, "bias", None))

    @property
    def fc1(self) -> nn.Linear:
        return self.ff.net[0].proj

    @property
    def fc2(self) -> nn.Linear:
        return self.ff.net[2]

    @property
    def ff_norm(self) -> nn.Module:
        return self.norm2 if self.norm_type == "ada_norm_single" else self.norm3

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                timestep=None, cross_attention_kwargs=None, class_labels=None, added_cond_kwargs=None):
        x, lam = hidden_states, self.lam
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = _modulation(self, x, timestep, class_labels)
        if lam < 1.0:
            if self.norm_type == "ada_norm_zero":
                n = self.norm1.norm(x) * (1 + scale_msa) + shift_msa
            else:
                n = self.norm1(x)
                if self.norm_type == "ada_norm_single":
                    n = n * (1 + scale_msa) + shift_msa
            a = self.attn1(n, encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
                           attention_mask=attention_mask, **(cross_attention_kwargs or {}))
            if gate_msa is not None:
                a = gate_msa * a
            x = x + (1.0 - lam) * a
        x = _cross_attention(self, x, encoder_hidden_states, encoder_attention_mask, cross_attention_kwargs)
        if self.observing:
            self.bn.observe(x)
        h = blend(lambda: self.ff_norm(x), lambda: self.bn(x), lam)
        if scale_mlp is not None:
            h = h * (1 + scale_mlp) + shift_mlp
        h = self.fc1(h)
        h = blend(lambda: F.gelu(h, approximate=self.approximate), lambda: h, lam)
        for extra in list(self.ff.net)[1:]:
            h = extra(h)  # dropout, fc2 (the same module as self.fc2), final dropout
        if gate_mlp is not None:
            h = gate_mlp * h
        return x + h

    @torch.no_grad()
    def merge(self) -> nn.Module:
        self._check_linear()
        a, c = self.bn.affine()
        w, b = _merge_mlp(self.fc1, self.fc2)
        if self.norm_type == "layer_norm" and self.attn2 is None:
            merged = MergedLinear(w.shape[0])
            merged.linear.weight.copy_(torch.eye(w.shape[0], dtype=w.dtype) + w * a[None, :])
            merged.linear.bias.copy_(w @ c + b)
            return merged
        merged = MergedTransformer(self)
        merged.linear.weight.copy_(w)
        merged.linear.bias.copy_(b)
        if merged.ada is not None:
            ada_w, ada_b = _fold_modulation(self.norm1.linear.weight, self.norm1.linear.bias, a, c)
            merged.ada.weight.copy_(ada_w)
            merged.ada.bias.copy_(ada_b)
        else:
            merged.scale.copy_(a)
            merged.shift.copy_(c)
        return merged


def _fold_modulation(weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor,
                     shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DiT's adaLN map (6 chunks: shift, scale, gate of attention, then of the MLP) with the frozen norm's
    affine ``x * scale + shift`` folded in, keeping the MLP's three: rows ``[A; C; G]`` such that
    ``(x * scale + shift) * (1 + s) + t = x * A e + C e`` and ``gate = G e`` (``e`` the conditioning).
    The attention's three chunks are dropped: a merged block has no attention."""
    _, _, _, w_t, w_s, w_g = weight.chunk(6, dim=0)
    _, _, _, b_t, b_s, b_g = bias.chunk(6, dim=0)
    w_a, b_a = scale[:, None] * w_s, scale * (1 + b_s)
    w_c, b_c = shift[:, None] * w_s + w_t, shift * (1 + b_s) + b_t
    return torch.cat([w_a, w_c, w_g]), torch.cat([b_a, b_c, b_g])


class _Embedding(nn.Module):
    """What a merged DiT block keeps of its ``AdaLayerNormZero``: the conditioning embedding, at the same
    path (``norm1.emb``), because DiT's final layer reads ``transformer_blocks[0].norm1.emb``.

    :meth:`conditioning` is the same map as ``emb(timestep, class_labels)``, with the sinusoid's frequencies
    computed once (diffusers' ``Timesteps`` rebuilds them at every call) and plain functional calls: at
    batch 1 this embedding is half a merged block's time, all of it per-op overhead. Any other embedding,
    and training (label dropout), go through the module itself."""

    def __init__(self, emb: nn.Module):
        super().__init__()
        self.emb = emb
        proj, mlp = getattr(emb, "time_proj", None), getattr(emb, "timestep_embedder", None)
        self.fast = (type(emb).__name__ == "CombinedTimestepLabelEmbeddings" and type(proj).__name__ == "Timesteps"
                     and proj.num_channels % 2 == 0 and getattr(mlp, "cond_proj", None) is None
                     and getattr(mlp, "post_act", None) is None and isinstance(getattr(mlp, "act", None), nn.SiLU))
        if self.fast:  # as diffusers' get_timestep_embedding (max_period 10000, fp32)
            half = proj.num_channels // 2
            exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32)
            exponent = exponent / (half - proj.downscale_freq_shift)
            self.register_buffer("freqs", torch.exp(exponent), persistent=False)

    def conditioning(self, timestep: torch.Tensor, class_labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if not self.fast or self.training or timestep.dim() != 1 or self.freqs.dtype != torch.float32:
            # (a half-precision cast rounds the frequencies; diffusers builds them in fp32 at every call)
            return self.emb(timestep, class_labels, hidden_dtype=dtype)
        proj, mlp = self.emb.time_proj, self.emb.timestep_embedder
        arg = timestep[:, None].float() * self.freqs.float()[None, :]
        if proj.scale != 1:
            arg = proj.scale * arg
        sin, cos = torch.sin(arg), torch.cos(arg)
        t = torch.cat([cos, sin] if proj.flip_sin_to_cos else [sin, cos], dim=-1).to(dtype)
        t = F.linear(F.silu(F.linear(t, mlp.linear_1.weight, mlp.linear_1.bias)), mlp.linear_2.weight,
                     mlp.linear_2.bias)
        return t + F.embedding(class_labels, self.emb.class_embedder.embedding_table.weight)


class MergedTransformer(nn.Module):
    """A linearised diffusers transformer block after merging: ``x + gate * (W (x * a + c) + b)``.

    The MLP is one d x d linear map and the self-attention is gone; PixArt keeps its cross-attention.
    ``a`` and ``c`` fold the frozen norm's affine into the block's per-sample modulation. On DiT they
    come, with the gate, from one linear map of the conditioning (``ada``: the adaLN rows of the MLP
    only, the norm folded in), so a call is the embedding, that map, two ``addcmul`` and the d x d
    linear: at batch 1 a call costs a handful of kernel launches, which is what its time is made of.
    """

    kind = "transformer"

    def __init__(self, block: nn.Module):
        super().__init__()
        dim = block.ff.net[2].out_features
        self.norm_type = block.norm_type
        self.ada = None
        if self.norm_type == "ada_norm_zero":
            self.norm1 = _Embedding(block.norm1.emb)
            self.ada = nn.Linear(block.norm1.linear.in_features, 3 * dim)
        else:
            self.scale = nn.Parameter(torch.ones(dim))
            self.shift = nn.Parameter(torch.zeros(dim))
        if self.norm_type == "ada_norm_single":
            self.scale_shift_table = block.scale_shift_table
        self.attn2 = getattr(block, "attn2", None)
        if self.attn2 is not None and self.norm_type != "ada_norm_single":
            self.norm2 = block.norm2
        self.linear = nn.Linear(dim, dim)

    def spec(self) -> dict:
        return {"type": "MergedTransformer", "dim": self.linear.in_features}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Folders written before the modulation was folded hold the whole adaLN map and the norm's
        # affine; fold them on load, as PyTorch's own modules upgrade old state dicts.
        old = [prefix + k for k in ("norm1.linear.weight", "norm1.linear.bias", "scale", "shift")]
        if self.ada is not None and all(k in state_dict for k in old):
            w, b, scale, shift = (state_dict.pop(k) for k in old)
            state_dict[prefix + "ada.weight"], state_dict[prefix + "ada.bias"] = _fold_modulation(w, b, scale, shift)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _modulation(self, x: torch.Tensor, timestep, class_labels) -> tuple:
        """(a, c, gate), each (batch, 1, d) or None, for ``h = x * a + c`` and ``x + gate * W h``."""
        if self.ada is not None:
            emb = self.norm1.conditioning(timestep, class_labels, x.dtype)
            a, c, gate = F.linear(F.silu(emb), self.ada.weight, self.ada.bias)[:, None].chunk(3, dim=-1)
            return a, c, gate
        if self.norm_type == "ada_norm_single":
            shift, scale, gate = (self.scale_shift_table[None, 3:] + timestep.reshape(x.shape[0], 6, -1)[:, 3:]
                                  ).chunk(3, dim=1)
            a = self.scale * (1 + scale)
            return a, torch.addcmul(shift, self.shift, 1 + scale), gate
        return self.scale, self.shift, None

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                timestep=None, cross_attention_kwargs=None, class_labels=None, added_cond_kwargs=None):
        a, c, gate = self._modulation(hidden_states, timestep, class_labels)
        x = _cross_attention(self, hidden_states, encoder_hidden_states, encoder_attention_mask,
                             cross_attention_kwargs)
        h = F.linear(torch.addcmul(c, x, a), self.linear.weight, self.linear.bias)
        return torch.addcmul(x, gate, h) if gate is not None else x + h


# ---------------------------------------------------------------- registry

Factory = Callable[[nn.Module], PrunedForm]
FORMS: list[tuple[Callable[[nn.Module], bool], Factory]] = [
    (lambda m: type(m).__name__ == "ResnetBlock2D", PrunedResnet),
    (lambda m: type(m).__name__ == "BasicTransformerBlock", PrunedTransformer),
    (lambda m: all(hasattr(m, a) for a in ("conv_pw", "conv_dw", "conv_pwl", "bn3", "act")),
     PrunedInvertedResidual),
    (lambda m: hasattr(m, "conv_dw") and hasattr(m, "norm") and hasattr(getattr(m, "mlp", None), "fc1"),
     PrunedConvNeXt),
    (lambda m: all(hasattr(m, a) for a in ("norm1", "attn", "norm2")) and hasattr(getattr(m, "mlp", None), "fc1"),
     PrunedViT),
]


def register_form(matches: Callable[[nn.Module], bool], factory: Factory) -> None:
    """Teach dipgo a pruned form for your own block type (checked before the built-in ones)."""
    FORMS.insert(0, (matches, factory))


def has_form(module: nn.Module) -> bool:
    return any(match(module) for match, _ in FORMS)


def pruned_form(module: nn.Module) -> PrunedForm:
    """The pruned form of ``module`` at lam = 0 (sharing its weights), or a clear error naming its type."""
    for match, factory in FORMS:
        if match(module):
            return factory(module)
    raise DipgoError(f"{type(module).__name__} has no pruned form; dipgo linearises diffusers ResnetBlock2D and "
                     "BasicTransformerBlock, and timm-style ViT, ConvNeXt and inverted-residual blocks. Teach it "
                     "yours with dipgo.depth.register_form(matches, factory)")


MERGED = {"MergedConv": MergedConv, "MergedLinear": MergedLinear, "MergedDepthwisePoint": MergedDepthwisePoint,
          "MergedTransformer": MergedTransformer}
