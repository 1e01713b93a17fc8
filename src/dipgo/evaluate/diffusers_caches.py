"""The caches diffusers ships, as baselines: applied with diffusers' own hooks (``diffusers.hooks``), not
re-implemented. Each spec binds to an :class:`~dipgo.evaluate.applied.Applied` like every other method::

    taylorseer:3                         TaylorSeer: every module output computed at 3 warm-up steps, then every
                                         3rd step, predicted by a Taylor series in between
    taylorseer:interval=4,order=2,warmup=3,scope=blocks
    magcache:0.06                        MagCache, threshold 0.06, calibrated on the model itself first
    magcache:0.1,max_skip=3,retention=0.2,calib=4
    seacache:0.25                        SeaCache, threshold 0.25 (spectral indicator, extrapolated residual)
    seacache:0.25,order=1,retention=1,end=1,max_skip=2,power=3
    fastercache:2                        FasterCache: attention every 2nd call, unconditional half every 5th
    fastercache:2,uncond=5,tmax=681,uncond_tmax=641
    pab:2                                Pyramid Attention Broadcast: self-attention every 2nd call
    pab:2,cross=4,tmin=100,tmax=800

Where they apply:

* TaylorSeer and PAB hook modules chosen by name (regex identifiers), so they apply to UNets and transformers.
  TaylorSeer's ``scope=modules`` predicts the attention and feed-forward modules of every transformer block (the
  TaylorSeer paper's DiT setting, the default where the denoiser is a stack of transformer blocks);
  ``scope=blocks`` predicts dipgo's own blocks (the default for a UNet: its resnets, samplers and the
  transformer blocks inside its attention modules).
* MagCache and SeaCache replace a stack of transformer blocks (a ``ModuleList`` child named ``blocks``,
  ``transformer_blocks``, ``layers``...) by a cached residual; diffusers finds that stack by those names only and
  needs its block class registered. A UNet has no such stack: they do not apply to it.
* FasterCache hooks attention only under top-level ``transformer_blocks``/``blocks`` (names diffusers fixes) and
  halves every positional tensor of a denoiser call; it does not apply to a UNet.

:func:`applies` says whether a method applies to a pipeline and, if not, why.

MACs are measured by the evaluation's execution probe. MagCache and SeaCache skip whole blocks, which the probe
sees at block level. TaylorSeer, PAB and FasterCache replace modules inside blocks: their :class:`AppliedHooks`
carry ``probe_units`` (the modules they hook), and the probe counts at those modules. FasterCache's calls that run
only the conditional half of a CFG batch are counted at the batch they ran on. FFTs and Taylor terms are
element-wise work, not counted, as norms are not.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import DipgoError
from ..models.adapters import is_unet, unit_graph
from ..models.calibration import Calibration
from ..models.pipelines import default_calibration, denoiser_of, generate, num_calls
from .applied import Applied

CALIBRATION_SEED = 10_000  # MagCache calibrates on other seeds than the evaluation's (0, 1, ...)


# ------------------------------------------------------------------------------------------- validation
def _int(method: str, name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DipgoError(f"{method} {name} must be an integer >= {low}, got {value!r}")


def _number(method: str, name: str, value, low: float = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise DipgoError(f"{method} {name} must be a number >= {low:g}, got {value!r}")


def _require(reason: str | None) -> None:
    if reason:
        raise DipgoError(reason)


def applies(method, pipe) -> tuple[bool, str]:
    """``(True, "")`` when ``method`` can be bound to ``pipe``, else ``(False, why)``; methods without a
    ``check`` (full, fewer steps, DeepCache, first-block cache, schedules) apply everywhere."""
    check = getattr(method, "check", None)
    reason = check(pipe) if check is not None else None
    return reason is None, reason or ""


# ------------------------------------------------------------------------------------------ plumbing
def _registry(module: torch.nn.Module):
    from diffusers.hooks import HookRegistry

    return HookRegistry.check_if_exists_or_initialize(module)


def remove_hooks(denoiser: torch.nn.Module, names: tuple[str, ...]) -> None:
    registry = _registry(denoiser)
    for name in names:
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()


def hooked_modules(denoiser: torch.nn.Module, install: Callable[[torch.nn.Module], None], hook: str,
                   remove: tuple[str, ...]) -> list[str]:
    """Names of the modules diffusers' ``install`` puts ``hook`` on (installed, read, removed again)."""
    install(denoiser)
    try:
        return [n for n, m in denoiser.named_modules()
                if n and getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(hook)]
    finally:
        remove_hooks(denoiser, remove)


