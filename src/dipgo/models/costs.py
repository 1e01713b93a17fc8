"""Cost accounting: MACs per block, parameters and measured latency, reported the NTIRE way.

MACs are counted at the ATen level by a ``TorchDispatchMode`` rather than by per-layer formulas,
so whatever a model does inside its forward (convolutions, linear layers, batched matmuls, fused
scaled-dot-product attention) is seen exactly as it runs. Like thop/ptflops and the NTIRE challenge,
only multiply-accumulates of matrix products and convolutions are counted; norms and element-wise ops
are not. ``torch.utils.flop_counter`` is not used because it counts no attention on CPU.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _prod(xs: Iterable[int]) -> int:
    return math.prod(int(x) for x in xs)


def _conv_macs(args, out) -> int:
    x, w = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    if transposed:  # weight: (C_in, C_out / groups, *k); every input pixel feeds C_out/groups * k outputs
        return x.numel() * _prod(w.shape[1:])
    return out.numel() * _prod(w.shape[1:])  # weight: (C_out, C_in / groups, *k)


def _attention_macs(args, out) -> int:
    q, k, v = args[0], args[1], args[2]
    *batch, length, e = q.shape
    source = k.shape[-2]
    return _prod(batch) * length * source * (e + v.shape[-1])  # QK^T plus attention @ V


_MAC_RULES: dict = {
    aten.mm.default: lambda a, o: a[0].shape[0] * a[0].shape[1] * a[1].shape[1],
    aten.addmm.default: lambda a, o: a[1].shape[0] * a[1].shape[1] * a[2].shape[1],
    aten.bmm.default: lambda a, o: a[0].shape[0] * a[0].shape[1] * a[0].shape[2] * a[1].shape[2],
    aten.baddbmm.default: lambda a, o: a[1].shape[0] * a[1].shape[1] * a[1].shape[2] * a[2].shape[2],
    aten.convolution.default: _conv_macs,
}
for _name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
              "_scaled_dot_product_attention_math"):
    if hasattr(aten, _name):
        _MAC_RULES[getattr(aten, _name).default] = _attention_macs


class MacCounter(TorchDispatchMode):
    """Counts MACs of every op run inside it, attributed to the named submodules being executed.

    Give it ``scopes``: a mapping name -> module. While a scope's forward runs, its MACs are added
    to that name (nested scopes each get them). ``total`` counts everything.
    """

    def __init__(self, scopes: dict[str, torch.nn.Module] | None = None):
        super().__init__()
        self.total = 0
        self.by_scope: dict[str, int] = defaultdict(int)
        self._active: list[str] = []
        self._handles = []
        for name, module in (scopes or {}).items():
            self._handles.append(module.register_forward_pre_hook(self._enter(name)))
            self._handles.append(module.register_forward_hook(self._leave(name), always_call=True))

    def _enter(self, name: str):
        def hook(module, args):
            self._active.append(name)
        return hook

    def _leave(self, name: str):
        def hook(module, args, output):
            if self._active and self._active[-1] == name:
                self._active.pop()
        return hook

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        rule = _MAC_RULES.get(func)
        if rule is not None:
            macs = int(rule(args, out))
            self.total += macs
            for name in self._active:
                self.by_scope[name] += macs
        return out

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return super().__exit__(*exc)


def count_macs(module: torch.nn.Module, args: tuple = (), kwargs: dict | None = None,
               scopes: dict[str, torch.nn.Module] | None = None) -> MacCounter:
    """Run ``module(*args, **kwargs)`` once under a :class:`MacCounter` and return the counter."""
    with torch.no_grad(), MacCounter(scopes) as counter:
        module(*args, **(kwargs or {}))
    return counter


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class Latency:
    """Wall-clock per call in milliseconds: median with the spread, after warm-up (as NTIRE reports)."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    max_ms: float
    runs: int
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "samples_ms"}


class Stopwatch:
    """Milliseconds of the work inside ``with Stopwatch(device) as w: ...`` (``w.ms``).

    On a CUDA device it records CUDA events around the work and synchronises after it, as the NTIRE
    efficiency challenges time GPU code: a host timer would stop when the kernels are queued, not when
    they are done. Elsewhere it is ``time.perf_counter``.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.ms = 0.0

    def __enter__(self) -> Stopwatch:
        if self.cuda:
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._events[1].record()
            torch.cuda.synchronize()
            self.ms = self._events[0].elapsed_time(self._events[1])
        else:
            self.ms = (time.perf_counter() - self._t0) * 1000.0


def measure_latency(fn: Callable[[], object], runs: int = 10, warmup: int = 3,
                    device: torch.device | str | None = None) -> Latency:
    """Time ``fn()``; warm-up calls are discarded so caches, allocators and thread pools are settled."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        with Stopwatch(device) as watch:
            fn()
        samples.append(watch.ms)
    qs = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return Latency(statistics.median(samples), qs[0], qs[2], min(samples), max(samples), runs, samples)


@dataclass
class CostProfile:
    """MACs of one denoiser call (batch 1) split into gated blocks and the always-run rest.

    A generation's MACs for a keep mask (calls, blocks) are ``cfg * sum_calls(outside + kept blocks)``;
    ``cfg`` is 2 when classifier-free guidance doubles the batch.
    """

    blocks: list[str]
    block_macs: list[int]
    call_macs: int

    @property
    def outside_macs(self) -> int:
        return self.call_macs - sum(self.block_macs)

    def generation_macs(self, mask: torch.Tensor, cfg: int = 1, skip_empty_calls: bool = False) -> torch.Tensor:
        """Differentiable in ``mask`` (so the search can use it as its sparsity term).

        ``skip_empty_calls``: calls that compute no block cost nothing (the runtime reuses the whole
        previous output when the model's output depends only on a cached block, as in a UNet).
        """
        macs = torch.tensor(self.block_macs, dtype=mask.dtype)
        calls = int((mask.sum(1) > 0).sum()) if skip_empty_calls else mask.shape[0]
        return cfg * (calls * self.outside_macs + (mask * macs).sum())

    def kept_share(self, mask: torch.Tensor) -> torch.Tensor:
        return self.generation_macs(mask) / (mask.shape[0] * self.call_macs)

    def to_dict(self) -> dict:
        return {"blocks": self.blocks, "block_macs": self.block_macs, "call_macs": self.call_macs}


