"""Tiny, randomly initialised, fully offline text-to-video pipelines (Wan 2.1, CogVideoX, HunyuanVideo), like
``families.py``.

Each factory builds its weights under a fixed seed without touching the caller's global RNG, in eval mode, with
the progress bar off (``families._seeded``). The tokenizer is ``families``' byte-level CLIP tokenizer: the video
pipelines only need ``input_ids`` and ``attention_mask`` from theirs.

Shapes: 8x8 latents (16x16 pixels; HunyuanVideo's VAE 32x32), 5 frames, 2 transformer blocks, so a 4-step
generation of two videos takes a fraction of a second on a CPU. ``CALL_KWARGS`` holds each family's size, frame
count and text length.
"""

from __future__ import annotations

from collections.abc import Callable

from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from families import PIXELS, TEXT_DIM, _seeded, _t5_encoder, t5_sizes, tiny_clip_tokenizer
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, UMT5Config, UMT5EncoderModel

__all__ = ["CALL_KWARGS", "FRAMES", "SIZE", "VIDEO_FAMILIES", "tiny_cogvideox", "tiny_hunyuan_video", "tiny_wan"]

LATENT_CHANNELS = 4
TEXT_LENGTH = 16  # max_sequence_length: text tokens per prompt
CLIP_LENGTH = 77  # HunyuanVideo's CLIP prompt length (fixed by the pipeline)


def _umt5_encoder(vocab_size: int) -> UMT5EncoderModel:
    """Wan's text encoder family (UMT5: a relative-position bias per layer); dropout off for determinism."""
    config = UMT5Config(**t5_sizes(vocab_size))
    return UMT5EncoderModel(config)


def _wan_vae() -> AutoencoderKLWan:
    """One spatial and one temporal downsampling step: 16x16 pixels <-> 8x8 latents, 5 frames <-> 3. Mean 0 and
    std 1 per latent channel, so decoding only rescales by the identity."""
    return AutoencoderKLWan(
        base_dim=4,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 1],
        num_res_blocks=1,
        temperal_downsample=[True],
        latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS,
        scale_factor_spatial=2,
        scale_factor_temporal=2,
    )


@_seeded
def tiny_wan() -> WanPipeline:
    """Wan 2.1 text-to-video: 2 ``WanTransformerBlock``s in ``transformer.blocks``, a UniPC flow-matching scheduler
    as Wan 2.1 ships it. With guidance the pipeline calls the transformer twice per step (cond, then uncond)."""
    tokenizer = tiny_clip_tokenizer(TEXT_LENGTH)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        text_dim=TEXT_DIM,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return WanPipeline(tokenizer=tokenizer, text_encoder=_umt5_encoder(len(tokenizer)), vae=_wan_vae(),
                       transformer=transformer, scheduler=scheduler)


def _cogvideox_vae() -> AutoencoderKLCogVideoX:
    """Two blocks: one spatial and one temporal downsampling step (16x16 pixels <-> 8x8 latents, 5 frames <-> 3),
    so ``temporal_compression_ratio`` is 2."""
    return AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 2,
        up_block_types=("CogVideoXUpBlock3D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=2,
        sample_height=PIXELS,
        sample_width=PIXELS,
    )


def _cogvideox_scheduler() -> CogVideoXDDIMScheduler:
    """CogVideoX-2B's scheduler settings (v-prediction, zero terminal SNR, trailing timesteps)."""
    return CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=3.0,
        timestep_spacing="trailing",
    )


@_seeded
def tiny_cogvideox() -> CogVideoXPipeline:
    """CogVideoX 2B layout (sinusoidal positions, no rotary embedding): 2 ``CogVideoXBlock``s in
    ``transformer_blocks``, each returning (hidden_states, encoder_hidden_states). Guidance is batched into one
    call. ``sample_*`` must match the latents, as the sinusoidal position table is built for that size."""
    tokenizer = tiny_clip_tokenizer(TEXT_LENGTH)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        time_embed_dim=4,
        text_embed_dim=TEXT_DIM,
        num_layers=2,
        sample_width=PIXELS // 2,
        sample_height=PIXELS // 2,
        sample_frames=5,
        patch_size=2,
        temporal_compression_ratio=2,
        max_text_seq_length=TEXT_LENGTH,
    )
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=_t5_encoder(len(tokenizer)), vae=_cogvideox_vae(),
                             transformer=transformer, scheduler=_cogvideox_scheduler())


def _hunyuan_vae() -> AutoencoderKLHunyuanVideo:
    """Three blocks: the VAE compresses time by 4 or 8 only, which takes two downsampling steps, and it downsamples
    space in the same blocks (32x32 pixels <-> 8x8 latents, 5 frames <-> 2)."""
    return AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
    )


def _llama_encoder(vocab_size: int) -> LlamaModel:
    """The pipeline reads the third-to-last hidden state, so two layers are the fewest that work."""
    return LlamaModel(LlamaConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                  max_position_embeddings=2 * TEXT_LENGTH, bos_token_id=0, eos_token_id=1,
                                  pad_token_id=1))


def _clip_77(vocab_size: int) -> CLIPTextModel:
    """HunyuanVideo pads its CLIP prompts to 77 tokens: the pooled output is all it uses."""
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM,
                                       num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=CLIP_LENGTH,
                                       bos_token_id=0, eos_token_id=1, pad_token_id=1))


@_seeded
def tiny_hunyuan_video() -> HunyuanVideoPipeline:
    """HunyuanVideo: one dual-stream block in ``transformer_blocks`` and one single-stream block in
    ``single_transformer_blocks``, both returning (hidden_states, encoder_hidden_states); guidance is embedded
    (no second call). The byte-level tokenizer stands in for Llama's, so the prompt template is a bare ``{}``
    (``CALL_KWARGS``): the real one crops a chat preamble counted in Llama tokens."""
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(2 * TEXT_LENGTH), tiny_clip_tokenizer(CLIP_LENGTH)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        rope_axes_dim=(2, 2, 4),
    )
    return HunyuanVideoPipeline(text_encoder=_llama_encoder(len(tokenizer)), tokenizer=tokenizer,
                                transformer=transformer, vae=_hunyuan_vae(),
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                text_encoder_2=_clip_77(len(tokenizer_2)), tokenizer_2=tokenizer_2)


VIDEO_FAMILIES: dict[str, Callable[[], DiffusionPipeline]] = {
    "wan": tiny_wan, "cogvideox": tiny_cogvideox, "hunyuan_video": tiny_hunyuan_video}

FRAMES = {family: 5 for family in VIDEO_FAMILIES}  # 4k + 1 frames, as every VAE here needs
SIZE = {"wan": PIXELS, "cogvideox": PIXELS, "hunyuan_video": 2 * PIXELS}  # pixels for 8x8 latents

CALL_KWARGS: dict[str, dict] = {
    family: {"height": SIZE[family], "width": SIZE[family], "num_frames": FRAMES[family],
             "max_sequence_length": TEXT_LENGTH}
    for family in VIDEO_FAMILIES
}
CALL_KWARGS["hunyuan_video"]["prompt_template"] = {"template": "{}", "crop_start": 0}
