"""Retraining a pruned denoiser (student) by distillation from the original (teacher), as LAPTOP-Diff does;
layer pruning and depth pruning (UPDP, which also ramps its blend factor through ``on_step``) share it.

    loss = w_task * task + w_out * output_KD + w_feat * feature_KD

* task: the usual noise-prediction loss on the training set (target eps, or v for v-prediction models);
* output_KD: MSE between the student's and the teacher's outputs on the same noisy inputs;
* feature_KD: MSE between their block outputs (:func:`feature_layers`), summed over blocks.

Raw feature MSEs differ by orders of magnitude across depths, so an unnormalised sum (BK-SDM's) is
dominated by the few blocks with the largest activations. LAPTOP-Diff's fix, ``feature_kd="normalized"``,
divides each block's term by the teacher feature's mean square there (held constant), so every depth
counts about equally. Both use the same weight ``w_feat``. Past a removed block the student's tensor stays
the same until the next kept block, so it is taught once, at the end of the run
(:func:`distilled_features`), rather than asked to match every teacher feature along the run.

Two habits diffusion models are trained with, and the default here: a learning rate that warms up and
then decays on a cosine to zero (``lr_schedule="cosine"``), and an exponential moving average of the
weights (``ema``), which is what the retrained model keeps.

A guided pipeline calls the denoiser on the unconditional input (empty prompt, null class) at every step,
and the model learnt it from the share of its training examples whose condition was dropped. Retraining
on conditional examples only leaves that branch untaught, and classifier-free guidance then pushes along
a wrong direction; so ``p_uncond`` of the examples (teacher and student alike) get ``TrainingSet.uncond``
instead.

Everything random (batches, timesteps, noise, dropout inside the model) comes from one seeded generator
that is saved in the checkpoint, so a resumed run sees exactly the batches an uninterrupted run would.
The learning rate is a function of the step alone, so it resumes exactly too (a resumed run that raises
``steps`` stretches the cosine from there, as the zoo's training does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import DipgoError
from ..fileio import atomic_path, check_progress, check_tensors, load_optimizer, read_checkpoint
from .calibration import Calibration
from .checks import check_at_least, check_choice
from .data import TrainingSet, teacher_set, with_unconditional
from .pipelines import denoiser_of
from .surgery import JOINT, Removed

FEATURE_KD = ("normalized", "plain", "none")
LR_SCHEDULES = ("constant", "cosine")
RESUMABLE = ("steps", "checkpoint_every")  # settings a resumed run may change


@dataclass
class DistillConfig:
    """Retraining settings, shared by layer and depth pruning (their configs nest one).

    Args:
        steps: optimiser steps (0: no retraining, the pruned model stays one-shot).
        batch: examples per step.
        lr: peak learning rate (AdamW, no weight decay).
        feature_kd: ``normalized`` (each block's feature term divided by the teacher feature's mean square,
            so every depth counts), ``plain`` (raw MSEs, dominated by the largest activations) or ``none``.
        w_task, w_out, w_feat: weights of the task loss, the output distillation and the feature
            distillation.
        grad_clip: gradient norm clip (0: off).
        checkpoint_every: steps between checkpoints (0: only at the end).
        seed: seed of the one generator every random draw comes from (so a resumed run is exact).
        lr_schedule: ``cosine`` (linear warm-up over ``warmup`` steps, then a cosine from ``lr`` to zero)
            or ``constant``.
        warmup: warm-up steps; None takes a tenth of the run, at most 100 steps.
        ema: decay of the weights' moving average (0: off); with it on, the student ends with the average,
            which is smoother than the last weights.
        p_uncond: the share of examples given the unconditional conditioning (``TrainingSet.uncond``), as
            classifier-free-guidance models are trained; without it a guided pipeline's other branch is
            never taught.
    """

    steps: int = 500
    batch: int = 32
    lr: float = 5e-4
    feature_kd: str = "normalized"
    w_task: float = 1.0
    w_out: float = 1.0
    w_feat: float = 1.0
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    seed: int = 0
    lr_schedule: str = "cosine"
    warmup: int | None = None  # None: a tenth of the run, at most 100 steps
    ema: float = 0.999
    p_uncond: float = 0.1

    def __post_init__(self):
        check_choice(self.feature_kd, FEATURE_KD, "feature_kd")
        check_at_least(self.steps, 0, "steps (0: no retraining)")
        check_at_least(self.batch, 1, "batch")
        if not self.lr > 0:
            raise DipgoError(f"lr must be > 0, got {self.lr}")
        for name in ("w_task", "w_out", "w_feat", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise DipgoError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        if self.warmup is not None and self.warmup < 0:
            raise DipgoError(f"warmup must be >= 0 steps, got {self.warmup}")
        if not 0.0 <= self.ema < 1.0:
            raise DipgoError(f"ema must be in [0, 1) (0: no moving average; 0.999 is usual), got {self.ema}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise DipgoError(f"p_uncond must be in [0, 1) (the share of examples given the unconditional "
                             f"conditioning; 0.1 is usual), got {self.p_uncond}")
        if self.checkpoint_every < 0:
            raise DipgoError(f"checkpoint_every must be >= 0 (0: only at the end), got {self.checkpoint_every}")


def one_shot() -> DistillConfig:
    """The settings of no retraining at all: a pruning config's default."""
    return DistillConfig(steps=0)