def _timestep_of(module: torch.nn.Module, args: tuple, kwargs: dict) -> float | None:
    bound = inspect.signature(type(module).forward).bind_partial(module, *args, **kwargs).arguments
    t = bound.get("timestep")
    if torch.is_tensor(t):
        return float(t.flatten()[0]) if t.numel() else None
    return None if t is None else float(t)


class CallTracker:
    """A forward pre-hook on the denoiser: the index and timestep of the call being run, for the hooks that
    need them (PAB's and FasterCache's timestep callback, SeaCache's cache context). ``on_call`` runs at each
    call, before diffusers' hooks."""

    def __init__(self, denoiser: torch.nn.Module, on_call: Callable[[CallTracker], None] | None = None):
        self.denoiser, self.on_call = denoiser, on_call
        self._handle = None
        self.reset()

    def reset(self) -> None:
        self.call, self.timestep = -1, None

    def attach(self) -> None:
        self._handle = self.denoiser.register_forward_pre_hook(self._pre, with_kwargs=True)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def current(self) -> float:
        """The running call's timestep (PAB/FasterCache's ``current_timestep_callback``)."""
        if self.timestep is None:
            raise DipgoError(f"{type(self.denoiser).__name__} was called without a timestep argument; the "
                             "timestep-ranged caches (PAB, FasterCache, SeaCache) need one")
        return self.timestep

    def _pre(self, module, args, kwargs):
        self.call += 1
        self.timestep = _timestep_of(module, args, kwargs)
        if self.on_call is not None:
            self.on_call(self)


class AppliedHooks(Applied):
    """diffusers cache hooks: ``install(denoiser)`` puts them on, they are removed by name; before each generation
    every stateful hook is reset and a cache context set (the pipelines evaluated here set none themselves).
    ``probe_units``: the modules the method skips inside dipgo's blocks, for the execution probe."""

    def __init__(self, pipe, num_inference_steps: int, label: str, install: Callable[[torch.nn.Module], None],
                 hook_names: tuple[str, ...], probe_units: list[str] | None = None,
                 tracker: CallTracker | None = None):
        super().__init__(pipe, num_inference_steps)
        self.label, self.install, self.hook_names = label, install, hook_names
        self.probe_units, self.tracker = probe_units, tracker

    def enable(self) -> None:
        denoiser = denoiser_of(self.pipe)
        self.install(denoiser)
        _registry(denoiser).invalidate_child_registries_cache()
        if self.tracker is not None:
            self.tracker.attach()

    def disable(self) -> None:
        if self.tracker is not None:
            self.tracker.detach()
        remove_hooks(denoiser_of(self.pipe), self.hook_names)

    def before_generation(self) -> None:
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        denoiser = denoiser_of(self.pipe)
        _registry(denoiser).reset_stateful_hooks()
        _set_cache_context(denoiser, CacheContext("dipgo"))
        if self.tracker is not None:
            self.tracker.reset()


def block_stack_reason(denoiser: torch.nn.Module, method: str) -> str | None:
    """Why diffusers' MagCache/SeaCache cannot hook ``denoiser`` (None when they can)."""
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS as stack_names
    from diffusers.hooks._helpers import TransformerBlockRegistry

    stacks = [(n, m) for n, m in denoiser.named_children()
              if n in stack_names and isinstance(m, torch.nn.ModuleList) and len(m)]
    if not stacks:
        unet = (" (a UNet's blocks change resolution and pass skip connections: there is no such stack)"
                if is_unet(denoiser) else "")
        return (f"{method} does not apply to {type(denoiser).__name__}: diffusers' {method} replaces a stack of "
                f"transformer blocks, a ModuleList child named one of {sorted(stack_names)}, by a cached "
                f"residual, and finds it by those names only{unet}")
    for name, stack in stacks:
        for block in stack:
            try:
                TransformerBlockRegistry.get(type(block))
            except ValueError:
                return (f"{method} does not apply to {type(denoiser).__name__}: diffusers has no block metadata "
                        f"for {type(block).__name__} ({name}); register it with "
                        "diffusers.hooks._helpers.TransformerBlockRegistry")
    return None


# ------------------------------------------------------------------------------------------ TaylorSeer
SCOPES = ("auto", "modules", "blocks")
_MODULES = re.compile(r"(?:.*\.)?transformer_blocks\.\d+\.(?:attn\d*|ff)")


