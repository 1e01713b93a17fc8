"""The zoo models load through plain diffusers, sample deterministically, and bad MODELs fail clearly."""

import json
from pathlib import Path

import pytest
import torch
from helpers import generate_digits

from dipgo.errors import ModelNotFoundError
from dipgo.zoo import resolve, zoo_names, zoo_root


@pytest.mark.parametrize("name,pipeline,denoiser", [
    ("mnist-sd", "StableDiffusionPipeline", "UNet2DConditionModel"),
    ("mnist-dit", "DiTPipeline", "DiTTransformer2DModel"),
])
def test_zoo_folder_is_plain_diffusers(name, pipeline, denoiser):
    from diffusers import DiffusionPipeline

    folder = zoo_root() / name
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == pipeline
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 20 * 2**20, f"{name} is {size / 2**20:.1f} MiB"
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"
    pipe = DiffusionPipeline.from_pretrained(folder)  # nothing from dipgo
    assert type(pipe).__name__ == pipeline
    net = getattr(pipe, "unet", None) or pipe.transformer
    assert type(net).__name__ == denoiser
    assert (folder / "README.md").is_file(), "each zoo model has a model card"


def test_sd_has_sd15_block_layout(sd_pipe):
    cfg = sd_pipe.unet.config
    assert list(cfg.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert cfg.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert list(cfg.up_block_types) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert type(sd_pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(sd_pipe.tokenizer).__name__.startswith("CLIPTokenizer")


def test_dit_labels(dit_pipe):
    assert dit_pipe.get_label_ids(["7", "seven"]) == [7, 7]


@pytest.mark.parametrize("fixture", ["sd_pipe", "dit_pipe"])
def test_short_sampling_shape_range_and_determinism(fixture, request):
    pipe = request.getfixturevalue(fixture)
    labels = [0, 1, 2]
    a = generate_digits(pipe, labels, seed=7, num_inference_steps=4, guidance_scale=3.0, batch_size=2)
    b = generate_digits(pipe, labels, seed=7, num_inference_steps=4, guidance_scale=3.0, batch_size=3)
    c = generate_digits(pipe, labels, seed=8, num_inference_steps=4, guidance_scale=3.0, batch_size=3)
    assert a.shape == (3, 1, 32, 32)
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 0.05
    # same seeds -> same images, whatever the batching; another seed -> other images
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - c).abs().mean() > 0.01


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelNotFoundError, match="unknown model 'mnist-xl'.*mnist-sd"):
        resolve("mnist-xl")


def test_missing_and_invalid_folders(tmp_path: Path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        resolve(str(tmp_path))
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve(str(f))


def test_zoo_names_and_hub_ids_resolve():
    assert resolve("mnist-sd").target.endswith("mnist-sd")
    assert resolve("some-org/some-model").target == "some-org/some-model"
    assert set(zoo_names()) == {"mnist-sd", "mnist-dit"}


def test_zoo_cards_hold_the_domain_knowledge():
    """The zoo's prompts / labels / guidance / FID reference come from its dipgo.json, not from library code."""
    sd, dit = resolve("mnist-sd"), resolve("mnist-dit")
    assert sd.defaults == {"prompts": [f"a handwritten digit {d}" for d in range(10)]}
    assert dit.defaults == {"class_labels": list(range(10))}
    assert sd.guidance_scale == 4.0 and dit.guidance_scale == 2.0
    assert sd.fid_reference is not None and sd.fid_reference.is_file()
    assert sd.classifier() is not None
