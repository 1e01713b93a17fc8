"""The DiP-GO search: learn which (call, block) pairs can reuse their cache, with gradients.

Each iteration draws fresh noise and random digits, runs the full model once (no gradients) and
the gated SuperNet once (with gradients), and minimises

    consistency(image_gated, image_full) + alpha_s * kept_MACs_share      (the latter only while
                                                                          kept share > 1 - target)

where the gated run uses straight-through hard gates after the dependency cascade, so what the
search optimises is exactly what the runtime will execute. The target pruned ratio ramps up from 0
over the first ``ramp`` share of iterations, so gates flip a few at a time instead of all at once
(the collapse described in METHOD.md). Each denoiser call is gradient-checkpointed, so memory does
not grow with the activations of all unrolled calls.

The search checkpoints atomically every ``checkpoint_every`` iterations and resumes from there.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from .adapters import BlockGraph, block_graph, effective_keep, resolve_blocks
from .costs import CostProfile, profile_denoiser
from .errors import DipgoError
from .fileio import atomic_path
from .metrics import ssim
from .pruner import Pruner, straight_through
from .rollout import num_calls, rollout
from .runtime import attach, detach
from .sampling import capture_denoiser_call
from .zoo import denoiser_of

LOSSES = ("ssim", "l1", "l2")
# Per-call gradient checkpointing halves the search's peak memory (667 MB vs 1,275 MB for mnist-sd, 50 steps,
# 4 images) but costs ~1.5x the time. Small models fit easily without it; SD-sized ones (860M) do not.
AUTO_CHECKPOINT_PARAMS = 100_000_000


@dataclass
class SearchConfig:
    """Settings of one search; validated on creation so bad values fail before any work."""

    ratio: float = 0.8                # target pruned share of MACs
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    iterations: int = 150
    batch: int = 4                    # images per iteration
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    alpha_s: float = 1.0
    ramp: float = 0.5                 # share of iterations over which the target ramps up from 0
    anneal: float = 0.5               # share of iterations over which soft gates harden to 0/1
    keep_bias: float = 2.0            # initial keep logit margin (p_keep = sigmoid(keep_bias))
    clip: float = 5.0
    loss: str = "ssim"
    init: str = "keep"                # "keep": everything kept (paper); "uniform": a fewer-steps schedule
    grad_checkpointing: bool | None = None  # None: on for denoisers over AUTO_CHECKPOINT_PARAMS parameters
    checkpoint_every: int = 10
    seed: int = 0
    granularity: str = "coarse"
    num_classes: int = 10
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 < self.ratio < 1.0:
            raise DipgoError(f"ratio must be in (0, 1) (the pruned share of MACs), got {self.ratio}")
        if self.num_inference_steps < 2:
            raise DipgoError(f"num_inference_steps must be >= 2, got {self.num_inference_steps}")
        if self.iterations < 1 or self.batch < 1:
            raise DipgoError("iterations and batch must be >= 1")
        if self.loss not in LOSSES:
            raise DipgoError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        if self.init not in ("keep", "uniform"):
            raise DipgoError(f"unknown init {self.init!r}; choose 'keep' or 'uniform'")
        for name in ("ramp", "anneal"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DipgoError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class SearchResult:
    scores: torch.Tensor              # (calls, blocks) keep probabilities
    graph: BlockGraph
    profile: CostProfile
    config: SearchConfig
    history: list[dict]
    seconds: float


def save_result(result: SearchResult, path: str | Path) -> Path:
    """Write a search's scores as JSON, so later runs derive schedules at any ratio without searching."""
    path = Path(path)
    data = {"format": "dipgo-search-scores", "version": 1, "blocks": result.graph.names,
            "scores": [[round(float(v), 6) for v in row] for row in result.scores],
            "config": asdict(result.config), "seconds": round(result.seconds, 1),
            "final": result.history[-1] if result.history else None,
            # mean 1 - SSIM (or L1/L2) of the last 10 iterations, on the search's own random samples:
            # a fair basis for choosing between searches without looking at evaluation seeds
            "final_consistency": (sum(h["consistency"] for h in result.history[-10:]) / len(result.history[-10:])
                                  if result.history else None)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path


def load_result(path: str | Path, pipe) -> SearchResult:
    """Read :func:`save_result`'s file back for ``pipe`` (block graph and costs are rebuilt from it)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        config = SearchConfig(**data["config"])
        scores = torch.tensor(data["scores"], dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DipgoError(f"search scores file {path} is unreadable or corrupt ({err})") from err
    denoiser = denoiser_of(pipe)
    try:
        graph = block_graph(denoiser, config.granularity)
    except DipgoError:  # a custom model: the file names its blocks
        graph = block_graph(denoiser, config.granularity, data["blocks"])
    if graph.names != data["blocks"]:
        raise DipgoError(f"{path} was searched on blocks {data['blocks'][:3]}... but this "
                         f"{type(denoiser).__name__} has {graph.names[:3]}...; search again for this model")
    calls = num_calls(pipe, config.num_inference_steps)
    if tuple(scores.shape) != (calls, len(graph.names)):
        raise DipgoError(f"{path} has scores for {scores.shape[0]} calls; this pipeline's scheduler makes {calls} "
                         f"calls for {config.num_inference_steps} steps")
    args, kwargs = capture_denoiser_call(pipe)
    profile = profile_denoiser(denoiser, resolve_blocks(denoiser, graph.names), args, kwargs)
    return SearchResult(scores, graph, profile, config, [data["final"]] if data.get("final") else [],
                        data.get("seconds", 0.0))


def consistency(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ssim":
        return (1 - ssim(a, b)).mean()
    if kind == "l1":
        return (a - b).abs().mean()
    return (a - b).pow(2).mean()


def uniform_mask(calls: int, blocks: int, ratio: float) -> torch.Tensor:
    """Keep-all on ~evenly spaced calls, reuse-all elsewhere: the fewer-steps schedule at ``ratio``."""
    full = max(1, round(calls * (1 - ratio)))
    idx = torch.linspace(0, calls - 1, full).round().long().unique()
    mask = torch.zeros(calls, blocks)
    mask[idx] = 1
    mask[0] = 1
    return mask


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise DipgoError(f"search checkpoint {path} is corrupt or truncated ({err}); delete it to start over") \
            from err


class Search:
    """Set up once per pipeline; ``run()`` trains the pruner and returns the learned scores."""

    def __init__(self, pipe, config: SearchConfig, checkpoint_path: str | Path | None = None,
                 blocks: list[str] | None = None):
        self.pipe, self.cfg = pipe, config
        self.denoiser = denoiser_of(pipe)
        self.graph = block_graph(self.denoiser, config.granularity, blocks)
        self.modules = resolve_blocks(self.denoiser, self.graph.names)
        args, kwargs = capture_denoiser_call(pipe)
        self.profile = profile_denoiser(self.denoiser, self.modules, args, kwargs)
        self.calls = num_calls(pipe, config.num_inference_steps)
        self.checkpointing = config.grad_checkpointing
        if self.checkpointing is None:
            self.checkpointing = sum(p.numel() for p in self.denoiser.parameters()) > AUTO_CHECKPOINT_PARAMS
        self.pruner = Pruner(self.calls, len(self.graph.names), keep_bias=config.keep_bias)
        if config.init == "uniform":
            self.pruner.init_from_mask(uniform_mask(self.calls, len(self.graph.names), config.ratio))
        self.opt = torch.optim.SGD(self.pruner.parameters(), lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.iteration, self.history, self.elapsed = 0, [], 0.0
        self.rng = torch.Generator().manual_seed(config.seed)
        if self.checkpoint_path and self.checkpoint_path.exists():
            self._resume(_load_checkpoint(self.checkpoint_path))

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return {"pruner": self.pruner.state_dict(), "opt": self.opt.state_dict(), "iteration": self.iteration,
                "history": self.history, "rng": self.rng.get_state(), "elapsed": self.elapsed,
                "config": asdict(self.cfg), "blocks": self.graph.names, "calls": self.calls,
                "model_class": type(self.denoiser).__name__}

    def _resume(self, state: dict) -> None:
        mine = asdict(self.cfg)
        theirs = state.get("config", {})
        differs = {k: (theirs.get(k), v) for k, v in mine.items()
                   if k not in ("iterations", "checkpoint_every", "grad_checkpointing") and theirs.get(k) != v}
        if differs or state.get("blocks") != self.graph.names or state.get("calls") != self.calls:
            raise DipgoError(f"checkpoint {self.checkpoint_path} is from a different search "
                             f"(settings differ: {differs}); use another --checkpoint path or delete it")
        self.pruner.load_state_dict(state["pruner"])
        self.opt.load_state_dict(state["opt"])
        self.iteration, self.history, self.elapsed = state["iteration"], state["history"], state["elapsed"]
        self.rng.set_state(state["rng"])

    def save_checkpoint(self) -> None:
        if self.checkpoint_path:
            with atomic_path(self.checkpoint_path) as tmp:
                torch.save(self._state(), tmp)

    # ------------------------------------------------------------------ one iteration
    def _lr(self, it: int) -> float:
        warm = 5
        if it < warm:
            return self.cfg.lr * (it + 1) / warm
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * (it - warm) / max(1, self.cfg.iterations - warm)))

    def _ramp(self, share: float, it: int) -> float:
        """0 -> 1 linearly over the first ``share`` of the iterations, then 1."""
        its = share * self.cfg.iterations
        return 1.0 if its < 1 else min(1.0, (it + 1) / its)

    def hardness_at(self, it: int) -> float:
        return self._ramp(self.cfg.anneal, it)

    def target_at(self, it: int) -> float:
        return self.cfg.ratio * self._ramp(self.cfg.ramp, it)

    def _gated_run(self, labels, gens, gates: torch.Tensor, state) -> torch.Tensor:
        state.gates, state.driven = gates, True

        def before(i):
            state.call = i

        def wrapper(i, fn, x):
            if not self.checkpointing:
                return fn(x)
            keys = sorted(state.caches)  # per call: the closure below is re-run in backward
            flat, spec = tree_flatten([state.caches[k] for k in keys])
            out_spec: list = []

            def body(x_in, *flat_in):
                state.call = i
                state.caches.clear()
                state.caches.update(zip(keys, tree_unflatten(list(flat_in), spec), strict=True))
                out = fn(x_in)
                new_keys = sorted(state.caches)
                new_flat, new_spec = tree_flatten([state.caches[k] for k in new_keys])
                out_spec[:] = [new_keys, new_spec]
                return (out, *new_flat)

            res = checkpoint(body, x, *flat, use_reentrant=False)
            new_keys, new_spec = out_spec
            state.caches.clear()
            state.caches.update(zip(new_keys, tree_unflatten(list(res[1:]), new_spec), strict=True))
            return res[0]

        # The gates stay installed until after backward: checkpointed calls are re-run then.
        return rollout(self.pipe, labels, gens, self.cfg.num_inference_steps, self.cfg.guidance_scale,
                       before_call=before, call_wrapper=wrapper)

    def step(self, att) -> dict:
        cfg, state = self.cfg, att.state
        labels = torch.randint(0, cfg.num_classes, (cfg.batch,), generator=self.rng).tolist()
        seeds = torch.randint(0, 2**31 - 1, (cfg.batch,), generator=self.rng).tolist()
        with torch.no_grad():
            state.driven = True
            ref = rollout(self.pipe, labels, [torch.Generator().manual_seed(s) for s in seeds],
                          cfg.num_inference_steps, cfg.guidance_scale, before_call=lambda i: setattr(state, "call", i))
            state.driven = False
            state.reset()
        scores = self.pruner()
        gates = straight_through(scores, hardness=self.hardness_at(self.iteration))
        gates = torch.cat([torch.ones_like(gates[:1]), gates[1:]])  # call 0 always runs in full
        eff = effective_keep(gates, self.graph)
        kept = self.profile.kept_share(eff)
        target = self.target_at(self.iteration)
        n_gates = scores.numel()
        try:
            img = self._gated_run(labels, [torch.Generator().manual_seed(s) for s in seeds], eff, state)
            cons = consistency(img, ref, cfg.loss)
            sparse_on = bool(kept.item() > 1 - target)
            loss = cons + (cfg.alpha_s * kept if sparse_on else 0.0)
            for g in self.opt.param_groups:
                g["lr"] = self._lr(self.iteration)
            self.opt.zero_grad(set_to_none=True)
            # Summed, not averaged, over gates: with a mean, each gate's gradient is O(1 / #gates) and a few
            # hundred SGD steps cannot move any single gate; only shared parameters move, all gates at once.
            (loss * n_gates).backward()
        finally:
            state.gates, state.driven = None, False
            state.reset()
        torch.nn.utils.clip_grad_norm_(self.pruner.parameters(), cfg.clip)
        self.opt.step()
        with torch.no_grad():
            psnr = float(10 * torch.log10(1 / (img - ref).pow(2).mean().clamp_min(1e-10)))
            hard_kept = float(self.profile.kept_share(effective_keep((scores > 0.5).float(), self.graph)))
        return {"iteration": self.iteration, "loss": float(loss.detach()), "consistency": float(cons.detach()),
                "kept_share": float(kept.detach()), "hard_kept_share": hard_kept, "target_ratio": target,
                "psnr": psnr, "sparsity_on": sparse_on}

    # ------------------------------------------------------------------ the loop
    def run(self, progress: bool = True) -> SearchResult:
        att = attach(self.denoiser, self.modules, self.graph.modes)
        bar = tqdm(total=self.cfg.iterations, initial=self.iteration, desc="DiP-GO search", disable=not progress,
                   dynamic_ncols=True)
        try:
            while self.iteration < self.cfg.iterations:
                t0 = time.perf_counter()
                rec = self.step(att)
                self.elapsed += time.perf_counter() - t0
                self.history.append(rec)
                self.iteration += 1
                bar.update(1)
                bar.set_postfix(cons=f"{rec['consistency']:.4f}", kept=f"{rec['kept_share']:.3f}",
                                target=f"{1 - rec['target_ratio']:.3f}", psnr=f"{rec['psnr']:.1f}")
                if self.iteration % self.cfg.checkpoint_every == 0 or self.iteration == self.cfg.iterations:
                    self.save_checkpoint()
        finally:
            bar.close()
            detach(self.denoiser)
        with torch.no_grad():
            scores = self.pruner()
        return SearchResult(scores, self.graph, self.profile, self.cfg, self.history, self.elapsed)