def taylorseer_blocks(denoiser: torch.nn.Module) -> list[str]:
    """dipgo's blocks (a UNet's fine units), with a block that holds its own ``transformer_blocks`` (a UNet's
    attention module) replaced by them: diffusers' TaylorSeer predicts a one-element tuple output as a bare
    tensor, which such a module's caller cannot take."""
    graph = unit_graph(denoiser)
    names = []
    for name in graph.names:
        inner = getattr(denoiser.get_submodule(name), "transformer_blocks", None)
        if isinstance(inner, torch.nn.ModuleList) and len(inner):
            names += [f"{name}.transformer_blocks.{k}" for k in range(len(inner))]
        else:
            names.append(name)
    return names


@dataclass(frozen=True)
class TaylorSeer:
    """diffusers' ``TaylorSeerCacheConfig``: hooked module outputs computed at ``warmup`` first steps and then every
    ``interval``-th step, predicted in between by a Taylor series of order ``order`` (0 reuses them)."""

    interval: int
    order: int = 1
    warmup: int = 3
    scope: str = "auto"

    def __post_init__(self):
        _int("taylorseer", "interval", self.interval, 1)
        _int("taylorseer", "order", self.order, 0)
        _int("taylorseer", "warmup", self.warmup, 0)
        if self.scope not in SCOPES:
            raise DipgoError(f"taylorseer scope must be one of {SCOPES}, got {self.scope!r}")

    def modules(self, denoiser: torch.nn.Module) -> tuple[str, list[str]]:
        """(scope, the module names it predicts)."""
        scope = self.scope if self.scope != "auto" else ("blocks" if is_unet(denoiser) else "modules")
        if scope == "blocks":
            return scope, taylorseer_blocks(denoiser)
        return scope, [n for n, _ in denoiser.named_modules() if _MODULES.fullmatch(n)]

    def check(self, pipe) -> str | None:
        denoiser = denoiser_of(pipe)
        try:
            scope, names = self.modules(denoiser)
        except DipgoError as err:
            return f"taylorseer does not apply to {type(denoiser).__name__}: {err}"
        if not names:
            return (f"taylorseer scope={scope} does not apply to {type(denoiser).__name__}: it has no attention or "
                    "feed-forward module inside transformer_blocks; use scope=blocks")
        return None

    def bind(self, pipe, num_inference_steps: int, guidance_scale: float = 1.0) -> Applied:
        from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache
        from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

        _require(self.check(pipe))
        denoiser = denoiser_of(pipe)
        scope, names = self.modules(denoiser)
        dtype = next(denoiser.parameters()).dtype

        def install(module):
            apply_taylorseer_cache(module, TaylorSeerCacheConfig(
                cache_interval=self.interval, disable_cache_before_step=self.warmup, max_order=self.order,
                taylor_factors_dtype=dtype, cache_identifiers=[re.escape(n) for n in names]))

        label = f"TaylorSeer N={self.interval}, order {self.order}, {scope} (diffusers)"
        return AppliedHooks(pipe, num_inference_steps, label, install, (_TAYLORSEER_CACHE_HOOK,), names)


# ------------------------------------------------------------------------------------------ MagCache
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _captured_log(name: str):
    """The messages of logger ``name`` at INFO and above, kept from the console while inside."""
    logger, handler = logging.getLogger(name), _Records()
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def mag_ratios(pipe, num_inference_steps: int, guidance_scale: float, n: int = 4,
               calibration: Calibration | None = None) -> list[float]:
    """MagCache's magnitude ratios for this model and step count: one generation of ``n`` images with
    ``MagCacheConfig(calibrate=True)`` (nothing skipped), the ratios as diffusers reports them."""
    from diffusers.hooks import MagCacheConfig, apply_mag_cache
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK

    denoiser = denoiser_of(pipe)
    calibration = calibration or default_calibration(pipe)
    prefix = "MagCache Calibration Results:"
    apply_mag_cache(denoiser, MagCacheConfig(calibrate=True, num_inference_steps=num_calls(pipe, num_inference_steps)))
    try:
        _registry(denoiser).reset_stateful_hooks()
        with _captured_log("diffusers.hooks.mag_cache") as messages:
            generate(pipe, calibration, calibration.cycle(n), CALIBRATION_SEED, num_inference_steps, guidance_scale,
                     batch_size=n)
    finally:
        remove_hooks(denoiser, (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK))
    found = [m[len(prefix):] for m in messages if m.startswith(prefix)]
    if len(found) != 1:
        raise DipgoError(f"MagCache calibration reported {len(found)} sets of ratios for one generation, expected 1 "
                         "(does the pipeline call its denoiser once per step?)")
    return [float(r) for r in ast.literal_eval(found[0].strip())]


