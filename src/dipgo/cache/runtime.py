"""Runtime hooks: backup connections on a denoiser's blocks, driven by a schedule or by search gates.

Built on diffusers' own hook machinery (``diffusers.hooks.HookRegistry`` / ``ModelHook``), the way
its FirstBlockCache and LayerSkip attach, so no pipeline code is forked:

* a root :class:`CallCounterHook` on the denoiser numbers the calls of each generation (diffusers'
  SD/DiT pipelines expose no step counter) and resets the caches when a new generation starts;
* one :class:`BackupHook` per block either computes the block and refreshes its cache, or returns
  the cache without running the block at all.

A new generation is detected two ways: the pipeline's ``scheduler.set_timesteps`` (called once at
the start of every diffusers generation) is wrapped to flag it, and, as a fallback for custom
loops, a timestep larger than the previous one also starts a new generation. ``reset(pipe)``
does it by hand.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch.utils.checkpoint import checkpoint

from ..errors import DipgoError
from .schedule import Schedule, ScheduleError

ROOT_HOOK = "dipgo_call_counter"
BLOCK_HOOK = "dipgo_backup"


@dataclass
class RunState:
    """Everything that changes during one generation; shared by the root and the block hooks."""

    call: int = -1
    last_timestep: float | None = None
    new_generation: bool = True
    caches: dict[tuple[str, int], Any] = field(default_factory=dict)
    last_output: dict[int, Any] = field(default_factory=dict)  # per branch, for whole-call reuse
    computed: int = 0
    reused: int = 0
    # search mode: effective keep gates (calls, blocks) with gradients; every block computes and
    # returns the straight-through mix of its fresh and cached value
    gates: torch.Tensor | None = None
    # search mode: recompute each denoiser call in backward instead of keeping its activations
    checkpointing: bool = False
    # dynamic mode (e.g. a first-block cache): decides per call from what it observes; see ``Policy``
    policy: Any = None

    def reset(self) -> None:
        self.call, self.last_timestep, self.new_generation = -1, None, False
        self.caches.clear()
        self.last_output.clear()
        if self.policy is not None:
            self.policy.reset()


class Policy:
    """A dynamic skip rule, for methods that decide while sampling (a static :class:`Schedule` decides
    ahead). ``computes`` is asked before each block of each call; ``observe`` sees every computed
    block's cached value (its output, or its residual for residual blocks) in execution order."""

    def computes(self, call: int, block: str) -> bool:
        return True

    def observe(self, call: int, block: str, value) -> None:
        pass

    def reset(self) -> None:
        pass


def _timestep_of(args: tuple, kwargs: dict) -> float | None:
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if t is None:
        return None
    if torch.is_tensor(t):
        return float(t.flatten()[0]) if t.numel() else None
    return float(t)


class CallCounterHook(ModelHook):
    """Root hook: knows which call of the generation is running."""

    _is_stateful = True

    def __init__(self, state: RunState, schedule: Schedule | None, num_blocks: int):
        super().__init__()
        self.state, self.schedule, self.num_blocks = state, schedule, num_blocks
        self.num_calls = schedule.num_calls if schedule is not None else None

    def new_forward(self, module, *args, **kwargs):
        s = self.state
        self._advance(args, kwargs)
        if s.gates is not None and s.checkpointing and torch.is_grad_enabled():
            return self._checkpointed(args, kwargs)
        sched = self.schedule
        branch = s.call % (sched.branches if sched is not None else 1)
        if (sched is not None and sched.output_block is not None and not sched.steps[s.call]
                and branch in s.last_output):
            # Every block reuses its cache and the output depends only on the output block's cached
            # value: the result equals the previous call's, so nothing needs to run at all.
            s.reused += self.num_blocks
            return s.last_output[branch]
        out = self.fn_ref.original_forward(*args, **kwargs)
        if sched is not None and sched.output_block is not None:
            s.last_output[branch] = out
        return out

    def _checkpointed(self, args, kwargs):
        """Run this call under activation checkpointing (search mode). The backward pass re-runs it, so
        the re-run must see the caches as they were before the call and the same call index."""
        s, call, before = self.state, self.state.call, dict(self.state.caches)

        def body(*a, **k):
            s.call = call
            s.caches.clear()
            s.caches.update(before)
            return self.fn_ref.original_forward(*a, **k)

        return checkpoint(body, *args, use_reentrant=False, **kwargs)

    def _advance(self, args, kwargs) -> None:
        s = self.state
        t = _timestep_of(args, kwargs)
        if s.new_generation or (t is not None and s.last_timestep is not None and t > s.last_timestep):
            s.reset()
        s.call += 1
        s.last_timestep = t
        if self.num_calls is not None and s.call >= self.num_calls:
            raise ScheduleError(
                f"the denoiser was called {s.call + 1} times in one generation but the schedule has "
                f"{self.num_calls} calls: the pipeline runs more steps than the schedule was made for"
            )

    def reset_state(self, module):
        self.state.reset()
        self.state.new_generation = True
        return module


