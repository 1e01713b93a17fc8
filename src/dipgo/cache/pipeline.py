"""The pruning pipeline behind every entry point: ``dipgo prune``, ``dipgo.prune`` (pipelines and custom
loops) and ``dipgo bench`` all run :func:`prune_schedules`, with the same stages and defaults.

1. **search**: the DiP-GO gradient search (:mod:`dipgo.cache.search`), at ``thorough`` effort or with
   ``iterations`` set. For one budget it starts from the evenly spread schedule of that budget and moves only
   where its gradients say a (call, block) pair matters more than another. At ``quick`` and ``default`` it is
   off and its time goes to held-out runs: on the models measured, its schedule did not beat the simple starts
   after refinement, and the held-out runs it cost did pay (docs/methods.md, "The default pruning pipeline").
2. **select**: the simple schedules of the budget (evenly spread full calls, which is fewer steps on DDIM; full
   calls every N, which is DeepCache/FORA spacing; the first calls full and then every N, which is
   TaylorSeer's), and the searched schedule where there is one, are each brought to the budget and measured on
   held-out generations (:mod:`dipgo.cache.heldout`), with reused blocks taken as they are (forecast order 0)
   and extrapolated from their last values (orders 1 and 2).
3. **refine**: a local search from the best (start, order) pair (:mod:`dipgo.cache.refine`) spends what is left of
   the held-out budget.
4. **compare**: fewer steps at the same MACs on the same held-out images (on a custom loop, the evenly
   spread schedule of the same MACs), so the user sees what the schedule beats.

One ``effort`` level sets the cost of all four. The schedule's metadata (``meta["pipeline"]``) records
every candidate's held-out PSNR, which one won, the comparison and each stage's seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..dist import world
from ..errors import DipgoError
from ..models.adapters import is_unet
from ..models.similarity import psnr
from .driver import FunctionSampler, PipelineSampler
from .heldout import HELD_OUT_SEED, HeldOutRecord, check_seeded, held_out_images, held_out_psnr
from .postprocess import schedule_from_mask
from .refine import RefineConfig, Scorer, refine
from .schedule import FORECAST_ORDERS, Schedule
from .search import Search, SearchConfig, SearchResult, uniform_mask


@dataclass(frozen=True)
class Effort:
    """What one effort level spends: search iterations (0: no gradient search) and images per iteration,
    full-model reference images pooled for the search, held-out sampling runs for selection and refinement,
    and images per run."""

    iterations: int
    batch: int
    references: int
    evaluations: int
    held_out: int
    repair_candidates: int


EFFORTS = {
    # quick and default give the search's time to held-out runs (about what 30 iterations x 2 images and
    # 80 x 4 took): the simple starts alone use up about 120 runs at quick, so refinement only begins past that
    "quick": Effort(iterations=0, batch=2, references=16, evaluations=200, held_out=8, repair_candidates=6),
    "default": Effort(iterations=0, batch=4, references=32, evaluations=700, held_out=16, repair_candidates=12),
    "thorough": Effort(iterations=250, batch=4, references=128, evaluations=1500, held_out=32, repair_candidates=16),
}
# Selection measures up to seven starts (the search, and two each of the evenly spread, every-N and warm-up
# spacings) once each at every forecast order it tries; a budget below that is spent on those measurements and
# nothing else.
MIN_EVALUATIONS = 8


@dataclass
class PruneConfig:
    """Settings of the pruning pipeline; validated on creation, before any model work.

    ``ratio``: the pruned share of the denoiser's MACs, in (0, 1); several ratios share one search.
    ``effort``: ``quick``, ``default`` or ``thorough`` (see :data:`EFFORTS`); ``iterations``,
    ``evaluations`` and ``held_out`` override its parts. ``forecast``: how reused blocks are formed, 0 (the
    last value), 1 or 2 (extrapolated through the last 2 or 3 computed values); None lets the held-out
    selection choose, with the search at order 0. ``search`` holds further
    :class:`~dipgo.cache.search.SearchConfig` fields (``lr``, ``loss``, ``granularity``, ...).
    """

    ratio: float | Sequence[float] = 0.8
    num_inference_steps: int = 50
    effort: str = "default"
    iterations: int | None = None
    evaluations: int | None = None
    held_out: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    forecast: int | None = None
    search: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.forecast is not None and (isinstance(self.forecast, bool) or self.forecast not in FORECAST_ORDERS):
            raise DipgoError(f"forecast must be None (chosen on held-out images) or one of {FORECAST_ORDERS}, "
                             f"got {self.forecast!r}")
        if self.effort not in EFFORTS:
            raise DipgoError(f"unknown effort {self.effort!r}; choose one of {', '.join(EFFORTS)}")
        ratios = list(self.ratio) if isinstance(self.ratio, (list, tuple)) else [self.ratio]
        if not ratios:
            raise DipgoError("give at least one ratio")
        for r in ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r < 1.0:
                raise DipgoError(f"ratio must be in (0, 1) (the pruned share of MACs), got {r!r}")
        self.ratios = tuple(float(r) for r in ratios)
        if self.iterations is not None and (isinstance(self.iterations, bool) or self.iterations < 0):
            raise DipgoError(f"iterations (of the search) must be >= 0 (0: no gradient search), got "
                             f"{self.iterations!r}")
        if self.evaluations is not None and self.evaluations < MIN_EVALUATIONS:
            raise DipgoError(f"evaluations={self.evaluations} is too few to select among the candidate schedules: "
                             f"give at least {MIN_EVALUATIONS} held-out sampling runs")
        if self.held_out is not None and self.held_out < 1:
            raise DipgoError(f"held_out (images per held-out run) must be >= 1, got {self.held_out}")
        unknown = sorted(set(self.search) - set(SearchConfig.__dataclass_fields__))
        if unknown:
            raise DipgoError(f"unknown search setting(s) {unknown}; see dipgo.cache.search.SearchConfig")
        self.search_config()  # the search's own checks, now rather than after loading a model

    @property
    def level(self) -> Effort:
        return EFFORTS[self.effort]

    def search_config(self) -> SearchConfig:
        e, lo, hi = self.level, min(self.ratios), max(self.ratios)
        base = {"ratio": hi, "num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                "iterations": e.iterations if self.iterations is None else self.iterations,
                "batch": e.batch, "references": e.references,
                "init": "uniform", "seed": self.seed, "ratios": (lo, hi) if lo < hi else None,
                # from the evenly spread schedule the budget holds from the first iteration: a target ramping
                # up from 0 would first pull the gates back towards keep-everything and scramble the start
                "ramp": 0.0, "forecast_order": self.forecast or 0,
                # a small step, and no push while the start is within half a call of the budget: with lr 0.1
                # and the push, gates flipped together in the first iterations and froze there, and the
                # outcome depended on the seed (docs/methods.md, "The default pruning pipeline")
                "lr": 0.03 if lo == hi else None, "slack_calls": 0.5 if lo == hi else 0.0}
        base.update(self.search)
        base["references"] = max(base["references"], base["batch"]) if base["references"] else 0
        return SearchConfig(**base)

    def refine_config(self) -> RefineConfig:
        e = self.level
        return RefineConfig(evaluations=e.evaluations if self.evaluations is None else self.evaluations,
                            n=e.held_out if self.held_out is None else self.held_out,
                            repair_candidates=e.repair_candidates, seed=self.seed,
                            orders=FORECAST_ORDERS if self.forecast is None else (self.forecast,))


@dataclass
class Comparison:
    """The simple schedule a user would otherwise pick, at the same MACs, on the same held-out images."""

    label: str
    speedup: float
    psnr: float


def uniform_schedule(result: SearchResult, ratio: float) -> Schedule:
    """The evenly spread schedule (whole calls computed or reused) whose pruned share is closest to
    ``ratio``: fewer steps, expressed as a schedule of this search's calls."""
    calls, blocks = result.scores.shape
    m, best = result.meta, None
    for keep in range(1, calls + 1):
        s = schedule_from_mask(uniform_mask(calls, blocks, 1 - keep / calls), result.graph, result.profile,
                               model_class=m["model_class"], config_hash=m["config_hash"], scheduler=m["scheduler"],
                               num_inference_steps=result.config.num_inference_steps, cfg=m.get("cfg", 1),
                               requested_ratio=ratio, meta={"method": "evenly spread full calls"})
        if best is None or abs(s.achieved_ratio - ratio) < abs(best.achieved_ratio - ratio):
            best = s
    return best


