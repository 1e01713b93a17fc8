"""A tiny pixel-space diffusion model, written like a research code release.

Everything a DDPM/DDIM paper needs fits in this one file: a small UNet that predicts the noise
``eps`` added to an image, a linear-beta noise schedule, a deterministic DDIM sampler, ancestral
DDPM sampling, and an epsilon-prediction training loop. It is plain PyTorch on purpose: no
diffusers, no helper libraries, so it can stand in for "somebody's model with its own loop".

Structure that matters for step-caching tools: the UNet is a sequence of named *stages*
(``down.0``, ``down.1``, ..., ``mid``, ``up.0``, ``up.1``, ...). Each stage is called exactly once
per forward, takes the hidden state as its first positional argument and the time embedding as the
second, and returns one tensor whose shape depends only on the input shape. Skip connections carry
the *output* of a down stage, so replaying a stage's cached output keeps the skips consistent.

Run ``python examples/research_unet.py`` to train on sklearn's 8x8 digits (upscaled to 16x16) for a
few hundred steps and write a grid of DDIM samples to ``out/examples/research_unet.png``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# Model


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, as in the Transformer / DDPM papers.

    Sines and cosines at geometrically spaced frequencies give the MLP a smooth, unique code for each
    of the 1000 noise levels, which is easier to learn from than the raw integer.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:  # odd width: pad with a zero column
        emb = F.pad(emb, (0, 1))
    return emb


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``.

    GroupNorm (not BatchNorm) keeps every image's computation independent of the rest of the batch,
    so a sample does not change when it is generated alongside others.
    """
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block; the time embedding is added between the two convolutions."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]  # per-channel shift tells the block the noise level
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over pixels; used only at the lowest resolution, where it is cheap."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # each (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class DownStage(nn.Module):
    """ResBlock, then an optional stride-2 conv. Its output is also the skip for the matching up stage."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int, downsample: bool) -> None:
        super().__init__()
        self.block = ResBlock(in_ch, out_ch, temb_dim, groups)
        self.downsample = nn.Conv2d(out_ch, out_ch, 3, stride=2, padding=1) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.block(x, temb))


class MidStage(nn.Module):
    """ResBlock + self-attention at the bottleneck: the one place the model sees the whole image."""

    def __init__(self, channels: int, temb_dim: int, groups: int) -> None:
        super().__init__()
        self.block = ResBlock(channels, channels, temb_dim, groups)
        self.attn = SelfAttention(channels, groups)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.block(x, temb))


class UpStage(nn.Module):
    """Concatenate the skip, ResBlock, then an optional nearest-neighbour x2 upsample + conv."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, temb_dim: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.block = ResBlock(in_ch + skip_ch, out_ch, temb_dim, groups)
        self.upsample = upsample
        self.up_conv = nn.Conv2d(out_ch, out_ch, 3, padding=1) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h = self.block(torch.cat([x, skip], dim=1), temb)
        if self.upsample:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.up_conv(h)


class TinyUNet(nn.Module):
    """A small DDPM-style UNet that predicts the noise in ``x`` at timestep ``t``.

    ``channel_mult`` sets the number of resolution stages: down stage ``i`` has
    ``base_channels * channel_mult[i]`` channels and halves the resolution, except the last one (the
    usual DDPM layout). Up stage ``j`` mirrors down stage ``n-1-j`` and consumes its output as skip.

    Args:
        in_channels: image channels (1 for grayscale).
        image_size: side length of the (square) images; must be divisible by ``2**(len(channel_mult)-1)``.
        base_channels: width of the first stage; also the sinusoidal embedding width.
        channel_mult: per-stage width multipliers.
        norm_groups: GroupNorm groups (reduced automatically where a width is not divisible).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        base_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 2),
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        n = len(channel_mult)
        if image_size % 2 ** (n - 1):
            raise ValueError(f"image_size={image_size} must be divisible by 2**{n - 1}")
        self.in_channels, self.image_size, self.base_channels = in_channels, image_size, base_channels
        temb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        widths = [base_channels] + [base_channels * m for m in channel_mult]  # widths[i] -> widths[i+1] in down.i
        self.down = nn.ModuleList(
            DownStage(widths[i], widths[i + 1], temb_dim, norm_groups, downsample=i < n - 1) for i in range(n)
        )
        self.mid = MidStage(widths[-1], temb_dim, norm_groups)
        self.up = nn.ModuleList(
            # up.j undoes down.i (i = n-1-j): input widths[i+1], skip widths[i+1], output widths[i]
            UpStage(widths[i + 1], widths[i + 1], widths[i], temb_dim, norm_groups, upsample=i < n - 1)
            for i in reversed(range(n))
        )
        self.norm_out = group_norm(base_channels, norm_groups)
        self.conv_out = nn.Conv2d(base_channels, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict the noise in ``x`` (B, C, H, W) at integer timesteps ``t`` (B,)."""
        temb = self.time_mlp(timestep_embedding(t, self.base_channels))
        h = self.conv_in(x)
        skips = []
        for stage in self.down:
            h = stage(h, temb)
            skips.append(h)  # the stage *output*: stays consistent if the stage's output is replayed from a cache
        h = self.mid(h, temb)
        for stage in self.up:
            h = stage(h, temb, skips.pop())
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------
# Noise schedule


