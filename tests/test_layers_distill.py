"""LAPTOP-Diff retraining by distillation: feature blocks, loss terms, exact resume, checkpoint refusal,
config checks, and that training moves the pruned student towards the teacher. Tiny random denoisers."""

import copy

import pytest
import torch
from diffusers import DDPMScheduler
from families import FAMILIES

from dipgo.errors import DipgoError
from dipgo.layers.candidates import candidate_names, remove_layers
from dipgo.layers.data import TrainingSet
from dipgo.layers.distill import DistillConfig, distill, feature_layers

N = 8


def _setup(family: str, remove: list[str]):
    pipe = FAMILIES[family]()
    teacher = pipe.unet if family == "sd" else pipe.transformer
    assert set(remove) <= set(candidate_names(teacher))
    student = remove_layers(copy.deepcopy(teacher), remove)
    cfg = teacher.config
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(N, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    if family == "sd":
        data = TrainingSet(x0, {"encoder_hidden_states": torch.randn(N, 4, cfg.cross_attention_dim, generator=g)},
                           {"return_dict": False})
    else:
        data = TrainingSet(x0, {"class_labels": torch.randint(0, 10, (N,), generator=g)}, {"return_dict": False},
                           sample_arg="hidden_states")
    return teacher, student, data, DDPMScheduler.from_config(pipe.scheduler.config)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is fastest, and two threads spinning on a busy 2-core machine made
    single steps ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet():
    return _setup("sd", ["mid_block.attentions.0", "up_blocks.0.resnets.1"])


@pytest.fixture(scope="module")
def dit():
    return _setup("dit", ["transformer_blocks.1"])


def _run(setup, checkpoint=None, student=None, **kw):
    teacher, student0, data, noise = setup
    student = copy.deepcopy(student0) if student is None else student
    history = distill(student, teacher, data, noise, DistillConfig(**{"batch": 4, **kw}), checkpoint, progress=False)
    return student, history


def test_feature_layers(unet, dit):
    assert feature_layers(unet[0]) == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    assert feature_layers(unet[1]) == feature_layers(unet[0])
    assert feature_layers(dit[0]) == ["transformer_blocks.0", "transformer_blocks.1"]


@pytest.mark.parametrize("family", ["unet", "dit"])
def test_loss_terms(family, request):
    setup = request.getfixturevalue(family)
    runs = {mode: _run(setup, steps=2, feature_kd=mode)[1] for mode in ("normalized", "plain", "none")}
    for history in runs.values():
        assert [h["step"] for h in history] == [0, 1]
        assert all(torch.isfinite(torch.tensor(h[k])) for h in history for k in ("loss", "task", "out_kd", "feat_kd"))
        assert history[0]["out_kd"] > 0
    assert all(h["feat_kd"] == 0 for h in runs["none"])
    first = {mode: h[0] for mode, h in runs.items()}
    assert first["normalized"]["task"] == first["plain"]["task"] == first["none"]["task"]  # same first batch
    assert first["normalized"]["feat_kd"] > 0 and first["plain"]["feat_kd"] > 0
    assert first["normalized"]["feat_kd"] != pytest.approx(first["plain"]["feat_kd"], rel=1e-3)


def test_zero_steps_touches_nothing(unet):
    teacher, student0, data, noise = unet
    student = copy.deepcopy(student0).eval()
    assert distill(student, teacher, data, noise, DistillConfig(steps=0), progress=False) == []
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), student0.parameters(), strict=True))


def test_resume_is_exact(unet, tmp_path):
    rng = torch.get_rng_state()
    full, full_history = _run(unet, steps=4, checkpoint_every=2)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's global RNG is left alone
    ckpt = tmp_path / "d.pt"
    _, first = _run(unet, ckpt, steps=2, checkpoint_every=2)
    assert len(first) == 2 and ckpt.exists()
    resumed, history = _run(unet, ckpt, steps=4, checkpoint_every=2)  # a fresh copy of the initial student
    assert history == full_history
    assert not resumed.training
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.load(ckpt, weights_only=True)["step"] == 4


def test_checkpoint_refusals(unet, tmp_path):
    ckpt = tmp_path / "d.pt"
    _run(unet, ckpt, steps=2)
    with pytest.raises(DipgoError, match="different distillation.*lr.*delete it"):
        _run(unet, ckpt, steps=3, lr=1e-3)
    with pytest.raises(DipgoError, match="past steps=1"):
        _run(unet, ckpt, steps=1)
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(DipgoError, match="corrupt or truncated.*delete it"):
        _run(unet, truncated, steps=2)


@pytest.mark.parametrize("bad, match", [({"feature_kd": "l2"}, "normalized"), ({"steps": -1}, "steps"),
                                        ({"batch": 0}, "batch"), ({"lr": 0.0}, "lr"), ({"w_feat": -1.0}, "w_feat"),
                                        ({"checkpoint_every": -1}, "checkpoint_every")])
def test_bad_config(bad, match):
    with pytest.raises(DipgoError, match=match):
        DistillConfig(**bad)


def test_training_reduces_output_kd(unet):
    teacher, student0, data, noise = unet
    g = torch.Generator().manual_seed(123)
    index, t = torch.arange(N), torch.randint(0, 1000, (N,), generator=g)
    x_t = noise.add_noise(data.x0, torch.randn(data.x0.shape, generator=g), t)

    @torch.no_grad()
    def gap(model):
        return torch.mean((data.call(model, x_t, t, index) - data.call(teacher, x_t, t, index)) ** 2).item()

    # no task loss: a random teacher is far from eps, so the task term would pull the student away from it
    student, history = _run(unet, steps=30, batch=8, lr=1e-3, w_task=0.0)
    assert gap(student) < 0.7 * gap(student0)
    first, last = (sum(h["out_kd"] for h in part) / 3 for part in (history[:3], history[-3:]))
    assert last < first