def _tree_mix(gate, fresh, cached):
    if fresh is None:
        return None
    if torch.is_tensor(fresh):
        gate = gate.to(fresh.dtype)  # an fp32 gate must not promote an fp16/bf16 model's activations
        return gate * fresh + (1 - gate) * cached
    if isinstance(fresh, (tuple, list)):
        return type(fresh)(_tree_mix(gate, f, c) for f, c in zip(fresh, cached, strict=True))
    return fresh


def parse_mode(mode: str) -> tuple[str, tuple[str, ...]]:
    """``"output"``, ``"residual"`` or ``"residual:a,b"`` -> (kind, names of the inputs the outputs add to)."""
    kind, _, names = mode.partition(":")
    if kind not in ("output", "residual") or (names and kind != "residual"):
        raise DipgoError(f"unknown cache mode {mode!r}; use 'output', 'residual' or 'residual:input1,input2'")
    return kind, tuple(n for n in names.split(",") if n)


class BackupHook(ModelHook):
    """A block with a backup connection: compute and refresh the cache, or reuse the cache.

    ``mode="output"`` caches the block's output (UNet blocks, whose outputs are not residual);
    ``mode="residual"`` caches ``output - input`` and returns ``input + cached`` (transformer blocks,
    so a reused block still passes the fresh hidden state through). ``"residual:a,b"`` is the same for a
    block returning a tuple: output k is the residual of the input argument named k-th (SD3/Flux joint
    blocks take ``hidden_states, encoder_hidden_states`` and return ``encoder_hidden_states, hidden_states``;
    a ``None`` output, as SD3's last context block returns, stays ``None``).
    """

    _is_stateful = True

    def __init__(self, name: str, index: int, state: RunState, schedule: Schedule | None,
                 mode: str = "output", branches: int = 1):
        super().__init__()
        self.name, self.index, self.state, self.schedule = name, index, state, schedule
        self.mode, self.inputs = parse_mode(mode)
        self.branches = branches
        self._signature: inspect.Signature | None = None

    def _input(self, args, kwargs):
        if not self.inputs:
            return args[0] if args else kwargs.get("hidden_states")
        if self._signature is None:
            self._signature = inspect.signature(self.fn_ref.original_forward)
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        return tuple(bound.get(n) for n in self.inputs)

    def _residual(self, out, inp):
        if isinstance(out, tuple):
            return tuple(None if o is None else o - i for o, i in zip(out, inp, strict=True))
        return out - inp

    def _add(self, inp, residual):
        if isinstance(residual, tuple):
            return tuple(None if r is None else i + r for i, r in zip(inp, residual, strict=True))
        return inp + residual

    def _read_later(self, call: int) -> bool:
        """Whether a static schedule reads this block's cache after ``call``: only when the next call of
        the same branch reuses the block (a reuse further on is preceded by that call's own refresh)."""
        nxt = call + self.branches
        return nxt < self.schedule.num_calls and not self.schedule.computes(nxt, self.name)

    def new_forward(self, module, *args, **kwargs):
        s = self.state
        call = max(s.call, 0)
        key = (self.name, call % self.branches)
        cached = s.caches.get(key)
        residual = self.mode == "residual"
        if s.gates is not None:  # search: always compute, output the straight-through mix
            fresh = self.fn_ref.original_forward(*args, **kwargs)
            value = self._residual(fresh, self._input(args, kwargs)) if residual else fresh
            if cached is not None:
                value = _tree_mix(s.gates[call, self.index], value, cached)
            s.caches[key] = value
            return self._add(self._input(args, kwargs), value) if residual else value
        rule = self.schedule if self.schedule is not None else s.policy
        if cached is not None and rule is not None and not rule.computes(call, self.name):
            s.reused += 1
            return self._add(self._input(args, kwargs), cached) if residual else cached
        out = self.fn_ref.original_forward(*args, **kwargs)
        s.computed += 1
        if self.schedule is not None and not self._read_later(call):
            # The next call of this branch computes the block again, so this value would never be read:
            # skip the residual (a full-size subtraction) and drop the stale value.
            s.caches.pop(key, None)
            return out
        s.caches[key] = self._residual(out, self._input(args, kwargs)) if residual else out
        if s.policy is not None:
            s.policy.observe(call, self.name, s.caches[key])
        return out

    def reset_state(self, module):
        return module  # the caches live in the shared RunState, which the root hook resets