@dataclass(frozen=True)
class MagCache:
    """diffusers' ``MagCacheConfig``, calibrated on the model itself (``calib`` images, same step count) at bind
    time: a step reuses the block stack's residual while the accumulated magnitude-ratio error stays under
    ``threshold``, at most ``max_skip`` steps in a row, never in the first ``retention`` share of the steps."""

    threshold: float
    max_skip: int = 3
    retention: float = 0.2
    calib: int = 4

    def __post_init__(self):
        _number("magcache", "threshold", self.threshold)
        _int("magcache", "max_skip", self.max_skip, 0)
        _number("magcache", "retention", self.retention)
        if self.retention > 1:
            raise DipgoError(f"magcache retention is a share of the steps in [0, 1], got {self.retention!r}")
        _int("magcache", "calib", self.calib, 1)

    def check(self, pipe) -> str | None:
        return block_stack_reason(denoiser_of(pipe), "MagCache")

    def bind(self, pipe, num_inference_steps: int, guidance_scale: float = 1.0,
             calibration: Calibration | None = None, ratios: list[float] | None = None) -> Applied:
        """``ratios``: magnitude ratios calibrated before (:func:`mag_ratios`), to bind many thresholds at the
        cost of one calibration."""
        from diffusers.hooks import MagCacheConfig, apply_mag_cache
        from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK

        _require(self.check(pipe))
        calls = num_calls(pipe, num_inference_steps)
        if ratios is None:
            ratios = mag_ratios(pipe, num_inference_steps, guidance_scale, self.calib, calibration)

        def install(module):
            apply_mag_cache(module, MagCacheConfig(
                threshold=float(self.threshold), max_skip_steps=self.max_skip, retention_ratio=float(self.retention),
                num_inference_steps=calls, mag_ratios=list(ratios)))

        applied = AppliedHooks(pipe, num_inference_steps, f"MagCache {self.threshold:g} (diffusers, calibrated)",
                               install, (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK))
        applied.mag_ratios = ratios
        return applied


# ------------------------------------------------------------------------------------------ SeaCache
def flow_sigma(scheduler, timestep: float) -> float:
    """The noise level as a flow-matching sigma in [0, 1], which SeaCache's filter takes. A VP state
    ``sqrt(a) x0 + sqrt(1 - a) e`` is the flow state ``(1 - s) x0 + s e`` up to a scale, with
    ``s = sqrt(1 - a) / (sqrt(a) + sqrt(1 - a))``; a flow-matching scheduler's timestep is ``s`` times its
    training steps."""
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is not None:
        a = float(alphas[min(max(int(round(timestep)), 0), len(alphas) - 1)])
        return math.sqrt(1 - a) / (math.sqrt(a) + math.sqrt(1 - a))
    if "FlowMatch" in type(scheduler).__name__:
        return min(max(timestep / scheduler.config.num_train_timesteps, 0.0), 1.0)
    raise DipgoError(f"SeaCache needs the noise level of {type(scheduler).__name__}'s timesteps; dipgo knows it for "
                     "schedulers with alphas_cumprod (DDIM, PNDM, DPM-Solver, Euler) and flow-matching ones")


def latent_frames(module: torch.nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor] | None:
    """SeaCache's ``raw_vision_callback`` for image latents: each sample of the ``(B, C, H, W)`` input as a
    one-frame ``(C, 1, H, W)`` video (``(B, C, T, H, W)`` inputs are split as they are)."""
    bound = inspect.signature(type(module).forward).bind_partial(module, *args, **kwargs).arguments
    x = bound.get("hidden_states", bound.get("sample"))
    if not torch.is_tensor(x) or x.ndim not in (4, 5):
        return None
    return [s.unsqueeze(1) if x.ndim == 4 else s for s in x.unbind(0)]


