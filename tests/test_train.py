"""The zoo training script: seeded, checkpoints atomically, resumes exactly, exports diffusers folders."""

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "zoo/train.py", *args], cwd=cwd, capture_output=True, text=True,
                          check=True, timeout=600)


def test_vae_resume_and_dit_export(tmp_path):
    ck, straight = tmp_path / "ck", tmp_path / "straight"
    vae = ("vae", "--batch", "4", "--ckpt-every", "1", "--eval-images", "200")
    run(*vae, "--steps", "2", "--ckpt-dir", str(ck))  # a run that stopped after step 2
    first = torch.load(ck / "vae.pt", weights_only=True)
    assert first["step"] == 2
    first["elapsed"] = 1000.0  # a mark: only a run that resumes from this checkpoint reports over 1000 s
    torch.save(first, ck / "vae.pt")
    run(*vae, "--steps", "3", "--ckpt-dir", str(ck))
    resumed = torch.load(ck / "vae.pt", weights_only=True)
    assert resumed["step"] == 3 and json.loads((ck / "vae-final.json").read_text())["train_seconds"] >= 1000
    assert json.loads((ck / "vae-final.json").read_text())["scaling_factor"] > 0
    run(*vae, "--steps", "3", "--ckpt-dir", str(straight))  # the same 3 steps, uninterrupted
    whole = torch.load(straight / "vae.pt", weights_only=True)
    for name, weight in whole["model"].items():  # the resumed run is exactly the uninterrupted one
        assert torch.equal(resumed["model"][name], weight), name
    assert torch.equal(resumed["rng"], whole["rng"])
    out = tmp_path / "dit"
    run("dit", "--steps", "1", "--batch", "4", "--ckpt-dir", str(ck), "--out", str(out))
    assert (out / "model_index.json").is_file()
    assert list((out / "transformer").glob("*.safetensors"))