@dataclass(frozen=True)
class NoiseSchedule:
    """Forward-process schedule: ``x_t = sqrt(alphas_cumprod[t]) * x_0 + sqrt(1 - alphas_cumprod[t]) * eps``."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def T(self) -> int:
        return len(self.betas)


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """The linear beta schedule of Ho et al. (2020). Kept in float64 so alpha products stay accurate."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return NoiseSchedule(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, dim=0))


# ----------------------------------------------------------------------------------------------
# Sampling


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _per_image_noise(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """One draw per generator, stacked: image ``i`` depends only on ``generators[i]``, never on the batch."""
    return torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators]).to(device)


def ddim_sample(
    model: nn.Module,
    generators: list[torch.Generator],
    steps: int = 20,
    shape: tuple[int, int, int] = (1, 16, 16),
    eta: float = 0.0,
    schedule: NoiseSchedule | None = None,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """DDIM sampling (Song et al., 2021): one ``model(x, t)`` call per step, ``steps`` calls in total.

    With ``eta=0`` the sampler is deterministic given the initial noise; ``eta=1`` recovers ancestral
    DDPM on the respaced chain. One generator per image sets that image's noise, so a sample is the
    same whether it is drawn alone or in a batch. Deliberately not wrapped in ``torch.no_grad``: wrap
    the call yourself for inference, or leave it so gradients flow through the whole chain.

    ``clip_denoised`` clamps the predicted clean image to the data range [-1, 1] (as in the DDPM and
    improved-diffusion code); early steps divide by ``sqrt(alphas_cumprod[t])`` ~ 0.006, so without it
    a small-data model's errors blow up into high-frequency artifacts.

    Returns images in [0, 1], shape ``(len(generators), *shape)``.
    """
    schedule = schedule or linear_schedule()
    device = _model_device(model)
    acp = schedule.alphas_cumprod
    # Evenly spaced timesteps from T-1 down to 0, so the first step sees (almost) pure noise.
    timesteps = torch.linspace(schedule.T - 1, 0, steps).round().long().tolist()
    x = _per_image_noise(generators, shape, device)
    for i, t in enumerate(timesteps):
        a = acp[t].item()
        a_prev = acp[timesteps[i + 1]].item() if i + 1 < len(timesteps) else 1.0
        eps = model(x, torch.full((x.shape[0],), t, device=device, dtype=torch.long))
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)  # the model's current guess of the clean image
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)  # keep eps consistent with the clipped x0
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _per_image_noise(generators, shape, device)
    return (x / 2 + 0.5).clamp(0, 1)


def ddpm_sample(
    model: nn.Module,
    generators: list[torch.Generator],
    steps: int = 100,
    shape: tuple[int, int, int] = (1, 16, 16),
    schedule: NoiseSchedule | None = None,
    clip_denoised: bool = True,
) -> torch.Tensor:
    """Ancestral DDPM sampling over ``steps`` evenly spaced timesteps.

    DDIM with ``eta=1`` *is* the DDPM posterior of the respaced chain (Song et al., 2021, eq. 16),
    so there is no second loop to keep in sync.
    """
    return ddim_sample(model, generators, steps, shape, eta=1.0, schedule=schedule, clip_denoised=clip_denoised)


# ----------------------------------------------------------------------------------------------
# Training


