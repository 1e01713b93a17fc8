"""Tiny, randomly initialised, fully offline diffusers pipelines, one factory per model family.

Every factory builds its weights under a fixed seed (inside ``torch.random.fork_rng`` so the caller's global RNG
is left untouched), puts every module in eval mode (DiT's label dropout and T5's dropout are only active in
training mode, which is what a freshly constructed module is in) and disables the progress bar.

Shapes are chosen so that each text-to-image pipeline works on 8x8 latents: every VAE has two blocks (one
downsampling step, ``vae_scale_factor == 2``), so ``height = width = 16`` pixels gives 8x8 latents.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable

import torch
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

__all__ = [
    "CALL_KWARGS",
    "CONDITIONING",
    "FAMILIES",
    "tiny_clip_tokenizer",
    "tiny_ddim",
    "tiny_ddpm",
    "tiny_dit",
    "tiny_flux",
    "tiny_pixart",
    "tiny_sd",
    "tiny_sd3",
    "tiny_sdxl",
]

SEED = 0
TOKEN_MAX_LENGTH = 16  # CLIP tokenizer `model_max_length`; every CLIP encoder gets this many positions
TEXT_DIM = 32  # hidden size of every tiny text encoder (CLIP and T5)
LATENT_SIZE = 8  # latent height/width for every latent-space family
PIXELS = 16  # image height/width: LATENT_SIZE * vae_scale_factor (2)


# --------------------------------------------------------------------------------------------------- tokenizer
def tiny_clip_tokenizer(max_length: int = TOKEN_MAX_LENGTH) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with no merges: every prompt falls back to its 256 byte-level symbols.

    The vocabulary is ``<|startoftext|>`` (id 0), ``<|endoftext|>`` (id 1, also eos/pad/unk), the 256 byte-level
    symbols and the same 256 symbols with the ``</w>`` end-of-word suffix (514 ids in all), so any string
    tokenizes without unknown tokens. The files are written to a fresh temp folder, loaded (the backend reads
    them eagerly) and the folder removed again.
    """
    symbols = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for symbol in symbols:
            vocab[symbol + suffix] = len(vocab)
    folder = tempfile.mkdtemp(prefix="tiny_clip_tok_")
    try:
        vocab_file = os.path.join(folder, "vocab.json")
        merges_file = os.path.join(folder, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")  # header line only: an empty merge list
        # transformers 5 names these parameters `vocab`/`merges`; positional file paths still load from disk
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=max_length)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ text encoders
def _clip_config(vocab_size: int, projection_dim: int = TEXT_DIM) -> CLIPTextConfig:
    """eos_token_id=1 matches the tokenizer, so the pooled output is taken at the real end-of-text token."""
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=2 * TEXT_DIM,
        projection_dim=projection_dim,
        num_hidden_layers=2,  # SDXL/SD3 read hidden_states[-2], so keep a real penultimate layer
        num_attention_heads=4,
        max_position_embeddings=TOKEN_MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _t5_encoder(vocab_size: int) -> T5EncoderModel:
    """T5 uses relative positions, so any `max_sequence_length` works; dropout off for determinism."""
    return T5EncoderModel(T5Config(**t5_sizes(vocab_size)))


def t5_sizes(vocab_size: int) -> dict:
    """The tiny T5-family encoder settings (T5, and Wan's UMT5)."""
    return dict(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=2 * TEXT_DIM, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                pad_token_id=1, eos_token_id=1, decoder_start_token_id=0)


def _vae(latent_channels: int = 4, **kwargs) -> AutoencoderKL:
    """Two blocks -> one downsampling step -> vae_scale_factor 2 (16x16 pixels <-> 8x8 latents)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=PIXELS,
        **kwargs,
    )


def _sd_scheduler() -> DDIMScheduler:
    """The usual Stable Diffusion DDIM settings (scaled-linear betas, no clipping in latent space)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # StableDiffusionPipeline warns about (and rewrites) configs with steps_offset=0
    )


# ------------------------------------------------------------------------------------------------------ helpers
def _seeded(factory: Callable[[], DiffusionPipeline]) -> Callable[[], DiffusionPipeline]:
    """Seed weight init without disturbing the caller's global RNG; eval mode + silent progress bar."""

    @functools.wraps(factory)
    def wrapper() -> DiffusionPipeline:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            pipe = factory()
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.eval()
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return wrapper


# ---------------------------------------------------------------------------------------------------- factories
@_seeded
def tiny_sd() -> StableDiffusionPipeline:
    """SD 1.x layout: 2 down / mid / 2 up blocks, cross-attention in the inner down and up block."""
    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=2,  # legacy name: this is the number of heads
        norm_num_groups=8,
    )
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(len(tokenizer))),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@_seeded
def tiny_sdxl() -> StableDiffusionXLPipeline:
    """SDXL layout: the UNet cross-attends to both encoders' hidden states concatenated (2 * TEXT_DIM), and its
    "text_time" added embedding takes 6 size/crop ids * addition_time_embed_dim + encoder 2's pooled projection.
    The watermarker is switched off explicitly: it is auto-enabled when `invisible-watermark` is installed and
    cannot handle 16x16 images."""
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=2 * TEXT_DIM,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_DIM,
        norm_num_groups=8,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(len(tokenizer))),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(tokenizer_2))),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_sd_scheduler(),
        add_watermarker=False,
    )