def as_distill_config(value) -> DistillConfig:
    """A pruning config's nested distillation settings, given as a :class:`DistillConfig` or a dict of its
    fields."""
    if isinstance(value, DistillConfig):
        return value
    if isinstance(value, dict):
        return DistillConfig(**value)
    raise DipgoError(f"distill must be a DistillConfig (or a dict of its fields), got {type(value).__name__}")

@dataclass(kw_only=True)
class MethodConfig:
    """The settings a model-pruning method shares with the others: the distillation that follows the cut
    (``distill.steps=0``, the default: none) and the calibration runs its choice is measured on
    (``n_images`` images of ``num_inference_steps`` steps at ``guidance_scale``; None: the pipeline's default).
    Subclasses call ``super().__post_init__()``."""

    distill: DistillConfig = field(default_factory=one_shot)
    n_images: int = 8
    num_inference_steps: int = 20
    guidance_scale: float | None = None

    def __post_init__(self):
        self.distill = as_distill_config(self.distill)
        check_at_least(self.n_images, 1, "n_images")
        check_at_least(self.num_inference_steps, 1, "num_inference_steps")


def feature_layers(model: nn.Module) -> list[str]:
    """The blocks whose outputs are distilled: a UNet's down blocks, mid block and up blocks; a
    transformer's blocks (and Flux's single blocks). Whole blocks are never removed, so teacher and
    student have the same names."""
    if hasattr(model, "down_blocks") and hasattr(model, "up_blocks"):
        names = [f"down_blocks.{i}" for i in range(len(model.down_blocks))]
        if getattr(model, "mid_block", None) is not None:
            names.append("mid_block")
        return names + [f"up_blocks.{i}" for i in range(len(model.up_blocks))]
    lists = [a for a in ("transformer_blocks", "single_transformer_blocks")
             if isinstance(getattr(model, a, None), nn.ModuleList)]
    if not lists:
        raise DipgoError(f"{type(model).__name__} has no blocks dipgo knows for feature distillation; "
                         "use feature_kd='none'")
    return [f"{a}.{i}" for a in lists for i in range(len(getattr(model, a)))]


def distilled_features(student: nn.Module, teacher: nn.Module) -> list[str]:
    """The blocks whose outputs the student is taught: :func:`feature_layers`, less each block followed by
    a removed one. Past a removed block the student's tensor is the same until the next kept block, so it
    is taught once, at the end of the run (the teacher's output there), instead of being asked to match
    every teacher feature along the run at once, which no single tensor can."""
    names = feature_layers(teacher)
    modules = dict(student.named_modules())

    def removed_next(i: int) -> bool:
        if i + 1 == len(names) or names[i + 1].rpartition(".")[0] != names[i].rpartition(".")[0]:
            return False
        return isinstance(modules.get(names[i + 1]), Removed)

    return [n for i, n in enumerate(names) if not removed_next(i)]


def _capture(model: nn.Module, names: list[str], store: dict) -> list:
    """Forward hooks that put each block's hidden states in ``store``. UNet down blocks return
    ``(hidden_states, res_samples)``; joint SD3/Flux blocks (and their removed forms) return
    ``(encoder_hidden_states, hidden_states)``."""
    handles = []
    for name in names:
        module = model.get_submodule(name)
        pick = 1 if type(module).__name__ in JOINT or getattr(module, "returns", None) == "joint" else 0

        def hook(mod, args, out, name=name, pick=pick):
            store[name] = out[pick] if isinstance(out, (tuple, list)) else out

        handles.append(module.register_forward_hook(hook))
    return handles