def profile_denoiser(denoiser: torch.nn.Module, blocks: dict[str, torch.nn.Module], args: tuple,
                     kwargs: dict) -> CostProfile:
    counter = count_macs(denoiser, args, kwargs, scopes=blocks)
    return CostProfile(list(blocks), [counter.by_scope.get(n, 0) for n in blocks], counter.total)


OUTSIDE = "<outside blocks>"


class ExecutionProbe:
    """Records which blocks really ran in each denoiser call, whatever skipped them.

    Caching methods replace a block's ``forward`` (dipgo's hooks, diffusers' FBCache, DeepCache), so a
    hook on the block itself fires either way; a hook on a module *inside* the block fires only when
    the block computes. The probe picks, per block, the first parameterised leaf that runs inside the
    block's own call in a traced call, and counts it only while that block is being called: a model
    may also call a block's submodule from outside (DiT's final layer runs
    ``transformer_blocks[0].norm1.emb``), which must not count as the block running. MACs of what
    ran then follow from a :class:`CostProfile` (``generation_macs(probe.mask())``), measured, not
    assumed, for static and dynamic methods alike.
    """

    def __init__(self, denoiser: torch.nn.Module, blocks: dict[str, torch.nn.Module], args: tuple, kwargs: dict):
        self.names = list(blocks)
        self.rows: list[set[str]] = []
        self.batches: list[int] = []  # per call, the batch its first probed layer ran on (0: none ran)
        self._inside: set[str] = set()
        self._handles = []
        for name, block in blocks.items():
            self._handles.append(block.register_forward_pre_hook(lambda m, a, name=name: self._inside.add(name)))
            self._handles.append(block.register_forward_hook(lambda m, a, o, name=name: self._inside.discard(name)))
        first: dict[str, torch.nn.Module] = {}
        tracer = []
        for name, block in blocks.items():
            for leaf in block.modules():
                if not list(leaf.children()) and any(True for _ in leaf.parameters(recurse=False)):
                    def mark(module, inputs, name=name, leaf=leaf):
                        if name in self._inside:
                            first.setdefault(name, leaf)
                    tracer.append(leaf.register_forward_pre_hook(mark))
        try:
            with torch.no_grad():
                denoiser(*args, **kwargs)
        finally:
            for h in tracer:
                h.remove()
            self._inside.clear()
        missing = [n for n in self.names if n not in first]
        if missing:
            self.remove()
            raise RuntimeError(f"blocks {missing} ran no parameterised layer in a traced call; cannot probe them")
        # The work outside the blocks (conv_in, embeddings, conv_out...) is probed the same way, by a
        # parameterised leaf outside every block: a call the runtime skips as a whole runs none of it.
        inner = {id(m) for b in blocks.values() for m in b.modules()}
        outside = [m for m in denoiser.modules() if id(m) not in inner and not list(m.children())
                   and any(True for _ in m.parameters(recurse=False))]
        self._handles.append(denoiser.register_forward_pre_hook(lambda m, a: self._call()))
        for name, leaf in first.items():
            self._handles.append(leaf.register_forward_pre_hook(lambda m, a, name=name: self._seen(name, a)))
        if outside:
            self._handles.append(outside[0].register_forward_pre_hook(lambda m, a: self._seen(OUTSIDE, a)))

    def _call(self) -> None:
        self.rows.append(set())
        self.batches.append(0)

    def _seen(self, name: str, inputs: tuple) -> None:
        if self.rows and (name == OUTSIDE or name in self._inside):
            self.rows[-1].add(name)
            x = inputs[0] if inputs else None
            if not self.batches[-1] and torch.is_tensor(x) and x.ndim:
                self.batches[-1] = int(x.shape[0])

    def shares(self) -> torch.Tensor:
        """Per call seen since ``clear``, the share of the largest batch of those calls that it ran on: all 1 unless
        a method ran some calls on part of the batch (FasterCache computes only the conditional half of a CFG
        batch in some calls; the denoiser sees the whole batch, the layers inside it the half)."""
        full = max(self.batches, default=0)
        return torch.tensor([b / full if b and full else 1.0 for b in self.batches], dtype=torch.float64)

    def mask(self) -> torch.Tensor:
        """(calls seen since the last ``clear``, blocks) 0/1: which blocks ran in each call."""
        return torch.tensor([[1.0 if n in row else 0.0 for n in self.names] for row in self.rows])

    def macs(self, profile: CostProfile, cfg: int = 1) -> float:
        """MACs of the calls seen since ``clear``: per call, the blocks that ran plus the outside work
        when it ran (batch 1, times ``cfg`` for a CFG-doubled batch, times the call's :meth:`shares`)."""
        if not self.rows:
            return 0.0
        block = torch.tensor(profile.block_macs, dtype=torch.float64)
        outside = torch.tensor([float(OUTSIDE in row) for row in self.rows], dtype=torch.float64)
        per_call = outside * profile.outside_macs + self.mask().double() @ block
        return cfg * float(self.shares() @ per_call)

    def clear(self) -> None:
        self.rows.clear()
        self.batches.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