# --------------------------------------------------------------------------------------------- attach
@dataclass
class Attachment:
    """What ``attach`` installed, so it can be removed exactly."""

    denoiser: torch.nn.Module
    blocks: dict[str, torch.nn.Module]
    state: RunState
    schedule: Schedule | None
    scheduler: Any = None
    original_set_timesteps: Any = None


def attach(denoiser: torch.nn.Module, blocks: dict[str, torch.nn.Module], modes: dict[str, str],
           schedule: Schedule | None = None, branches: int = 1, scheduler=None,
           policy: Policy | None = None) -> Attachment:
    """Install the root hook and one backup hook per block on ``denoiser``.

    Blocks follow ``schedule`` (static) or ``policy`` (dynamic); with neither, every block computes
    (the search drives the gates itself)."""
    if getattr(denoiser, "_dipgo_attachment", None) is not None:
        raise DipgoError(
            f"dipgo is already applied to this {type(denoiser).__name__}; call dipgo.remove(pipe) first")
    if schedule is not None and policy is not None:
        raise DipgoError("attach takes a schedule or a policy, not both")
    state = RunState(policy=policy)
    root = HookRegistry.check_if_exists_or_initialize(denoiser)
    root.register_hook(CallCounterHook(state, schedule, len(blocks)), ROOT_HOOK)
    for i, (name, module) in enumerate(blocks.items()):
        reg = HookRegistry.check_if_exists_or_initialize(module)
        reg.register_hook(BackupHook(name, i, state, schedule, modes.get(name, "output"), branches), BLOCK_HOOK)
    att = Attachment(denoiser, blocks, state, schedule, scheduler)
    if scheduler is not None:
        att.original_set_timesteps = scheduler.__dict__.get("set_timesteps")
        bound = scheduler.set_timesteps

        @functools.wraps(bound)  # pipelines inspect its signature (Flux asks whether it takes `sigmas`)
        def set_timesteps(num_inference_steps=None, *a, **kw):
            if schedule is not None and num_inference_steps is not None \
                    and num_inference_steps != schedule.num_inference_steps:
                raise ScheduleError(
                    f"the schedule was made for num_inference_steps={schedule.num_inference_steps}, "
                    f"but the pipeline asks for {num_inference_steps}; call the pipeline with "
                    f"num_inference_steps={schedule.num_inference_steps} or prune again for this step count")
            state.new_generation = True
            return bound(num_inference_steps, *a, **kw)

        scheduler.set_timesteps = set_timesteps
    denoiser._dipgo_attachment = att
    return att


def detach(denoiser: torch.nn.Module) -> None:
    """Remove everything ``attach`` installed; the denoiser runs exactly as before."""
    att: Attachment | None = getattr(denoiser, "_dipgo_attachment", None)
    if att is None:
        raise DipgoError(f"dipgo is not applied to this {type(denoiser).__name__}")
    denoiser._diffusers_hook.remove_hook(ROOT_HOOK, recurse=False)
    for module in att.blocks.values():
        module._diffusers_hook.remove_hook(BLOCK_HOOK, recurse=False)
    if att.scheduler is not None:
        if att.original_set_timesteps is None:
            del att.scheduler.set_timesteps
        else:
            att.scheduler.set_timesteps = att.original_set_timesteps
    att.state.caches.clear()
    denoiser._dipgo_attachment = None