def feature_loss(student: dict, teacher: dict, names: list[str], mode: str) -> torch.Tensor:
    """Sum over blocks of MSE(student, teacher); ``normalized`` divides each term by the teacher feature's
    mean square (a constant), so deep blocks with large activations do not drown the others."""
    terms = []
    for name in names:
        s, t = student[name].float(), teacher[name].float().detach()
        term = F.mse_loss(s, t)
        terms.append(term / t.pow(2).mean().clamp_min(1e-12) if mode == "normalized" else term)
    return torch.stack(terms).sum()


@contextmanager
def _seeded_global_rng(g: torch.Generator, device: torch.device) -> Iterator[None]:
    """Dropout inside the model draws from torch's global RNG: seed it from ``g`` for one step and restore
    it afterwards, so a resumed run drops the same units and the caller's RNG is left untouched."""
    seed = int(torch.randint(2**62, (1,), generator=g))
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for i in cuda:
            torch.cuda.default_generators[i].manual_seed(seed)
        yield


def _fingerprint(student: nn.Module, data: TrainingSet) -> dict:
    out = {"removed": list(getattr(student, "_dipgo_removed", [])), "data": [len(data), *data.x0.shape[1:]]}
    if data.uncond:  # the batches draw their dropped rows only when there is something to drop to
        out["uncond"] = sorted(data.uncond)
    if getattr(student, "_dipgo_linearised", None):  # depth pruning (UPDP): which blocks are ramping
        out["linearised"] = list(student._dipgo_linearised)
    return out


def _save(path: Path, student: nn.Module, opt: torch.optim.Optimizer, step: int, g: torch.Generator,
          history: list, config: DistillConfig, fingerprint: dict, average: _Average | None) -> None:
    state = {"student": student.state_dict(), "opt": opt.state_dict(), "step": step, "rng": g.get_state(),
             "history": history, "config": asdict(config), "fingerprint": fingerprint,
             "ema": average.shadow if average is not None else None}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


CHECKPOINT_FIELDS = {"student": dict, "opt": dict, "step": int, "rng": torch.Tensor, "history": list,
                     "config": dict, "fingerprint": dict, "ema": (list, type(None))}


def _read(path: Path, config: DistillConfig, fingerprint: dict) -> dict:
    """The checkpoint at ``path``, once it is known to be a dipgo distillation checkpoint of *this* run."""
    state = read_checkpoint(path, "distillation checkpoint", CHECKPOINT_FIELDS)
    step, history, theirs = state["step"], state["history"], state["config"]
    fix = "delete it or use another checkpoint path"
    check_progress(path, "distillation checkpoint", "step", step, history, fix)
    differs = {k: (theirs.get(k), v) for k, v in asdict(config).items() if k not in RESUMABLE and theirs.get(k) != v}
    if differs or state["fingerprint"] != fingerprint:
        what = differs or (f"the pruned model or the training set, field 'fingerprint' ({state['fingerprint']} "
                           f"vs {fingerprint})")
        raise DipgoError(f"checkpoint {path} is from a different distillation (differs: {what}); {fix}")
    if step > config.steps:
        raise DipgoError(f"checkpoint {path} is at step {step}, past steps={config.steps}; raise steps, delete it "
                         "or use another checkpoint path")
    return state


def _restore(path: Path, student: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator,
             config: DistillConfig, fingerprint: dict, average: _Average | None) -> tuple[int, list]:
    """Load a checkpoint of *this* distillation into student, optimizer and generator; refuse any other."""
    state = _read(path, config, fingerprint)
    fix = "delete it or use another checkpoint path"
    shadow, where = state["ema"], f"distillation checkpoint {path}"
    if average is not None and (shadow is None or len(shadow) != len(average.shadow) or not all(
            isinstance(saved, torch.Tensor) and saved.shape == mine.shape and saved.dtype == mine.dtype
            for mine, saved in zip(average.shadow, shadow, strict=True))):
        raise DipgoError(f"{where}: field 'ema' holds no moving average for these parameters; {fix}")
    check_tensors(student.state_dict(), state["student"], where, "student")
    if state["rng"].dtype != torch.uint8 or state["rng"].shape != g.get_state().shape:
        raise DipgoError(f"{where}: field 'rng' is not a generator state; {fix}")
    load_optimizer(opt, state["opt"], where)
    student.load_state_dict(state["student"])
    g.set_state(state["rng"])
    if average is not None:
        for mine, saved in zip(average.shadow, shadow, strict=True):
            mine.copy_(saved)
    return state["step"], state["history"]


