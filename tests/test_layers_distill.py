"""LAPTOP-Diff retraining by distillation: feature blocks, loss terms, exact resume, checkpoint refusal,
config checks, and that training moves the pruned student towards the teacher. Tiny random denoisers."""

import copy

import pytest
import torch
from diffusers import DDPMScheduler
from families import FAMILIES

from dipgo.errors import DipgoError
from dipgo.models.data import TrainingSet
from dipgo.models.distill import DistillConfig, distill, distilled_features, feature_layers, learning_rate
from dipgo.models.surgery import candidate_names, remove_layers

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


def _run(setup, checkpoint=None, student=None, interrupt_at=None, **kw):
    """Distil a fresh copy of the student; ``interrupt_at=k`` stops the run at step k as Ctrl-C would."""
    teacher, student0, data, noise = setup
    student = copy.deepcopy(student0) if student is None else student

    def on_step(step):
        if step == interrupt_at:
            raise KeyboardInterrupt

    cfg = DistillConfig(**{"batch": 4, **kw})
    try:
        history = distill(student, teacher, data, noise, cfg, checkpoint, progress=False, on_step=on_step)
    except KeyboardInterrupt:
        history = None
    return student, history


def test_feature_layers(unet, dit):
    assert feature_layers(unet[0]) == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    assert feature_layers(unet[1]) == feature_layers(unet[0])
    assert feature_layers(dit[0]) == ["transformer_blocks.0", "transformer_blocks.1"]


def test_features_are_taught_at_the_end_of_a_removed_run(unet, dit):
    # UNet stages are never removed: every stage output is taught
    assert distilled_features(unet[1], unet[0]) == feature_layers(unet[0])
    # DiT block 1 is removed: block 0's output reaches the end unchanged, so it is taught the teacher's last
    # output, not also block 0's (one tensor cannot match both)
    assert distilled_features(dit[1], dit[0]) == ["transformer_blocks.1"]
    assert distilled_features(dit[0], dit[0]) == feature_layers(dit[0])


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
    _run(unet, ckpt, steps=4, checkpoint_every=2, interrupt_at=3)  # interrupted after the step-2 checkpoint
    assert torch.load(ckpt, weights_only=True)["step"] == 2
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
                                        ({"checkpoint_every": -1}, "checkpoint_every"),
                                        ({"lr_schedule": "step"}, "cosine"), ({"warmup": -1}, "warmup"),
                                        ({"ema": 1.0}, "ema"), ({"ema": -0.1}, "ema"),
                                        ({"p_uncond": 1.0}, "p_uncond"), ({"p_uncond": -0.1}, "p_uncond")])
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
    student, history = _run(unet, steps=30, batch=8, lr=1e-3, w_task=0.0, lr_schedule="constant", ema=0.0)
    assert gap(student) < 0.7 * gap(student0)
    first, last = (sum(h["out_kd"] for h in part) / 3 for part in (history[:3], history[-3:]))
    assert last < first


