"""The DiP-GO search: learn which (call, block) pairs can reuse their cache, with gradients.

Each iteration draws fresh noise and fresh conditions, runs the user's sampling code once with the
full model (no gradients) and once as the gated SuperNet (with gradients), and minimises

    consistency(image_gated, image_full) + alpha_s * kept_MACs_share      (the latter only while
                                                                          kept share > 1 - target)

where the gated run uses straight-through hard gates after the dependency cascade, so what the
search optimises is exactly what the runtime will execute. The gates live in the runtime hooks
that ``dipgo.apply`` installs (:mod:`dipgo.cache.runtime`), and the sampling code is the pipeline's
own (:mod:`dipgo.cache.driver`): any pipeline with a block adapter, or any loop, is searchable.

Three parts, each small:

* :class:`Curriculum`: learning rate, the target ratio ramping up from 0, and the gates hardening from
  soft to 0/1 (so gates flip a few at a time instead of collapsing together; METHOD.md);
* :class:`SearchCheckpoint`: atomic save every ``checkpoint_every`` iterations and exact resume;
* :class:`Search`: set-up (graph, costs, call count) and the iteration itself.

Under ``torchrun``/``accelerate launch`` the search is data-parallel (:mod:`dipgo.dist`): every rank
draws the same batch, generates its slice of it, and the pruner's gradients are summed over ranks;
rank 0 writes the checkpoint, and on resume reads it and hands it to the others.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..dist import World, world
from ..errors import DipgoError
from ..fileio import atomic_path, check_progress, check_tensors, load_optimizer, read_checkpoint
from ..models.adapters import BlockGraph, block_graph, effective_keep, resolve_blocks
from ..models.costs import CostProfile, profile_denoiser
from ..models.similarity import psnr, ssim
from .driver import PipelineSampler, trace
from .postprocess import threshold_for_ratio
from .pruner import Pruner, straight_through
from .runtime import apply_search_gates, detach
from .schedule import FORECAST_ORDERS, config_hash

LOSSES = ("ssim", "l1", "l2")
# Per-call gradient checkpointing roughly halves the search's peak memory for about 1.5x the time: small
# models search without it, SD-sized ones (hundreds of millions of parameters) need it.
AUTO_CHECKPOINT_PARAMS = 100_000_000
REFERENCE_BATCH = 16  # images per sampling run when building the reference pool


@dataclass
class SearchConfig:
    """Settings of one search; validated on creation so bad values fail before any work."""

    ratio: float = 0.8                # target pruned share of MACs
    num_inference_steps: int = 50
    guidance_scale: float | None = None  # None: the pipeline's own default
    iterations: int = 150             # 0: no gradient steps; the result holds the model's graph and costs
    batch: int = 4                    # images per iteration
    lr: float | None = None           # None: 0.1, or 0.02 for a budget-range search (a large step scrambles
                                      # the ranking every cut of the range depends on)
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
    # One search for every budget: (lowest, highest) pruned share. Each iteration draws a target in the
    # range and cuts the current scores at it (the same threshold post-processing uses), so the scores
    # learn a ranking that is good at every cut; ``ratio`` is then ignored.
    ratios: tuple[float, float] | None = None
    # Full-model references: 0 samples fresh ones every iteration (the paper: one extra sampling run per
    # iteration, about a quarter of its time); N > 0 generates a pool of N once, in batches of
    # REFERENCE_BATCH, and each iteration draws its batch (conditions, seeds and images) from it.
    references: int = 0
    # What a gated-off block reads during the search: its last value (0, DiP-GO's backup connection) or a
    # forecast through its last 2 or 3 values, so the search learns which blocks extrapolate well.
    forecast_order: int = 0
    # The sparsity term acts only while the kept share exceeds the target by more than this many calls'
    # worth of MACs. An evenly spread start rounds to whole calls, so it can sit up to half a call above
    # its budget; pushed at once, many gates flip in the first iterations and saturate there. The final
    # cut at the budget (post-processing) removes the slack.
    slack_calls: float = 0.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 < self.ratio < 1.0:
            raise DipgoError(f"ratio must be in (0, 1) (the pruned share of MACs), got {self.ratio}")
        if self.num_inference_steps < 2:
            raise DipgoError(f"num_inference_steps must be >= 2, got {self.num_inference_steps}")
        if self.iterations < 0 or self.batch < 1:
            raise DipgoError("iterations must be >= 0 (0: no gradient steps) and batch >= 1")
        if self.loss not in LOSSES:
            raise DipgoError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        if self.init not in ("keep", "uniform"):
            raise DipgoError(f"unknown init {self.init!r}; choose 'keep' or 'uniform'")
        if isinstance(self.forecast_order, bool) or self.forecast_order not in FORECAST_ORDERS:
            raise DipgoError(f"forecast_order must be one of {FORECAST_ORDERS}, got {self.forecast_order!r}")
        for name in ("ramp", "anneal"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DipgoError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.slack_calls <= 2.0:
            raise DipgoError(f"slack_calls must be in [0, 2] (calls' worth of MACs), got {self.slack_calls}")
        if self.lr is None:
            self.lr = 0.02 if self.ratios is not None else 0.1
        if not self.lr > 0:
            raise DipgoError(f"lr must be > 0, got {self.lr}")
        if self.references and self.references < self.batch:
            raise DipgoError(f"references must be 0 (fresh every iteration) or >= batch ({self.batch}), got "
                             f"{self.references}")
        if self.ratios is not None:
            lo, hi = self.ratios = tuple(float(r) for r in self.ratios)
            if not 0.0 < lo <= hi < 1.0:
                raise DipgoError(f"ratios must be (lowest, highest) with 0 < lowest <= highest < 1, got {self.ratios}")


@dataclass
class SearchResult:
    scores: torch.Tensor              # (calls, blocks) keep probabilities
    graph: BlockGraph
    profile: CostProfile
    config: SearchConfig
    history: list[dict]
    seconds: float
    # what a schedule needs to know about the model it was searched on: model_class, config_hash,
    # scheduler, num_calls, cfg (images per call per generator), calibration (count + hash)
    meta: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ curriculum
@dataclass
class Curriculum:
    """Per-iteration learning rate, target ratio and gate hardness."""

    config: SearchConfig
    warmup: int = 5

    def lr(self, it: int) -> float:
        c = self.config
        if it < self.warmup:
            return c.lr * (it + 1) / self.warmup
        return c.lr * 0.5 * (1 + math.cos(math.pi * (it - self.warmup) / max(1, c.iterations - self.warmup)))

    def _ramp(self, share: float, it: int) -> float:
        """0 -> 1 linearly over the first ``share`` of the iterations, then 1."""
        its = share * self.config.iterations
        return 1.0 if its < 1 else min(1.0, (it + 1) / its)

    def hardness(self, it: int) -> float:
        return self._ramp(self.config.anneal, it)

    def ramp_share(self, it: int) -> float:
        return self._ramp(self.config.ramp, it)

    def target(self, it: int) -> float:
        return self.config.ratio * self._ramp(self.config.ramp, it)


# ------------------------------------------------------------------------------------------ files
def save_result(result: SearchResult, path: str | Path) -> Path:
    """Write a search's scores as JSON, so later runs derive schedules at any ratio without searching."""
    path = Path(path)
    data = {"format": "dipgo-search-scores", "version": 2, "blocks": result.graph.names,
            "scores": [[round(float(v), 6) for v in row] for row in result.scores],
            "config": asdict(result.config), "seconds": round(result.seconds, 1), "meta": result.meta,
            "graph": {"modes": result.graph.modes, "consumers": result.graph.consumers,
                      "always_needed": sorted(result.graph.always_needed), "output_block": result.graph.output_block},
            "profile": result.profile.to_dict(),
            "final": result.history[-1] if result.history else None,
            # mean 1 - SSIM (or L1/L2) of the last 10 iterations, on the search's own random samples:
            # a fair basis for choosing between searches without looking at evaluation seeds
            "final_consistency": (sum(h["consistency"] for h in result.history[-10:]) / len(result.history[-10:])
                                  if result.history else None)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path


def load_result(path: str | Path, target=None) -> SearchResult:
    """Read :func:`save_result`'s file; with ``target`` (a pipeline or module), refuse another model."""
    from ..models.pipelines import denoiser_of, num_calls

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        known = SearchConfig.__dataclass_fields__
        config = SearchConfig(**{k: v for k, v in data["config"].items() if k in known})
        scores = torch.tensor(data["scores"], dtype=torch.float32)
        if data.get("version", 1) >= 2:
            g = data["graph"]
            graph = BlockGraph(list(data["blocks"]), modes=dict(g["modes"]), consumers=dict(g["consumers"]),
                               always_needed=set(g["always_needed"]), output_block=g["output_block"])
            p = data["profile"]
            profile = CostProfile(list(p["blocks"]), list(p["block_macs"]), int(p["call_macs"]))
            meta = dict(data["meta"])
        elif target is None:
            raise DipgoError(f"{path} is a version-1 scores file: pass the pipeline it was searched on")
        else:  # format version 1 kept only the scores: rebuild graph, costs and meta from the pipeline
            graph, profile, meta = _rebuild(target, config, list(data["blocks"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        if isinstance(err, DipgoError):
            raise
        raise DipgoError(f"search scores file {path} is unreadable or corrupt ({err})") from err
    if target is not None:
        denoiser = denoiser_of(target)
        if type(denoiser).__name__ != meta["model_class"] or config_hash(denoiser) != meta["config_hash"]:
            raise DipgoError(f"{path} was searched on a {meta['model_class']} ({meta['config_hash']}), not this "
                             f"{type(denoiser).__name__} ({config_hash(denoiser)}); search again for this model")
        scheduler = getattr(target, "scheduler", None)
        if scheduler is not None:
            calls = num_calls(target, config.num_inference_steps)
            if calls != scores.shape[0] or type(scheduler).__name__ != meta.get("scheduler"):
                raise DipgoError(f"{path} has scores for {scores.shape[0]} calls of {meta.get('scheduler')}; this "
                                 f"pipeline's {type(scheduler).__name__} makes {calls} calls for "
                                 f"{config.num_inference_steps} steps")
    return SearchResult(scores, graph, profile, config, [data["final"]] if data.get("final") else [],
                        data.get("seconds", 0.0), meta)


def _rebuild(pipe, config: SearchConfig, blocks: list[str]) -> tuple[BlockGraph, CostProfile, dict]:
    from ..models.pipelines import capture_denoiser_call, denoiser_of

    denoiser = denoiser_of(pipe)
    try:
        graph = block_graph(denoiser, config.granularity)
    except DipgoError:  # a custom model: the file names its blocks
        graph = block_graph(denoiser, config.granularity, blocks)
    if graph.names != blocks:
        raise DipgoError(f"the scores were searched on blocks {blocks[:3]}... but this {type(denoiser).__name__} has "
                         f"{graph.names[:3]}...; search again for this model")
    profile = profile_denoiser(denoiser, resolve_blocks(denoiser, graph.names), *capture_denoiser_call(pipe))
    meta = {"model_class": type(denoiser).__name__, "config_hash": config_hash(denoiser), "blocks": graph.names,
            "scheduler": type(pipe.scheduler).__name__, "cfg": 2 if (config.guidance_scale or 1) > 1 else 1}
    return graph, profile, meta


def consistency(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """The search's image loss, in float32 for a half-precision model's images too (in bfloat16, 1 - SSIM
    near 0.01 would move in steps of 0.004)."""
    a, b = a.float(), b.float()
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


def nested_uniform_prior(calls: int, blocks: int) -> torch.Tensor:
    """A keep prior whose every cut is (close to) a fewer-steps schedule: calls ranked by farthest-point
    insertion (call 0, then the last, then whichever is farthest from those already taken, ...), so the
    top k calls are spread evenly over the run for every k; scores fall from 1 to 0 down that ranking,
    the same for every block of a call."""
    order, taken = [0], {0}
    while len(order) < calls:
        gaps = [(min(abs(c - t) for t in taken), -c) for c in range(calls) if c not in taken]
        nxt = -max(gaps)[1]
        order.append(nxt)
        taken.add(nxt)
    prior = torch.empty(calls)
    for rank, c in enumerate(order):
        prior[c] = 1.0 - rank / max(1, calls - 1)
    return prior[:, None].expand(calls, blocks).clone()


class SearchCheckpoint:
    """Atomic save / exact resume of a search; refuses a checkpoint of a different search."""

    IGNORED = ("iterations", "checkpoint_every", "grad_checkpointing")  # may change between runs
    FIELDS = {"pruner": dict, "opt": dict, "iteration": int, "history": list, "rng": torch.Tensor,
              "elapsed": (float, int), "config": dict, "fingerprint": dict}

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None

    def save(self, search: Search) -> None:
        if self.path is None or not search.world.main:
            return
        state = {"pruner": search.pruner.state_dict(), "opt": search.opt.state_dict(), "iteration": search.iteration,
                 "history": search.history, "rng": search.rng.get_state(), "elapsed": search.elapsed,
                 "config": asdict(search.cfg), "fingerprint": search.fingerprint()}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def _read(self) -> dict | None:
        if not self.path.exists():
            return None
        state = read_checkpoint(self.path, "search checkpoint", self.FIELDS)
        iteration, history = state["iteration"], state["history"]
        fix = "delete it to start over"
        check_progress(self.path, "search checkpoint", "iteration", iteration, history, fix)
        if not math.isfinite(state["elapsed"]) or state["elapsed"] < 0:
            raise DipgoError(f"search checkpoint {self.path}: field 'elapsed' must be a time >= 0, got "
                             f"{state['elapsed']}; {fix}")
        return state

    def restore(self, search: Search) -> bool:
        if self.path is None:
            return False
        state = search.world.on_main(self._read)  # rank 0 reads; nodes need no shared disk
        if state is None:
            return False
        theirs = state["config"]
        differs = {k: (theirs.get(k), v) for k, v in asdict(search.cfg).items()
                   if k not in self.IGNORED and theirs.get(k) != v}
        if differs or state["fingerprint"] != search.fingerprint():
            what = differs or "the model, blocks or calibration (field 'fingerprint')"
            raise DipgoError(f"checkpoint {self.path} is from a different search (settings differ: {what}); "
                             "use another --checkpoint path or delete it")
        where = f"search checkpoint {self.path}"
        check_tensors(search.pruner.state_dict(), state["pruner"], where, "pruner")
        if state["rng"].dtype != torch.uint8 or state["rng"].shape != search.rng.get_state().shape:
            raise DipgoError(f"{where}: field 'rng' is not a generator state; delete it to start over")
        load_optimizer(search.opt, state["opt"], where)
        search.pruner.load_state_dict(state["pruner"])
        search.rng.set_state(state["rng"])
        search.iteration, search.history, search.elapsed = state["iteration"], state["history"], state["elapsed"]
        return True


# ------------------------------------------------------------------------------------------ the search
class Search:
    """Set up once; ``run()`` trains the pruner and returns the learned scores.

    ``target`` is a diffusers pipeline (its own ``__call__`` is run) or a sampler from
    :mod:`dipgo.cache.driver` (e.g. a :class:`~dipgo.cache.driver.FunctionSampler` for a custom loop).
    """

    def __init__(self, target, config: SearchConfig, checkpoint_path: str | Path | None = None,
                 blocks: list[str] | None = None, calibration=None, call_kwargs: dict | None = None,
                 world_: World | None = None):
        self.cfg = config
        self.world = world_ or world()
        self.sampler = target if hasattr(target, "profile_call") else PipelineSampler(
            target, calibration, config.num_inference_steps, config.guidance_scale, call_kwargs)
        self.denoiser = self.sampler.denoiser
        self.device = next(self.denoiser.parameters()).device  # the pruner stays on the CPU; gates move here
        self.graph = block_graph(self.denoiser, config.granularity, blocks)
        self.modules = resolve_blocks(self.denoiser, self.graph.names)
        self.trace = trace(self.sampler)
        expected = getattr(self.sampler, "expected_calls", None)
        if expected is not None and self.trace.calls != expected:
            raise DipgoError(f"the sampling function called the denoiser {self.trace.calls} times for one generation, "
                             f"but num_inference_steps={config.num_inference_steps} implies {expected}; call it once "
                             "per step, or pass the matching num_inference_steps")
        self.calls = self.trace.calls
        args, kwargs = self.sampler.profile_call()
        self.profile = profile_denoiser(self.denoiser, self.modules, args, kwargs)
        self.checkpointing = config.grad_checkpointing
        if self.checkpointing is None:
            self.checkpointing = sum(p.numel() for p in self.denoiser.parameters()) > AUTO_CHECKPOINT_PARAMS
        with torch.random.fork_rng(devices=[]):  # the same pruner on every rank, and in every run of this seed
            torch.manual_seed(config.seed)
            self.pruner = Pruner(self.calls, len(self.graph.names), keep_bias=config.keep_bias)
        if config.ratios is not None:
            self.pruner.init_from_mask(nested_uniform_prior(self.calls, len(self.graph.names)))
        elif config.init == "uniform":
            self.pruner.init_from_mask(uniform_mask(self.calls, len(self.graph.names), config.ratio))
        self.opt = torch.optim.SGD(self.pruner.parameters(), lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
        self.curriculum = Curriculum(config)
        self.iteration, self.history, self.elapsed = 0, [], 0.0
        self.rng = torch.Generator().manual_seed(config.seed)
        self.pool: tuple[list[int], list[int], torch.Tensor] | None = None  # conditions, seeds, images
        self.store = SearchCheckpoint(checkpoint_path)
        self.store.restore(self)

    def fingerprint(self) -> dict:
        return {"model_class": type(self.denoiser).__name__, "config_hash": config_hash(self.denoiser),
                "blocks": self.graph.names, "calls": self.calls, "calibration": self.sampler.calibration.describe()}

    def meta(self) -> dict:
        scheduler = self.sampler.scheduler
        return {**self.fingerprint(), "scheduler": type(scheduler).__name__ if scheduler is not None else "custom",
                "num_calls": self.calls, "cfg": self.trace.batch_factor}

    # ------------------------------------------------------------------ one iteration
    def _sample(self, state, conditions: list[int], seeds: list[int]) -> torch.Tensor:
        state.reset()
        state.new_generation = True
        images = self.sampler(conditions, [torch.Generator().manual_seed(s) for s in seeds])
        if state.call + 1 != self.calls:
            raise DipgoError(f"the denoiser was called {state.call + 1} times in this generation, {self.calls} "
                             "before: the sampling code must make the same number of calls every time")
        return images

    def _build_pool(self, state) -> None:
        """The full model's images for ``references`` (condition, seed) pairs drawn from their own generator
        (so a resumed search rebuilds the same pool); each rank generates a slice, all get every image."""
        n = self.cfg.references
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        conditions = self.sampler.calibration.draw(n, g)
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=g).tolist()
        mine, parts = self.world.shard(n), []
        with torch.no_grad():
            for start in range(mine.start, mine.stop, REFERENCE_BATCH):
                idx = range(start, min(start + REFERENCE_BATCH, mine.stop))
                parts.append(self._sample(state, [conditions[i] for i in idx], [seeds[i] for i in idx]).cpu())
        images = torch.cat([p for rank in self.world.gather(parts) for p in rank])
        self.pool = (conditions, seeds, images.to(self.device))

    def _draw(self, state) -> tuple[list[int], list[int], list[int], torch.Tensor | None]:
        """This iteration's batch: every rank draws the same conditions and seeds, then keeps its own slice
        (``mine``); the full model's images for it come from the pool or from a sampling run."""
        cfg = self.cfg
        if self.pool is not None:
            picked = torch.randperm(len(self.pool[1]), generator=self.rng)[:cfg.batch].tolist()
            conditions, seeds = [self.pool[0][i] for i in picked], [self.pool[1][i] for i in picked]
        else:
            conditions = self.sampler.calibration.draw(cfg.batch, self.rng)
            seeds = torch.randint(0, 2**31 - 1, (cfg.batch,), generator=self.rng).tolist()
        mine = self.world.shard(cfg.batch)  # this rank's images of the batch (all of them in one process)
        conditions, seeds = [conditions[i] for i in mine], [seeds[i] for i in mine]
        ref = None
        if mine and self.pool is not None:
            ref = self.pool[2][[picked[i] for i in mine]]
        elif mine:
            with torch.no_grad():
                ref = self._sample(state, conditions, seeds)
        return list(mine), conditions, seeds, ref

    def step(self, att) -> dict:
        cfg, state, it = self.cfg, att.state, self.iteration
        mine, conditions, seeds, ref = self._draw(state)
        share = len(mine) / cfg.batch
        scores = self.pruner()
        if cfg.ratios is not None:  # a budget drawn from the range; the gates are the scores cut at it
            lo, hi = cfg.ratios
            target = (lo + (hi - lo) * float(torch.rand((), generator=self.rng))) * self.curriculum.ramp_share(it)
            cut = (threshold_for_ratio(scores.detach(), target, self.graph, self.profile, tol=0.02)[0]
                   if target > 0 else torch.ones_like(scores))
            gates = scores + (cut - scores).detach()
        else:
            gates = straight_through(scores, hardness=self.curriculum.hardness(it))
            target = self.curriculum.target(it)
        gates = torch.cat([torch.ones_like(gates[:1]), gates[1:]])  # call 0 always runs in full
        eff = effective_keep(gates, self.graph)
        kept = self.profile.kept_share(eff)
        # a drawn budget is enforced by the cut itself: no sparsity term
        sparse_on = cfg.ratios is None and bool(kept.item() > 1 - target + cfg.slack_calls / self.calls)
        # Each rank's loss is its share of the batch's consistency plus 1/world of the sparsity term, so the
        # gradients summed over ranks are those of the whole batch in one process.
        loss = (cfg.alpha_s * kept if sparse_on else 0.0 * kept) / self.world.size
        stats = torch.zeros(2)  # consistency and PSNR, summed over this rank's share
        # The gates stay installed until after backward: checkpointed calls are re-run then.
        state.gates, state.checkpointing = eff.to(self.device), self.checkpointing
        try:
            if mine:
                img = self._sample(state, conditions, seeds)
                cons = consistency(img, ref, cfg.loss) * share
                loss = loss + cons
                stats += torch.tensor([float(cons.detach()), float(psnr(img.detach(), ref, cap=100.0).sum())])
            for g in self.opt.param_groups:
                g["lr"] = self.curriculum.lr(it)
            self.opt.zero_grad(set_to_none=True)
            # Summed, not averaged, over gates: with a mean, each gate's gradient is O(1 / #gates) and a few
            # hundred SGD steps cannot move any single gate; only shared parameters move, all gates at once.
            (loss * scores.numel()).backward()
        finally:
            state.gates, state.checkpointing = None, False
            state.reset()
        params = [p for p in self.pruner.parameters() if p.grad is not None]
        comm = self.world.all_reduce([p.grad for p in params] + [stats])
        torch.nn.utils.clip_grad_norm_(self.pruner.parameters(), cfg.clip)
        self.opt.step()
        with torch.no_grad():
            hard_kept = float(self.profile.kept_share(effective_keep((scores > 0.5).float(), self.graph)))
        cons_all = float(stats[0])
        rec = {"iteration": it, "loss": cons_all + (cfg.alpha_s * float(kept.detach()) if sparse_on else 0.0),
               "consistency": cons_all, "kept_share": float(kept.detach()), "hard_kept_share": hard_kept,
               "target_ratio": target, "psnr": float(stats[1]) / cfg.batch, "sparsity_on": sparse_on}
        if self.world.size > 1:
            rec["comm_s"] = comm
        return rec

    # ------------------------------------------------------------------ the loop
    def _frozen(self) -> list[torch.nn.Parameter]:
        """The model's own parameters that would otherwise get gradients: only the pruner learns, so
        backward must not spend time or memory on the denoiser's (or the VAE's) weight gradients."""
        pipe = getattr(self.sampler, "pipe", None)
        modules = [self.denoiser] + [m for m in (getattr(pipe, "components", {}) or {}).values()
                                     if isinstance(m, torch.nn.Module)]
        params = {id(p): p for m in modules for p in m.parameters() if p.requires_grad}
        for p in params.values():
            p.requires_grad_(False)
        return list(params.values())

    def run(self, progress: bool = True, desc: str = "DiP-GO search") -> SearchResult:
        frozen = self._frozen()
        att = apply_search_gates(self.denoiser, self.modules, self.graph.modes,
                                 forecast_order=self.cfg.forecast_order)
        bar = tqdm(total=self.cfg.iterations, initial=self.iteration, desc=desc,
                   disable=not (progress and self.world.main), dynamic_ncols=True)
        try:
            if self.cfg.references and self.pool is None and self.iteration < self.cfg.iterations:
                bar.set_postfix_str(f"sampling {self.cfg.references} references")
                t0 = time.perf_counter()
                self._build_pool(att.state)
                self.elapsed += time.perf_counter() - t0
            while self.iteration < self.cfg.iterations:
                t0 = time.perf_counter()
                rec = self.step(att)
                rec["seconds"] = time.perf_counter() - t0
                self.elapsed += rec["seconds"]
                self.history.append(rec)
                self.iteration += 1
                bar.update(1)
                bar.set_postfix(cons=f"{rec['consistency']:.4f}", kept=f"{rec['kept_share']:.3f}",
                                target=f"{1 - rec['target_ratio']:.3f}", psnr=f"{rec['psnr']:.1f}")
                if self.iteration % self.cfg.checkpoint_every == 0 or self.iteration == self.cfg.iterations:
                    self.store.save(self)
        finally:
            bar.close()
            detach(self.denoiser)
            for p in frozen:
                p.requires_grad_(True)
        return self.result()

    def result(self) -> SearchResult:
        """The scores as they stand (the start's, before any iteration), with the model's graph and costs."""
        with torch.no_grad():
            scores = self.pruner()
        return SearchResult(scores, self.graph, self.profile, self.cfg, self.history, self.elapsed, self.meta())