@dataclass(frozen=True)
class SeaCache:
    """diffusers' ``SeaCacheConfig``: the block stack is replaced by its residual (extrapolated at ``order`` 1)
    while the accumulated change of a spectrally filtered latent stays under ``threshold``; the first
    ``retention`` and last ``end`` steps always compute, at most ``max_skip`` reuses in a row."""

    threshold: float
    order: int = 1
    retention: int = 1
    end: int = 1
    max_skip: int = 2
    power: float = 3.0

    def __post_init__(self):
        _number("seacache", "threshold", self.threshold)
        if self.order not in (0, 1) or isinstance(self.order, bool):
            raise DipgoError(f"seacache order must be 0 (reuse) or 1 (extrapolate), got {self.order!r}")
        for name in ("retention", "end", "max_skip"):
            _int("seacache", name, getattr(self, name), 0)
        _number("seacache", "power", self.power)
        if self.power == 0:
            raise DipgoError("seacache power must be > 0, got 0")

    def check(self, pipe) -> str | None:
        reason = block_stack_reason(denoiser_of(pipe), "SeaCache")
        if reason is None:
            try:
                flow_sigma(pipe.scheduler, 500.0)
            except DipgoError as err:
                return str(err)
        return reason

    def bind(self, pipe, num_inference_steps: int, guidance_scale: float = 1.0) -> Applied:
        from diffusers.hooks import SeaCacheConfig, apply_sea_cache
        from diffusers.hooks.hooks import CacheContext, _set_cache_context
        from diffusers.hooks.sea_cache import (
            _SEA_CACHE_BLOCK_HOOK,
            _SEA_CACHE_LEADER_BLOCK_HOOK,
            _SEA_CACHE_POST_NORM_HOOK,
            _SEA_CACHE_ROOT_HOOK,
        )

        _require(self.check(pipe))
        denoiser, calls = denoiser_of(pipe), num_calls(pipe, num_inference_steps)

        def context(tracker: CallTracker) -> None:  # where the loop is, as diffusers' own pipelines pass it
            t = tracker.current()
            _set_cache_context(denoiser, CacheContext("dipgo", step_index=tracker.call, num_inference_steps=calls,
                                                      timestep=t, sigma=flow_sigma(pipe.scheduler, t)))

        def install(module):
            apply_sea_cache(module, SeaCacheConfig(
                threshold=float(self.threshold), residual_order=self.order, retention_steps=self.retention,
                cache_end_steps=self.end, max_consecutive_cached=self.max_skip, power_exp=float(self.power),
                raw_vision_callback=latent_frames))

        hooks = (_SEA_CACHE_POST_NORM_HOOK, _SEA_CACHE_BLOCK_HOOK, _SEA_CACHE_LEADER_BLOCK_HOOK, _SEA_CACHE_ROOT_HOOK)
        return AppliedHooks(pipe, num_inference_steps, f"SeaCache {self.threshold:g} (diffusers)", install, hooks,
                            tracker=CallTracker(denoiser, context))