def learning_rate(config: DistillConfig, step: int) -> float:
    """The learning rate at ``step`` (0-based): constant, or warm-up then cosine to zero over ``steps``."""
    if config.lr_schedule == "constant":
        return config.lr
    warmup = config.warmup if config.warmup is not None else min(100, config.steps // 10)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    span = max(1, config.steps - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


class _Average:
    """The moving average of the trained parameters. Its decay ramps up as ``(1 + n) / (10 + n)`` until it
    reaches ``decay``, so a short run is not dominated by its random-ish first weights."""

    def __init__(self, params: list[nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for p, s in zip(self.params, self.shadow, strict=True):
            p.copy_(s)


@dataclass
class _Loop:
    """One distillation's moving parts, shared by its steps."""

    student: nn.Module
    teacher: nn.Module
    data: TrainingSet
    noise: object  # the DDPM scheduler that noises the inputs and gives the task target
    cfg: DistillConfig
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    g: torch.Generator
    average: _Average | None
    names: list[str]  # the blocks whose features are distilled
    uncond: bool      # whether some examples get the unconditional conditioning
    s_feats: dict = field(default_factory=dict)
    t_feats: dict = field(default_factory=dict)


def _trainable(student: nn.Module, data: TrainingSet, noise_scheduler) -> list[nn.Parameter]:
    """The student's parameters to train, once the inputs are known to be trainable at all."""
    if len(data) == 0:
        raise DipgoError("the training set is empty")
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise DipgoError("the student has no parameters that require grad; nothing to train")
    prediction = noise_scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise DipgoError(f"cannot train a denoiser with prediction_type {prediction!r}")
    return params


def _losses(loop: _Loop) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch's (loss, task, out_kd, feat_kd), every random draw taken from the loop's generator."""
    cfg, data, g, noise = loop.cfg, loop.data, loop.g, loop.noise
    device = data.x0.device
    index = torch.randint(len(data), (cfg.batch,), generator=g)
    t = torch.randint(noise.config.num_train_timesteps, (cfg.batch,), generator=g)
    x0 = data.x0[index.to(device)]
    eps = torch.randn(x0.shape, generator=g).to(device, x0.dtype)
    index, t = index.to(device), t.to(device)
    x_t = noise.add_noise(x0, eps, t)
    # Classifier-free guidance calls the unconditional branch at every step: teach it too, on the same
    # share of examples the model was trained with (the teacher sees the same dropped rows).
    drop = torch.rand(cfg.batch, generator=g) < cfg.p_uncond if loop.uncond else None
    with _seeded_global_rng(g, device):
        with torch.no_grad():
            t_out = data.call(loop.teacher, x_t, t, index, drop).float()
        s_out = data.call(loop.student, x_t, t, index, drop).float()
    target = {"epsilon": eps, "sample": x0}.get(noise.config.prediction_type)
    if target is None:
        target = noise.get_velocity(x0, eps, t)
    pred = s_out[:, :x0.shape[1]] if s_out.shape[1] == 2 * x0.shape[1] else s_out  # learned sigma
    task = F.mse_loss(pred, target.float())
    out_kd = F.mse_loss(s_out, t_out)
    names = loop.names
    feat_kd = feature_loss(loop.s_feats, loop.t_feats, names, cfg.feature_kd) if names else torch.zeros(())
    loss = cfg.w_task * task + cfg.w_out * out_kd + cfg.w_feat * feat_kd.to(task.device)
    return loss, task, out_kd, feat_kd


def _step(loop: _Loop, step: int) -> dict:
    """One optimiser step; returns its row of the history."""
    cfg, opt = loop.cfg, loop.opt
    loss, task, out_kd, feat_kd = _losses(loop)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(loop.params, cfg.grad_clip)
    lr = learning_rate(cfg, step)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    if loop.average is not None:
        loop.average.update(step)
    loop.s_feats.clear()
    loop.t_feats.clear()
    return {"step": step, "loss": loss.item(), "task": task.item(), "out_kd": out_kd.item(),
            "feat_kd": feat_kd.item(), "lr": lr}


def distill(student: nn.Module, teacher: nn.Module, data: TrainingSet, noise_scheduler, config: DistillConfig,
            checkpoint: str | Path | None = None, progress: bool = True,
            on_step: Callable[[int], None] | None = None) -> list[dict]:
    """Retrain ``student`` in place (its parameters that require grad) by distillation from ``teacher``.

    ``noise_scheduler`` makes the noisy inputs and the task target: a ``DDPMScheduler`` built from the
    pipeline's scheduler config. ``checkpoint``: saved atomically every ``checkpoint_every`` steps and at
    the end; an existing one is resumed exactly. Returns one dict per step (step, loss, task, out_kd,
    feat_kd). ``on_step(step)`` runs before each step (UPDP ramps its blend factor there; a resumed run
    calls it with the same steps). The teacher runs in eval mode without gradients (its flags are restored
    at the end); the student ends in eval mode.
    """
    cfg = config
    if cfg.steps == 0:
        return []
    params = _trainable(student, data, noise_scheduler)
    teacher_trainable = [p for p in teacher.parameters() if p.requires_grad]
    teacher.eval().requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    average = _Average(params, cfg.ema) if cfg.ema > 0 else None
    path = Path(checkpoint) if checkpoint else None
    fingerprint = _fingerprint(student, data)
    start, history = 0, []
    if path is not None and path.exists():
        start, history = _restore(path, student, opt, g, cfg, fingerprint, average)
    names = distilled_features(student, teacher) if cfg.feature_kd != "none" else []
    loop = _Loop(student, teacher, data, noise_scheduler, cfg, params, opt, g, average, names,
                 bool(data.uncond) and cfg.p_uncond > 0)
    bar = tqdm(total=cfg.steps, initial=start, desc="distillation", disable=not progress)
    handles = _capture(student, names, loop.s_feats) + _capture(teacher, names, loop.t_feats)
    student.train()
    for module in student.modules():  # conditioning dropout (DiT labels) would feed the student other inputs
        if hasattr(module, "token_drop"):
            module.eval()
    try:
        for step in range(start, cfg.steps):
            if on_step is not None:
                on_step(step)
            row = _step(loop, step)
            history.append(row)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "step"})
            done = step + 1
            due = done == cfg.steps or (cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0)
            if path is not None and due:
                _save(path, student, opt, done, g, history, cfg, fingerprint, average)
        if average is not None:  # the moving average is the retrained model
            average.copy_to_params()
    finally:
        for h in handles:
            h.remove()
        bar.close()
        student.eval()
        for p in teacher_trainable:  # the caller's model is left as it was given
            p.requires_grad_(True)
    return history


def check_ddpm_noising(pipe, fix: str) -> None:
    """Refuse to train on a flow-matching pipeline: distillation noises its inputs as DDPM does."""
    name = type(pipe.scheduler).__name__
    if "FlowMatch" in name:
        raise DipgoError(f"training uses a DDPM noising process; {name} is flow matching (SD3, Flux), which it "
                         f"does not support yet: {fix}")


def retrain(pipe, student: nn.Module, config: DistillConfig, calibration: Calibration, *,
            data: TrainingSet | None = None, num_inference_steps: int = 20, guidance_scale: float | None = None,
            checkpoint: str | Path | None = None, progress: bool = True,
            on_step: Callable[[int], None] | None = None, call_kwargs: dict | None = None) -> list[dict]:
    """Distil ``student`` from ``pipe``'s denoiser, as both pruning methods do after choosing what to prune.

    ``data`` defaults to a set the full model generates on the calibration inputs (with these sampling
    settings); the pipeline's unconditional conditioning is added to it so the guided branch is taught too.
    The noise comes from a ``DDPMScheduler`` built from the pipeline's scheduler config.
    """
    from diffusers import DDPMScheduler

    extra = dict(call_kwargs or {})
    if data is None:
        data = teacher_set(pipe, calibration, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           progress=progress, **extra)
    data = with_unconditional(data, pipe, calibration, **extra)
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    return distill(student, denoiser_of(pipe), data, noise, config, checkpoint=checkpoint, progress=progress,
                   on_step=on_step)