def _fewer_steps(sampler, schedule: Schedule, full: torch.Tensor) -> Comparison:
    """Fewer steps of the pipeline's own scheduler, the count whose MACs are closest to the schedule's."""
    from ..models.pipelines import num_calls

    pipe, steps = sampler.pipe, schedule.num_inference_steps
    target = schedule.macs_full / schedule.macs
    total = num_calls(pipe, steps)
    k = min(range(1, steps), key=lambda k: abs(math.log(total / num_calls(pipe, k) / target)))
    fewer = PipelineSampler(pipe, sampler.calibration, k, sampler.guidance_scale, sampler.extra)
    value = float(psnr(held_out_images(fewer, full.shape[0]), full, cap=100.0).mean())
    return Comparison(f"{k} steps", total / num_calls(pipe, k), value)


def compare(sampler, result: SearchResult, schedule: Schedule, full: torch.Tensor) -> Comparison:
    """Stage 4: what the user would pick instead at the schedule's MACs."""
    if isinstance(sampler, PipelineSampler):
        return _fewer_steps(sampler, schedule, full)
    even = uniform_schedule(result, schedule.achieved_ratio)
    calls = sum(1 for row in even.steps if row)
    return Comparison(f"evenly spread full calls ({calls} of {len(even.steps)})", even.macs_full / even.macs,
                      held_out_psnr(sampler, even, full))