@_seeded
def tiny_pixart() -> PixArtSigmaPipeline:
    """PixArt-Sigma (Alpha adds resolution micro-conditions only at sample_size 128). The CLIP tokenizer stands in
    for T5's: the pipeline only needs input_ids + attention_mask. The caption projection maps T5's d_model to the
    transformer width, so `cross_attention_dim` must equal heads * head_dim. out_channels = 2 * in_channels mimics
    the learned-sigma output the pipeline splits off."""
    tokenizer = tiny_clip_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=TEXT_DIM,
    )
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(len(tokenizer)),
        vae=_vae(),
        transformer=transformer,
        scheduler=_sd_scheduler(),
    )


@_seeded
def tiny_dit() -> DiTPipeline:
    """Class-conditional DiT. num_embeds_ada_norm stays 1000 because the pipeline hard-codes the null class id
    1000 for guidance (the label table has 1000 + 1 rows); learned-sigma output like the real DiT-XL/2."""
    transformer = DiTTransformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_embeds_ada_norm=1000,
    )
    id2label = {i: f"class_{i}" for i in range(10)}
    return DiTPipeline(transformer=transformer, vae=_vae(), scheduler=_sd_scheduler(), id2label=id2label)


@_seeded
def tiny_sd3() -> StableDiffusion3Pipeline:
    """SD3 without T5 (text_encoder_3=None: the pipeline then feeds zeros of width joint_attention_dim). The two
    CLIP hidden states are concatenated (2 * TEXT_DIM) and padded to joint_attention_dim, the pooled projections
    concatenated into pooled_projection_dim. caption_projection_dim must equal the transformer width."""
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        joint_attention_dim=2 * TEXT_DIM,
        caption_projection_dim=16,
        pooled_projection_dim=2 * TEXT_DIM,
        pos_embed_max_size=LATENT_SIZE,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(shift_factor=0.0),  # SD3 decodes with `latents / scaling + shift_factor`: must not be None
        text_encoder=CLIPTextModelWithProjection(_clip_config(len(tokenizer))),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(tokenizer_2))),
        tokenizer_2=tokenizer_2,
        text_encoder_3=None,
        tokenizer_3=None,
    )


@_seeded
def tiny_flux() -> FluxPipeline:
    """Flux packs 2x2 latent patches, so in_channels = 4 * latent_channels and 16x16 pixels -> 8x8 latents -> 16
    tokens. The rope axes must sum to attention_head_dim. guidance_embeds=False (like FLUX.1-schnell): the
    pipeline then ignores guidance_scale. The scheduler uses FLUX.1-dev's dynamic shifting settings."""
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    latent_channels = 4
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,  # T5 d_model
        pooled_projection_dim=TEXT_DIM,  # CLIPTextModel pooler_output width
        guidance_embeds=False,
        axes_dims_rope=(2, 2, 4),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_vae(latent_channels, shift_factor=0.0),  # Flux decodes with `+ shift_factor`: must not be None
        text_encoder=CLIPTextModel(_clip_config(len(tokenizer))),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(len(tokenizer_2)),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def _pixel_unet() -> UNet2DModel:
    """Pixel-space 16x16 RGB UNet: 2 down (second with attention) / mid / 2 up blocks."""
    return UNet2DModel(
        sample_size=PIXELS,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=8,
    )


@_seeded
def tiny_ddpm() -> DDPMPipeline:
    """Unconditional pixel-space DDPM."""
    return DDPMPipeline(unet=_pixel_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000))


@_seeded
def tiny_ddim() -> DDIMPipeline:
    """Unconditional pixel-space DDIM (the pipeline re-creates its scheduler via DDIMScheduler.from_config)."""
    return DDIMPipeline(unet=_pixel_unet(), scheduler=DDIMScheduler(num_train_timesteps=1000))


# ------------------------------------------------------------------------------------------------------- tables
FAMILIES: dict[str, Callable[[], DiffusionPipeline]] = {
    "sd": tiny_sd,
    "sdxl": tiny_sdxl,
    "pixart": tiny_pixart,
    "dit": tiny_dit,
    "sd3": tiny_sd3,
    "flux": tiny_flux,
    "ddpm": tiny_ddpm,
    "ddim": tiny_ddim,
}

# What each family's `__call__` takes as its batch: `prompt=[...]`, `class_labels=[...]` or `batch_size=n`.
CONDITIONING: dict[str, str] = {
    "sd": "prompt",
    "sdxl": "prompt",
    "pixart": "prompt",
    "dit": "class",
    "sd3": "prompt",
    "flux": "prompt",
    "ddpm": "none",
    "ddim": "none",
}

_SMALL = {"height": PIXELS, "width": PIXELS}

# Extra `__call__` kwargs. PixArt: resolution binning only knows sample sizes 32/64/128/256 and caption
# cleaning would need bs4 + ftfy. max_sequence_length keeps the T5 (or, for SD3, zero-filled) sequence short.
CALL_KWARGS: dict[str, dict] = {
    "sd": dict(_SMALL),
    "sdxl": dict(_SMALL),
    "pixart": {**_SMALL, "clean_caption": False, "use_resolution_binning": False, "max_sequence_length": 16},
    "dit": {},
    "sd3": {**_SMALL, "max_sequence_length": 8},
    "flux": {**_SMALL, "max_sequence_length": 8},
    "ddpm": {},
    "ddim": {},
}