# ------------------------------------------------------------------------------------------ FasterCache
@dataclass(frozen=True)
class FasterCache:
    """diffusers' ``FasterCacheConfig`` on image latents: below timestep ``uncond_tmax`` the unconditional half of
    the CFG batch is computed every ``uncond``-th call only (approximated from the conditional half in between);
    in those half-batch calls below ``tmax``, self-attention is computed every ``interval``-th call and
    extrapolated from its last two outputs in between."""

    interval: int = 2
    uncond: int = 5
    tmax: float = 681
    uncond_tmax: float = 641

    def __post_init__(self):
        _int("fastercache", "interval", self.interval, 1)
        _int("fastercache", "uncond", self.uncond, 1)
        _number("fastercache", "tmax", self.tmax)
        _number("fastercache", "uncond_tmax", self.uncond_tmax)

    def _install(self, tracker: CallTracker, guidance_scale: float):
        from diffusers.hooks import FasterCacheConfig, apply_faster_cache
        from diffusers.hooks.faster_cache import _UNCOND_COND_INPUT_KWARGS_IDENTIFIERS

        def install(module):
            apply_faster_cache(module, FasterCacheConfig(
                spatial_attention_block_skip_range=self.interval,
                spatial_attention_timestep_skip_range=(-1, self.tmax), unconditional_batch_skip_range=self.uncond,
                unconditional_batch_timestep_skip_range=(-1, self.uncond_tmax),
                attention_weight_callback=lambda _: 0.5, current_timestep_callback=tracker.current,
                tensor_format="BCHW", is_guidance_distilled=guidance_scale <= 1,
                # class-conditional models (DiT) pass the labels of both halves as class_labels
                _unconditional_conditional_input_kwargs_identifiers=[*_UNCOND_COND_INPUT_KWARGS_IDENTIFIERS,
                                                                     "class_labels"]))
        return install

    def attention(self, denoiser: torch.nn.Module) -> list[str]:
        from diffusers.hooks.faster_cache import _FASTER_CACHE_BLOCK_HOOK, _FASTER_CACHE_DENOISER_HOOK

        install = self._install(CallTracker(denoiser), 2.0)
        return hooked_modules(denoiser, install, _FASTER_CACHE_BLOCK_HOOK,
                              (_FASTER_CACHE_DENOISER_HOOK, _FASTER_CACHE_BLOCK_HOOK))

    def check(self, pipe) -> str | None:
        denoiser = denoiser_of(pipe)
        if not self.attention(denoiser):
            unet = (" and halves every positional tensor of a call, where StableDiffusionPipeline passes the "
                    "timestep as a 0-d tensor" if is_unet(denoiser) else "")
            return (f"FasterCache does not apply to {type(denoiser).__name__}: diffusers' FasterCache hooks "
                    "self-attention only under top-level transformer_blocks/blocks (names it fixes, not an option)"
                    f"{unet}")
        return None

    def bind(self, pipe, num_inference_steps: int, guidance_scale: float = 1.0) -> Applied:
        from diffusers.hooks.faster_cache import _FASTER_CACHE_BLOCK_HOOK, _FASTER_CACHE_DENOISER_HOOK

        _require(self.check(pipe))
        denoiser = denoiser_of(pipe)
        tracker = CallTracker(denoiser)
        label = f"FasterCache N={self.interval}, uncond {self.uncond} (diffusers)"
        return AppliedHooks(pipe, num_inference_steps, label, self._install(tracker, guidance_scale),
                            (_FASTER_CACHE_DENOISER_HOOK, _FASTER_CACHE_BLOCK_HOOK), self.attention(denoiser),
                            tracker)


# ------------------------------------------------------------------------------------------ PAB
@dataclass(frozen=True)
class PAB:
    """diffusers' ``PyramidAttentionBroadcastConfig``: for timesteps in (``tmin``, ``tmax``), self-attention is
    computed every ``interval``-th call and cross-attention every ``cross``-th call (never reused without
    ``cross``), their last output reused in between."""

    interval: int
    cross: int | None = None
    tmin: float = 100
    tmax: float = 800

    def __post_init__(self):
        _int("pab", "interval", self.interval, 1)
        if self.cross is not None:
            _int("pab", "cross", self.cross, 1)
        _number("pab", "tmin", self.tmin, -1)
        _number("pab", "tmax", self.tmax, -1)
        if self.tmax <= self.tmin:
            raise DipgoError(f"pab needs tmin < tmax, got tmin={self.tmin!r}, tmax={self.tmax!r}")

    def _install(self, tracker: CallTracker):
        from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

        def install(module):
            apply_pyramid_attention_broadcast(module, PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=self.interval, cross_attention_block_skip_range=self.cross,
                spatial_attention_timestep_skip_range=(self.tmin, self.tmax),
                cross_attention_timestep_skip_range=(self.tmin, self.tmax),
                current_timestep_callback=tracker.current))
        return install

    def attention(self, denoiser: torch.nn.Module) -> list[str]:
        from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK as hook

        return hooked_modules(denoiser, self._install(CallTracker(denoiser)), hook, (hook,))

    def check(self, pipe) -> str | None:
        denoiser = denoiser_of(pipe)
        if not self.attention(denoiser):
            return (f"PAB does not apply to {type(denoiser).__name__}: it has no diffusers attention module under "
                    "blocks/transformer_blocks/layers")
        return None

    def bind(self, pipe, num_inference_steps: int, guidance_scale: float = 1.0) -> Applied:
        from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK as hook

        _require(self.check(pipe))
        denoiser = denoiser_of(pipe)
        tracker = CallTracker(denoiser)
        cross = f", cross {self.cross}" if self.cross else ""
        return AppliedHooks(pipe, num_inference_steps, f"PAB N={self.interval}{cross} (diffusers)",
                            self._install(tracker), (hook,), self.attention(denoiser), tracker)


METHODS = {"taylorseer": (TaylorSeer, ("interval",)), "magcache": (MagCache, ("threshold",)),
           "seacache": (SeaCache, ("threshold",)), "fastercache": (FasterCache, ("interval",)),
           "pab": (PAB, ("interval",))}
