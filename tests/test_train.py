"""The zoo training script: seeded, checkpoints atomically, resumes, exports diffusers folders."""

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
    ck = tmp_path / "ck"
    run("vae", "--steps", "2", "--batch", "4", "--ckpt-every", "1", "--ckpt-dir", str(ck))
    first = torch.load(ck / "vae.pt", weights_only=False)
    assert first["step"] == 2
    result = run("vae", "--steps", "3", "--batch", "4", "--ckpt-every", "1", "--ckpt-dir", str(ck))
    assert "2/3" in result.stderr  # the progress bar starts where the checkpoint left off
    assert torch.load(ck / "vae.pt", weights_only=False)["step"] == 3
    assert json.loads((ck / "vae-final.json").read_text())["scaling_factor"] > 0
    out = tmp_path / "dit"
    run("dit", "--steps", "1", "--batch", "4", "--ckpt-dir", str(ck), "--out", str(out))
    assert (out / "model_index.json").is_file()
    assert list((out / "transformer").glob("*.safetensors"))