@dataclass
class Pruned:
    """One budget's outcome: the schedule, its held-out PSNR, the candidates' and the comparison."""

    schedule: Schedule
    psnr: float
    candidates: dict[str, float]
    winner: str
    comparison: Comparison | None

    def line(self) -> str:
        """``dipgo 3.30x: 31.2 dB | 6 steps (3.33x): 26.0 dB`` (held-out images)."""
        s = self.schedule
        mine = f"dipgo {s.macs_full / s.macs:.2f}x: {self.psnr:.1f} dB"
        if self.comparison is None:
            return mine
        c = self.comparison
        return f"{mine} | {c.label} ({c.speedup:.2f}x): {c.psnr:.1f} dB"


def make_sampler(target, config: PruneConfig, *, denoiser=None, calibration=None, call_kwargs=None):
    """The sampler that runs the user's code: a pipeline's ``__call__``, or ``sample_fn`` with ``denoiser``."""
    if denoiser is not None or (callable(target) and not hasattr(target, "scheduler")):
        if isinstance(target, torch.nn.Module) and denoiser is None:
            raise DipgoError("dipgo.prune got a bare module: pass your sampling function and the module, "
                             "dipgo.prune(sample_fn, denoiser=module, blocks=[...], ...)")
        if denoiser is None:
            raise DipgoError("with a sampling function, pass the module it calls: denoiser=module")
        if calibration is not None and calibration.kind != "none":
            raise DipgoError("a sampling function takes no prompts or class_labels: condition inside sample_fn")
        return FunctionSampler(target, denoiser, config.num_inference_steps)
    return PipelineSampler(target, calibration, config.num_inference_steps, config.guidance_scale, call_kwargs)


def record_path(checkpoint) -> Path | None:
    """Where the held-out values of a pipeline with search checkpoint ``checkpoint`` are kept (see
    :class:`~dipgo.cache.heldout.HeldOutRecord`): ``OUT.search.pt`` -> ``OUT.search.heldout.json``."""
    return None if checkpoint is None else Path(checkpoint).with_suffix(".heldout.json")


def remove_checkpoints(checkpoint) -> None:
    """Delete the search checkpoint and the held-out record beside it: the prune is done."""
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
        record_path(checkpoint).unlink(missing_ok=True)


def _record_of(checkpoint, result: SearchResult, config: PruneConfig, progress: bool) -> HeldOutRecord:
    rc = config.refine_config()
    fingerprint = {"model": result.meta, "n": rc.n, "seed": HELD_OUT_SEED, "guidance_scale": config.guidance_scale,
                   "forecast_form": "taylor"}
    record = HeldOutRecord(record_path(checkpoint), fingerprint)
    if record.resumed and progress and world().main:
        print(f"resuming selection and refinement: {record.resumed} held-out values from {record.path}")
    return record


def alternatives(sampler, result: SearchResult, config: PruneConfig, blocks) -> tuple[SearchResult, ...]:
    """The same model in its other units, whose simple starts selection measures too: on a transformer whose
    units the user left to dipgo, the attention and feed-forward modules (the units FORA and TaylorSeer cache,
    with the block's norms and modulation run fresh) beside whole blocks (block residuals, as first-block
    caching keeps). On a UNet the default units stand alone."""
    if blocks is not None or "granularity" in config.search or is_unet(sampler.denoiser):
        return ()
    other = "fine" if result.config.granularity == "coarse" else "coarse"
    alt = Search(sampler, replace(result.config, granularity=other, iterations=0, references=0)).result()
    return () if alt.graph.names == result.graph.names else (alt,)