def test_learning_rate_schedule():
    cfg = DistillConfig(steps=110, lr=1e-3, lr_schedule="cosine", warmup=10)
    lrs = [learning_rate(cfg, s) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warm-up
    assert lrs[10] == pytest.approx(1e-3) and lrs[60] == pytest.approx(5e-4)  # cosine from the peak...
    assert lrs[-1] < 1e-6 and all(a >= b for a, b in zip(lrs[9:-1], lrs[10:], strict=True))  # ...to zero
    assert learning_rate(DistillConfig(lr=3e-4, lr_schedule="constant"), 1234) == 3e-4
    default = DistillConfig(steps=300, lr=1e-3)  # cosine, warm-up a tenth of the run (at most 100 steps)
    assert learning_rate(default, 29) == pytest.approx(1e-3) and learning_rate(default, 28) < 1e-3
    assert learning_rate(DistillConfig(steps=5000, lr=1e-3), 99) == pytest.approx(1e-3)


def test_history_records_the_learning_rate(unet):
    _, history = _run(unet, steps=3, lr=1e-3, lr_schedule="cosine", warmup=2)
    assert [h["lr"] for h in history] == pytest.approx([5e-4, 1e-3, 1e-3])


def test_ema_ends_with_the_average_and_resumes_exactly(unet, tmp_path):
    teacher, student0, data, noise = unet
    kw = dict(steps=4, lr=1e-3, ema=0.9, checkpoint_every=2)
    averaged, history = _run(unet, **kw)
    plain, plain_history = _run(unet, **{**kw, "ema": 0.0})
    assert DistillConfig().ema == 0.999 and DistillConfig().lr_schedule == "cosine"  # the defaults
    assert history == plain_history  # the average does not change the training itself...
    moved = [not torch.equal(a, b) for a, b in zip(averaged.parameters(), plain.parameters(), strict=True)]
    assert any(moved)  # ...only which weights the student ends with
    # the average lies between the start and the last weights: closer to the start than the last weights are
    far = sum((p - q).pow(2).sum() for p, q in zip(plain.parameters(), student0.parameters(), strict=True))
    near = sum((p - q).pow(2).sum() for p, q in zip(averaged.parameters(), student0.parameters(), strict=True))
    assert near < far
    ckpt = tmp_path / "e.pt"
    _run(unet, ckpt, interrupt_at=3, **kw)
    resumed, resumed_history = _run(unet, ckpt, **kw)
    assert resumed_history == history
    for a, b in zip(averaged.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(DipgoError, match="different distillation.*ema"):
        _run(unet, ckpt, **{**kw, "ema": 0.99})


# ---------------------------------------------------------------- the unconditional branch (classifier-free guidance)
def test_unconditional_kwargs_are_what_the_guided_pipeline_feeds_its_other_branch():
    from dipgo.models.data import conditional_kwargs, unconditional_kwargs
    from dipgo.models.pipelines import default_calibration

    sd = FAMILIES["sd"]()
    cal = default_calibration(sd)
    empty = sd.encode_prompt("", "cpu", 1, False)[0]
    u = unconditional_kwargs(sd, cal)
    assert set(u) == {"encoder_hidden_states"} and torch.allclose(u["encoder_hidden_states"], empty)

    dit = FAMILIES["dit"]()
    u = unconditional_kwargs(dit, default_calibration(dit))
    labels = conditional_kwargs(dit, default_calibration(dit), [0, 1, 2])["class_labels"]
    assert u["class_labels"].shape == (1,) and not (labels == u["class_labels"]).any()  # the null class


def test_training_set_drops_rows_to_the_unconditional_conditioning(dit):
    _, _, data, _ = dit
    null = torch.tensor([1000])
    with_null = TrainingSet(data.x0, data.cond, data.static, data.sample_arg, uncond={"class_labels": null})
    seen = []
    model = lambda **kw: seen.append(kw["class_labels"]) or torch.zeros(1)  # noqa: E731
    index, drop = torch.arange(4), torch.tensor([True, False, True, False])
    with_null.call(model, data.x0[:4], torch.zeros(4), index, drop)
    with_null.call(model, data.x0[:4], torch.zeros(4), index)
    assert seen[0].tolist() == [1000, data.cond["class_labels"][1].item(), 1000, data.cond["class_labels"][3].item()]
    assert torch.equal(seen[1], data.cond["class_labels"][:4])
    with pytest.raises(DipgoError, match="not among the conditioning keys"):
        TrainingSet(data.x0, data.cond, uncond={"encoder_hidden_states": torch.zeros(1, 4, 8)})
    with pytest.raises(DipgoError, match="must be one row"):
        TrainingSet(data.x0, data.cond, uncond={"class_labels": torch.tensor([1000, 1000])})


@pytest.mark.parametrize("p_uncond", [0.0, 0.5])
def test_distillation_teaches_the_unconditional_branch(dit, p_uncond):
    """Both models get the same dropped rows, on about p_uncond of the examples; with p_uncond=0 none."""
    teacher, student0, data, noise = dit
    data = TrainingSet(data.x0, data.cond, data.static, data.sample_arg, uncond={"class_labels": torch.tensor([1000])})
    student = copy.deepcopy(student0)
    fed = {"student": [], "teacher": []}
    handles = [m.register_forward_pre_hook(lambda mod, a, kw, who=who: fed[who].append(kw["class_labels"].clone()),
                                           with_kwargs=True) for who, m in (("student", student), ("teacher", teacher))]
    try:
        distill(student, teacher, data, noise, DistillConfig(steps=6, batch=8, p_uncond=p_uncond), progress=False)
    finally:
        for h in handles:
            h.remove()
    labels = torch.cat(fed["student"])
    assert all(torch.equal(s, t) for s, t in zip(fed["student"], fed["teacher"], strict=True))
    share = float((labels == 1000).float().mean())
    assert share == 0.0 if p_uncond == 0 else 0.2 < share < 0.8


def test_with_unconditional_keeps_a_given_one_and_finds_it_otherwise(dit):
    from dipgo.models.data import with_unconditional
    from dipgo.models.pipelines import default_calibration

    _, _, data, _ = dit
    pipe = FAMILIES["dit"]()
    found = with_unconditional(data, pipe, default_calibration(pipe))
    assert set(found.uncond) == {"class_labels"} and not data.uncond  # a copy: the caller's set is untouched
    mine = TrainingSet(data.x0, data.cond, data.static, data.sample_arg, uncond={"class_labels": torch.tensor([7])})
    assert with_unconditional(mine, pipe, default_calibration(pipe)) is mine
