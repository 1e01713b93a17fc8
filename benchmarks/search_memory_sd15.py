"""Peak memory of one DiP-GO search iteration at Stable Diffusion 1.5 scale.

    python -m benchmarks.search_memory_sd15   # run it alone on the machine

No SD-1.5 checkpoint can be downloaded here, so the pipeline is built from the real configurations
with random weights: SD-1.5's UNet2DConditionModel (860 M parameters: channels 320/640/1280/1280, two
layers per block, cross-attention 768, 8 heads), SD's AutoencoderKL (channels 128/256/512/512) and a
CLIP-L-sized text encoder (12 layers, width 768; a small byte-level vocabulary, since the real one
cannot be downloaded either). Memory depends on the shapes, not on the weights' values.

The search setting: 32x32 latents (256x256 images), 10 DDIM steps, classifier-free guidance 7.5,
1 image per iteration, per-call gradient checkpointing on (``auto`` picks it for 860 M parameters).
Each mode runs in a fresh process and reports its peak resident set size (``ru_maxrss``):

* ``load``: build the pipeline and sample one image (the floor: weights + one generation);
* ``search``: build the pipeline and run one search iteration (full run + gated run + backward).

Writes ``benchmarks/results/search-memory-sd15.json``.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time

from benchmarks import harness as h

MODES = ("load", "search")
STEPS, SIZE, GUIDANCE = 10, 256, 7.5


def build():
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from dipgo.zoo.tokenizer import write_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(  # SD-1.5's unet/config.json
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(  # SD's vae/config.json
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, sample_size=512, scaling_factor=0.18215)
    tok_dir = write_tokenizer(tempfile.mkdtemp(), max_length=77)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        eos_token_id=tokenizer.eos_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for m in (unet, vae, text):
        m.eval()
    return pipe


def child(mode: str) -> None:
    import torch

    from dipgo.cache.search import Search, SearchConfig
    from dipgo.models.pipelines import default_calibration, generate

    t0 = time.perf_counter()
    pipe = build()
    params = sum(p.numel() for p in pipe.unet.parameters())
    cal = default_calibration(pipe)  # the generic prompts
    t1 = time.perf_counter()
    rec = {"mode": mode, "unet_params": params, "build_seconds": round(t1 - t0, 1)}
    if mode == "load":
        generate(pipe, cal, [0], num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE)
    else:
        cfg = SearchConfig(ratio=0.8, num_inference_steps=STEPS, guidance_scale=GUIDANCE, iterations=1, batch=1)
        search = Search(pipe, cfg, calibration=cal, call_kwargs={"height": SIZE, "width": SIZE})
        rec["grad_checkpointing"] = search.checkpointing
        result = search.run(progress=False)
        rec["iteration_seconds"] = round(result.seconds, 1)
    rec["seconds"] = round(time.perf_counter() - t1, 1)
    rec["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    rec["threads"] = torch.get_num_threads()
    print(json.dumps(rec))


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--child", choices=MODES, default=None, help="internal: measure one mode in this process")
    args = p.parse_args()
    if args.child:
        return child(args.child)
    rows = [h.child_json("search_memory_sd15", "--child", mode) for mode in MODES]
    result = {"what": "peak RSS of one DiP-GO search iteration, SD-1.5 configs with random weights",
              "latents": f"{SIZE // 8}x{SIZE // 8}", "steps": STEPS, "guidance_scale": GUIDANCE, "batch": 1,
              "rows": rows, "limit_mb": 16 * 1024, "machine": h.machine()}
    print(f"wrote {h.write_json(h.RESULTS / 'search-memory-sd15.json', result)}")


if __name__ == "__main__":
    main()