def train(
    model: nn.Module,
    images: torch.Tensor,
    steps: int,
    batch: int,
    lr: float,
    schedule: NoiseSchedule | None = None,
    seed: int = 0,
    log_every: int = 50,
) -> list[float]:
    """Standard epsilon-prediction training: noise a clean batch to a random t, regress the noise (MSE).

    ``images`` are (N, C, H, W) in [-1, 1]. Returns the per-step losses.
    """
    schedule = schedule or linear_schedule()
    device = _model_device(model)
    sqrt_acp = schedule.alphas_cumprod.sqrt().float().to(device)
    sqrt_1m_acp = (1 - schedule.alphas_cumprod).sqrt().float().to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    for step in range(steps):
        x0 = images[torch.randint(len(images), (batch,), generator=gen)].to(device)
        t = torch.randint(schedule.T, (batch,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        xt = sqrt_acp[t, None, None, None] * x0 + sqrt_1m_acp[t, None, None, None] * noise
        loss = F.mse_loss(model(xt, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}")
    model.eval()
    return losses


# ----------------------------------------------------------------------------------------------
# Demo


def load_digits_16(device: torch.device | str = "cpu") -> torch.Tensor:
    """sklearn's 1797 8x8 digits, upscaled to 16x16 and scaled to [-1, 1]."""
    from sklearn.datasets import load_digits  # local import: only the demo needs scikit-learn

    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1).to(device)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 4, scale: int = 4) -> None:
    """Save (N, C, H, W) images in [0, 1] as one PNG grid, enlarged ``scale`` times for viewing."""
    from PIL import Image

    n, c, h, w = images.shape
    ncol = math.ceil(n / nrow)
    grid = torch.zeros(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for i, img in enumerate(images.detach().cpu()):
        r, col = divmod(i, nrow)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = img
    arr = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    pil = Image.fromarray(arr[..., 0] if c == 1 else arr)
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pil.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a tiny UNet on 16x16 digits and sample it with DDIM.")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/examples/research_unet.png")
    parser.add_argument("--ratio", type=float, default=0.5, help="pruned share of MACs for dipgo")
    parser.add_argument("--effort", default="quick", choices=("quick", "default", "thorough"),
                        help="the pruning pipeline's effort (dipgo.prune(..., effort=...))")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    images = load_digits_16()
    model = TinyUNet(in_channels=1, image_size=16, base_channels=32, channel_mult=(1, 2, 2))
    print(f"TinyUNet: {sum(p.numel() for p in model.parameters()):,} parameters, {len(images)} training images")

    t0 = time.perf_counter()
    train(model, images, steps=args.train_steps, batch=args.batch, lr=args.lr, seed=args.seed)
    print(f"trained {args.train_steps} steps in {time.perf_counter() - t0:.1f}s")

    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)]
    t0 = time.perf_counter()
    with torch.no_grad():
        samples = ddim_sample(model, generators, steps=args.sample_steps, shape=(1, 16, 16))
    print(f"sampled {args.num_images} images with {args.sample_steps} DDIM steps in {time.perf_counter() - t0:.2f}s")
    save_grid(samples, args.out)
    print(f"wrote {args.out}")

    # --- dipgo: prune this model's own loop -------------------------------------------------------
    # dipgo needs three things: a function that runs *your* loop for a list of generators and returns
    # images in [0, 1], the module that loop calls once per step, and the names of the blocks to gate.
    import dipgo

    def sample_fn(gens: list[torch.Generator]) -> torch.Tensor:
        return ddim_sample(model, gens, steps=args.sample_steps, shape=(1, 16, 16))

    stages = [name for name, _ in model.named_children() if name in ("down", "up")]
    blocks = [f"{s}.{i}" for s in stages for i in range(len(getattr(model, s)))] + ["mid"]
    model.requires_grad_(False)  # the search trains its own pruner only
    t0 = time.perf_counter()
    schedule = dipgo.prune(sample_fn, denoiser=model, blocks=blocks, ratio=args.ratio,
                           num_inference_steps=args.sample_steps, effort=args.effort)
    print(f"pruned in {time.perf_counter() - t0:.1f}s")
    print(schedule.summary())
    dipgo.apply(model, schedule)  # the same loop, now skipping what the schedule reuses
    try:
        with torch.no_grad():
            pruned = ddim_sample(model, generators, steps=args.sample_steps, shape=(1, 16, 16))
    finally:
        dipgo.remove(model)
    mse = (pruned - samples).pow(2).mean().clamp_min(1e-12)
    print(f"pruned vs full: PSNR {10 * torch.log10(1 / mse):.1f} dB at {schedule.macs_full / schedule.macs:.2f}x "
          "fewer MACs")
    save_grid(torch.cat([samples, pruned]), Path(args.out).with_name(Path(args.out).stem + "-dipgo.png"),
              nrow=args.num_images)

if __name__ == "__main__":
    main()
