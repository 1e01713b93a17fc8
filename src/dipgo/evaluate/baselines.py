"""The accelerators users would pick instead of DiP-GO, run through the same runtime where possible.

Every method turns into an :class:`Applied` object for one pipeline and step count: ``enable()`` /
``disable()`` install and remove it, ``before_generation()`` runs before each pipeline call, and
``num_inference_steps`` is what the pipeline must be called with. Methods are named by a spec
string (``dipgo eval --method SPEC``)::

    full                                 the full model
    steps:10                             the same scheduler with 10 steps
    deepcache:3                          DeepCache, full call every 3 steps, skip branch 0
    deepcache:interval=5,branch=1,mode=nonuniform,center=15,power=1.4
    fbcache:0.1                          first-block cache, threshold 0.1 (diffusers' hook where it
                                         applies; ``impl=dipgo`` forces our own)
    schedule:FILE                        a dipgo schedule file
    taylorseer:3[,order=2,warmup=3,scope=modules|blocks]   diffusers' caches, through diffusers' own
    magcache:0.06[,max_skip=3,retention=0.2,calib=4]       hooks (:mod:`dipgo.evaluate.diffusers_caches`:
    seacache:0.25[,order=1,retention=1,end=1,max_skip=2]   where each applies, how MagCache is
    fastercache:2[,uncond=5,tmax=681,uncond_tmax=641]      calibrated, how their MACs are probed)
    pab:2[,cross=4,tmin=100,tmax=800]

DeepCache and the fewer-steps baseline are static schedules (the runtime executes them like a
DiP-GO schedule, so MACs are accounted identically); the first-block cache and diffusers' caches are
dynamic. :func:`applies` says whether a method can be bound to a pipeline, and why not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cache.postprocess import schedule_from_mask
from ..cache.runtime import Policy, attach, detach
from ..cache.schedule import Schedule, config_hash
from ..errors import DipgoError
from ..models.adapters import BlockGraph, block_graph, is_unet, resolve_blocks, unit_graph
from ..models.costs import profile_denoiser
from ..models.pipelines import capture_denoiser_call, denoiser_of, num_calls
from .applied import Applied
from .diffusers_caches import METHODS as DIFFUSERS_METHODS
from .diffusers_caches import applies  # noqa: F401  (re-exported for the bench)


# ----------------------------------------------------------------------------------------- applied
class AppliedSchedule(Applied):
    def __init__(self, pipe, schedule: Schedule, label: str):
        super().__init__(pipe, schedule.num_inference_steps)
        self.schedule, self.label = schedule, label

    def enable(self) -> None:
        from ..cache.apply import apply

        apply(self.pipe, self.schedule)

    def disable(self) -> None:
        from ..cache.apply import remove

        remove(self.pipe)


class AppliedPolicy(Applied):
    def __init__(self, pipe, num_inference_steps: int, graph: BlockGraph, policy: Policy, label: str):
        super().__init__(pipe, num_inference_steps)
        self.graph, self.policy, self.label = graph, policy, label

    def enable(self) -> None:
        denoiser = denoiser_of(self.pipe)
        attach(denoiser, resolve_blocks(denoiser, self.graph.names), self.graph.modes, policy=self.policy,
               scheduler=self.pipe.scheduler)

    def disable(self) -> None:
        detach(denoiser_of(self.pipe))


# ----------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Full:
    """The model as it is."""

    def bind(self, pipe, num_inference_steps: int, guidance_scale: float = 1.0) -> Applied:
        return Applied(pipe, num_inference_steps)


@dataclass(frozen=True)
class FewerSteps:
    """The same scheduler with ``steps`` instead of the base step count."""

    steps: int

    def __post_init__(self):
        if self.steps < 1:
            raise DipgoError(f"steps must be >= 1, got {self.steps}")

    def bind(self, pipe, num_inference_steps: int, guidance_scale: float = 1.0) -> Applied:
        applied = Applied(pipe, self.steps)
        applied.label = f"{self.steps} steps"
        return applied


def nonuniform_full_steps(steps: int, n_full: int, center: int, power: float = 1.4) -> list[int]:
    """``n_full`` step indices, dense around ``center`` and sparser away from it (DeepCache's
    non-uniform mode): points evenly spaced on a ``1/power`` scale around the centre, mapped back.
    The power is lowered until the rounded indices are all distinct; step 0 is always included."""
    if not 1 <= n_full <= steps:
        raise DipgoError(f"cannot place {n_full} full steps in {steps} steps")
    if not 0 <= center < steps:
        raise DipgoError(f"center must be a step index in [0, {steps}), got {center}")
    p = power
    while p > 1.0:
        lo, hi = -(center ** (1 / p)), (steps - center) ** (1 / p)
        xs = torch.linspace(lo, hi, n_full + 1, dtype=torch.float64)
        idx = sorted({0} | {int(center + math.copysign(abs(float(x)) ** p, float(x))) for x in xs[1:-1]})
        idx = [i for i in idx if 0 <= i < steps]
        if len(idx) == n_full:
            return idx
        p -= 0.02
    return torch.linspace(0, steps - 1, n_full).round().long().unique().tolist()  # uniform fallback


def deepcache_units(graph: BlockGraph, model: torch.nn.Module, branch: int) -> set[str]:
    """The fine-graph units DeepCache computes at a cached step, for skip branch ``branch``.

    Same rule as the DeepCache package (cache_layer_id = branch % 3, cache_block_id = branch // 3):
    down layers before the branch and up layers after it run; the mid block and everything deeper
    come from the cache. For transformer-block models (no U shape) our adaptation computes the first
    ``branch`` blocks and reuses the residuals of the others (``branch=0`` is FORA-style caching).
    """
    if not is_unet(model):
        return set(graph.names[:branch])
    layer, block = branch % 3, branch // 3
    n_up = len(model.up_blocks)
    keep = set()
    for name in graph.names:
        parts = name.split(".")
        kind, i = parts[0], int(parts[1]) if parts[0] != "mid_block" else 0
        sub, j = parts[-2], int(parts[-1])
        if kind == "down_blocks":
            n_res = len(model.down_blocks[i].resnets)
            li = n_res if sub == "downsamplers" else j
            if i < block or (i == block and li < layer):
                keep.add(name)
        elif kind == "up_blocks":
            bi = n_up - i - 1
            li = 0 if sub == "upsamplers" else len(model.up_blocks[i].resnets) - j - 1
            if bi < block or (bi == block and li <= layer):
                keep.add(name)
    return keep


def deepcache_graph(denoiser) -> BlockGraph:
    """DeepCache's units: a UNet's fine graph (resnets, attentions, resamplers); a transformer's blocks (FORA)."""
    return unit_graph(denoiser)


def fine_profile(pipe):
    """MACs of one denoiser call split over DeepCache's units (its accounting)."""
    denoiser = denoiser_of(pipe)
    graph = deepcache_graph(denoiser)
    args, kwargs = capture_denoiser_call(pipe)
    return profile_denoiser(denoiser, resolve_blocks(denoiser, graph.names), args, kwargs)


@dataclass(frozen=True)
class DeepCache:
    """Full call every ``interval`` steps (or at non-uniformly spaced steps); the others compute only
    the shallow skip branch and reuse the cached deep features."""

    interval: int
    branch: int = 0
    mode: str = "uniform"
    center: int | None = None      # non-uniform: default 30 % into the run
    power: float = 1.4

    def __post_init__(self):
        if self.interval < 1:
            raise DipgoError(f"deepcache interval must be >= 1, got {self.interval}")
        if self.mode not in ("uniform", "nonuniform"):
            raise DipgoError(f"deepcache mode must be 'uniform' or 'nonuniform', got {self.mode!r}")
        if self.branch < 0:
            raise DipgoError(f"deepcache branch must be >= 0, got {self.branch}")

    def full_steps(self, steps: int) -> list[int]:
        if self.mode == "uniform" or self.interval == 1:
            return list(range(0, steps, self.interval))
        center = self.center if self.center is not None else round(0.3 * steps)
        return nonuniform_full_steps(steps, math.ceil(steps / self.interval), center, self.power)

    def bind(self, pipe, num_inference_steps: int, guidance_scale: float = 1.0, profile=None) -> Applied:
        """``profile``: the fine graph's cost profile, when the caller binds many intervals (it is the
        same for all of them and costs a traced, counted denoiser call)."""
        denoiser = denoiser_of(pipe)
        graph = deepcache_graph(denoiser)
        if num_calls(pipe, num_inference_steps) != num_inference_steps:
            raise DipgoError(f"{type(pipe.scheduler).__name__} calls the model more than once per step; "
                             "DeepCache here assumes one call per step (use DDIM, DPM-Solver++ or Euler)")
        keep = deepcache_units(graph, denoiser, self.branch)
        mask = torch.tensor([[1.0 if n in keep else 0.0 for n in graph.names]] * num_inference_steps)
        mask[self.full_steps(num_inference_steps)] = 1.0
        profile = profile or fine_profile(pipe)
        cfg = 2 if guidance_scale > 1 else 1
        schedule = schedule_from_mask(mask, graph, profile, model_class=type(denoiser).__name__,
                                      config_hash=config_hash(denoiser), scheduler=type(pipe.scheduler).__name__,
                                      num_inference_steps=num_inference_steps, cfg=cfg,
                                      meta={"method": self.label()})
        return AppliedSchedule(pipe, schedule, self.label())

    def label(self) -> str:
        mode = "" if self.mode == "uniform" else ", non-uniform"
        return f"DeepCache N={self.interval}, branch {self.branch}{mode}"


class FirstBlockPolicy(Policy):
    """Compute the first block; when its output (or residual) changed by less than ``threshold``
    (mean absolute change relative to the mean magnitude, as diffusers' FBCache) since the last call
    that computed everything, reuse every other block's cache."""

    def __init__(self, first: str, threshold: float):
        self.first, self.threshold = first, threshold
        self.reset()

    def reset(self) -> None:
        self.reference: torch.Tensor | None = None
        self.compute_rest = True
        self.calls = self.skipped = 0

    def computes(self, call: int, block: str) -> bool:
        return block == self.first or self.compute_rest

    def observe(self, call: int, block: str, value) -> None:
        if block != self.first:
            return
        v = value[0] if isinstance(value, (tuple, list)) else value
        while isinstance(v, (tuple, list)):
            v = v[0]
        self.calls += 1
        if self.reference is None:
            self.compute_rest = True
        else:
            change = (v - self.reference).abs().mean() / self.reference.abs().mean().clamp_min(1e-12)
            self.compute_rest = bool(change > self.threshold)
        if self.compute_rest:
            self.reference = v.detach()
        else:
            self.skipped += 1


class AppliedDiffusersFBC(Applied):
    """diffusers' own ``FirstBlockCacheConfig`` hooks on a transformer's blocks. Pipelines without
    diffusers' ``cache_context`` (DiTPipeline) get the context set and the state reset per generation."""

    def __init__(self, pipe, num_inference_steps: int, threshold: float):
        super().__init__(pipe, num_inference_steps)
        self.threshold = threshold
        self.label = f"FBCache {threshold:g} (diffusers)"

    def enable(self) -> None:
        from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

        apply_first_block_cache(denoiser_of(self.pipe), FirstBlockCacheConfig(threshold=self.threshold))

    def disable(self) -> None:
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK

        registry = HookRegistry.check_if_exists_or_initialize(denoiser_of(self.pipe))
        registry.remove_hook(_FBC_LEADER_BLOCK_HOOK, recurse=True)
        registry.remove_hook(_FBC_BLOCK_HOOK, recurse=True)

    def before_generation(self) -> None:
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        denoiser = denoiser_of(self.pipe)
        HookRegistry.check_if_exists_or_initialize(denoiser).reset_stateful_hooks()
        _set_cache_context(denoiser, CacheContext("dipgo"))


def diffusers_fbc_applies(denoiser: torch.nn.Module) -> bool:
    """True when diffusers' FBCache knows the model's blocks (transformer blocks it has registered)."""
    try:
        from diffusers.hooks._helpers import TransformerBlockRegistry
    except ImportError:
        return False
    blocks = getattr(denoiser, "transformer_blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) < 3:
        return False
    try:
        TransformerBlockRegistry.get(type(blocks[0]))
    except Exception:
        return False
    return True


@dataclass(frozen=True)
class FirstBlockCache:
    threshold: float
    impl: str = "auto"  # auto: diffusers' hook where it applies, else dipgo's policy

    def __post_init__(self):
        if not self.threshold >= 0:
            raise DipgoError(f"fbcache threshold must be >= 0, got {self.threshold}")
        if self.impl not in ("auto", "diffusers", "dipgo"):
            raise DipgoError(f"fbcache impl must be auto, diffusers or dipgo, got {self.impl!r}")

    def bind(self, pipe, num_inference_steps: int, guidance_scale: float = 1.0) -> Applied:
        denoiser = denoiser_of(pipe)
        native = diffusers_fbc_applies(denoiser)
        if self.impl == "diffusers" and not native:
            raise DipgoError(f"diffusers' FirstBlockCache does not apply to {type(denoiser).__name__}; "
                             "use impl=dipgo")
        if native and self.impl != "dipgo":
            return AppliedDiffusersFBC(pipe, num_inference_steps, self.threshold)
        graph = block_graph(denoiser, "coarse")
        return AppliedPolicy(pipe, num_inference_steps, graph, FirstBlockPolicy(graph.names[0], self.threshold),
                             f"FBCache {self.threshold:g} (dipgo)")


@dataclass(frozen=True)
class FromSchedule:
    path: str

    def bind(self, pipe, num_inference_steps: int, guidance_scale: float = 1.0) -> Applied:
        """Another ``num_inference_steps`` than the schedule's maps it over normalised time (opt-in)."""
        schedule = Schedule.load(self.path)
        if num_inference_steps != schedule.num_inference_steps:
            schedule = schedule.transferred(num_inference_steps, num_calls(pipe, num_inference_steps))
        speed = f" {schedule.macs_full / schedule.macs:.2f}x" if schedule.macs else ""
        return AppliedSchedule(pipe, schedule, f"dipgo{speed}")


# ------------------------------------------------------------------------------------------ parsing
def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


METHODS = {"full": (Full, ()), "steps": (FewerSteps, ("steps",)),
           "deepcache": (DeepCache, ("interval", "branch", "mode")),
           "fbcache": (FirstBlockCache, ("threshold", "impl")), "schedule": (FromSchedule, ("path",)),
           **DIFFUSERS_METHODS}


def parse_method(spec: str):
    """``name[:a,b,key=value]`` -> a method object (see the module docstring)."""
    name, _, rest = spec.partition(":")
    if name not in METHODS:
        raise DipgoError(f"unknown method {name!r} in {spec!r}; choose one of {sorted(METHODS)}")
    cls, positional = METHODS[name]
    if name == "schedule":
        if not rest:
            raise DipgoError("schedule:FILE needs a file")
        return FromSchedule(str(Path(rest)))
    kwargs: dict = {}
    items = [x for x in rest.split(",") if x] if rest else []
    for k, item in enumerate(items):
        key, eq, val = item.partition("=")
        if eq:
            kwargs[key.strip()] = _value(val.strip())
        elif k < len(positional):
            kwargs[positional[k]] = _value(item.strip())
        else:
            raise DipgoError(f"too many positional values in {spec!r}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise DipgoError(f"bad arguments in {spec!r}: {err}") from err