def _select_and_refine(sampler, result: SearchResult, ratio: float, config: PruneConfig, full: torch.Tensor,
                       progress: bool, record: HeldOutRecord, others: tuple[SearchResult, ...] = ()) -> Pruned:
    rc = config.refine_config()
    scorer = Scorer(sampler, result, rc.n, rc.evaluations, progress, desc=f"2/3 select + refine ({ratio:g})",
                    full=full, record=record)
    done = refine(sampler, result, ratio, config=rc, progress=progress, scorer=scorer,
                  simple_only=not result.config.iterations, alternatives=others)
    return Pruned(done.schedule, done.psnr, done.starts, done.start, None)


def prune_schedules(target, config: PruneConfig, *, denoiser=None, blocks: list[str] | None = None,
                    calibration=None, call_kwargs: dict | None = None, checkpoint=None,
                    progress: bool = True) -> list[Pruned]:
    """Run the pipeline (see the module docstring); one :class:`Pruned` per ratio of ``config``."""
    sampler = make_sampler(target, config, denoiser=denoiser, calibration=calibration, call_kwargs=call_kwargs)
    w, seconds = world(), {}
    t0 = time.perf_counter()
    n = config.refine_config().n
    full = w.on_main(lambda: held_out_images(sampler, n))
    w.on_main(lambda: check_seeded(sampler, full, n))  # before the search: a failure costs seconds, not minutes
    search = Search(sampler, config.search_config(), checkpoint_path=checkpoint, blocks=blocks)
    if search.iteration and progress:
        print(f"resuming the search from {checkpoint} at iteration {search.iteration}/{search.cfg.iterations}")
    if search.cfg.iterations:
        result = search.run(progress=progress, desc="1/3 search")
    else:
        if progress and w.main:
            print(f"1/3 search: off at effort {config.effort} (iterations=N turns it on); selection starts from "
                  "the simple schedules")
        result = search.result()
    others = alternatives(sampler, result, config, blocks) if w.main else ()  # selection runs on rank 0
    seconds["search"] = time.perf_counter() - t0
    record = _record_of(checkpoint, result, config, progress) if w.main else None
    out = []
    for ratio in config.ratios:
        t1 = time.perf_counter()
        pruned = w.on_main(lambda r=ratio: _select_and_refine(sampler, result, r, config, full, progress, record,
                                                                    others))
        seconds["select_refine"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        if progress and w.main:
            print("3/3 compare: the simple schedule of the same MACs on the held-out images")
        pruned.comparison = w.on_main(lambda p=pruned: compare(sampler, result, p.schedule, full))
        seconds["compare"] = time.perf_counter() - t2
        _record(pruned, config, result, dict(seconds))
        out.append(pruned)
    return out


def _record(pruned: Pruned, config: PruneConfig, result: SearchResult, seconds: dict) -> None:
    """The pipeline's story in the schedule's metadata (replacing refinement's own record)."""
    s, c = pruned.schedule, pruned.comparison
    refine_meta = s.meta.pop("refine", {})
    rc = result.config
    s.meta["search"] = {"iterations": rc.iterations, "seconds": round(result.seconds, 1), "target_ratio": rc.ratio,
                        "loss": rc.loss, "init": rc.init, "batch": rc.batch}
    s.meta.update(method="dipgo", guidance_scale=config.guidance_scale, calibration=result.meta.get("calibration"),
                  pipeline={"effort": config.effort, "search": asdict(result.config) | {"ratios": result.config.ratios},
                            "held_out": {"n": refine_meta.get("n"), "seed": HELD_OUT_SEED},
                            "candidates": {k: round(v, 3) for k, v in pruned.candidates.items()},
                            "winner": pruned.winner, "psnr": round(pruned.psnr, 3),
                            "evaluations": refine_meta.get("evaluations"),
                            "compared": None if c is None else {"label": c.label, "macs_speedup": round(c.speedup, 4),
                                                                "psnr": round(c.psnr, 3)},
                            "seconds": {k: round(v, 1) for k, v in seconds.items()}})
