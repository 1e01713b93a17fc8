"""Refine a schedule by local search on held-out generations, at a fixed MACs budget.

The gradient search ends in a good region but not always at a point better than the simple schedules
the same space contains: evenly spread full calls (fewer steps on a UNet), full calls every N (DeepCache,
FORA) and a few full first calls before that (TaylorSeer's warm-up). This step starts from the best of the
searched schedule and the simple schedules next to the budget,
*repairs* each to the budget (greedily drops the gate whose loss hurts the held-out images least) or spends
the slack it leaves (greedily adds the gate that helps most), then
climbs: it proposes moves (a call's computed blocks shifted to the next or previous call; one computed and
one reused (call, block) pair swapped, mostly between neighbouring calls) and keeps a move when the
held-out PSNR against the full model rises. Shifts are swept exhaustively first (best improvement,
until none helps), then random moves spend what is left. On a transformer, the simple starts are also measured
in its other units (``alternatives``: attention and feed-forward modules beside whole blocks).

Everything is measured on ``n`` held-out generations (seeds from :data:`HELD_OUT_SEED`, never the
seeds benchmarks evaluate on), so the gain it reports is a held-out gain; the benchmark's own seeds then
say whether it generalises. Each proposal costs one sampling run of ``n`` images at the budget.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import DipgoError
from ..models.adapters import effective_keep
from ..models.calibration import Calibration
from ..models.checks import check_at_least
from .driver import PipelineSampler
from .heldout import HELD_OUT_SEED, HeldOutRecord, held_out_images, held_out_psnr
from .postprocess import pruned_ratio, schedule_at_ratio, schedule_from_mask
from .schedule import FORECAST_ORDERS, Schedule
from .search import uniform_mask


@dataclass
class RefineConfig:
    """``evaluations``: sampling runs the climb may spend (repairs included); ``n``: held-out images per run;
    ``tol``: how far below ``ratio`` the pruned MACs share may land (the post-processing's window)."""

    evaluations: int = 400
    n: int = 16
    tol: float = 0.0125
    repair_candidates: int = 16
    shift_share: float = 0.3
    neighbour_share: float = 0.4
    seed: int = 0
    orders: tuple[int, ...] = (0, 1, 2)  # forecast orders each start is measured at (see hooks.forecast)

    def __post_init__(self):
        check_at_least(self.evaluations, 0, "evaluations")
        check_at_least(self.n, 1, "n (held-out images)")
        if not self.orders or any(o not in FORECAST_ORDERS for o in self.orders):
            raise DipgoError(f"orders must be a non-empty tuple of forecast orders from {FORECAST_ORDERS}, "
                             f"got {self.orders!r}")
        if min(self.shift_share, self.neighbour_share) < 0 or self.shift_share + self.neighbour_share > 1:
            raise DipgoError("shift_share and neighbour_share must be >= 0 and sum to at most 1, got "
                             f"{self.shift_share} and {self.neighbour_share}")


@dataclass
class Refined:
    schedule: Schedule
    start: str                      # which start won: "search" or "uniform k/T"
    psnr: float                     # held-out PSNR of the result
    starts: dict[str, float]        # held-out PSNR of every start after its repair
    history: list[float] = field(default_factory=list)  # best held-out PSNR after each evaluation
    evaluations: int = 0


class Scorer:
    """Held-out PSNR of a mask: one sampling run of ``n`` images with the mask's schedule applied."""

    def __init__(self, sampler, result, n: int, budget: int, progress: bool, desc: str = "refining",
                 full: torch.Tensor | None = None, record: HeldOutRecord | None = None):
        self.sampler, self.result = sampler, result
        self.record = record or HeldOutRecord(None, {})  # a mask measured once is not sampled again
        self.steps = result.config.num_inference_steps
        self.n, self.evaluations, self.budget = n, 0, budget
        self.order = 0  # the forecast order the schedules it scores use
        self.primary = result
        self.bar = tqdm(total=budget, desc=desc, disable=not progress, dynamic_ncols=True)
        self.full = held_out_images(sampler, n) if full is None else full

    def schedule(self, mask: torch.Tensor, meta: dict | None = None) -> Schedule:
        r, m = self.result, self.result.meta
        return schedule_from_mask(mask, r.graph, r.profile, model_class=m["model_class"], config_hash=m["config_hash"],
                                  scheduler=m["scheduler"], num_inference_steps=self.steps, cfg=m.get("cfg", 1),
                                  meta=meta, forecast_order=self.order)

    def use(self, result) -> None:
        """Score masks in ``result``'s units (another granularity of the same model) from now on."""
        self.result = result

    @property
    def left(self) -> int:
        return self.budget - self.evaluations

    def __call__(self, mask: torch.Tensor) -> float:
        self.evaluations += 1
        if self.evaluations > self.bar.total:  # every start is measured once, even past the budget
            self.bar.total = self.evaluations
        self.bar.update(1)
        key = HeldOutRecord.key(self.order, mask)
        if self.result is not self.primary:  # the same bits mean other units
            key = f"{self.result.config.granularity}:{key}"
        value = self.record.get(key)
        if value is None:
            value = held_out_psnr(self.sampler, self.schedule(mask), self.full)
            self.record.put(key, value)
        return value


def _cascade(keep: torch.Tensor, graph) -> torch.Tensor:
    keep = keep.clone()
    keep[0] = 1.0
    return effective_keep(keep, graph)


def _repair(mask: torch.Tensor, ratio: float, score: Callable, cfg: RefineConfig, result,
            rng: random.Random) -> torch.Tensor:
    """Drop computed gates (call >= 1) until the pruned share reaches ``ratio - tol``; each time the one
    (of ``repair_candidates`` drawn) whose loss costs the least held-out PSNR."""
    while pruned_ratio(mask, result.profile) < ratio - cfg.tol:
        on = [(i, j) for i, j in (mask[1:] > 0.5).nonzero().tolist()]
        if not on:
            raise DipgoError(f"cannot reach ratio {ratio}: nothing left to skip")
        cands = rng.sample(on, min(cfg.repair_candidates, len(on)))
        if score.left < len(cands):  # out of evaluations: drop one of them unmeasured
            i, j = cands[0]
            keep = mask.clone()
            keep[i + 1, j] = 0
            mask = _cascade(keep, result.graph)
            continue
        best = None
        for i, j in cands:
            keep = mask.clone()
            keep[i + 1, j] = 0
            trial = _cascade(keep, result.graph)
            value = score(trial)
            if best is None or value > best[0]:
                best = (value, trial)
        mask = best[1]
    return mask


def _grow(mask: torch.Tensor, value: float, ratio: float, score: Callable, cfg: RefineConfig, result,
          rng: random.Random) -> tuple[torch.Tensor, float]:
    """Spend the slack a start leaves under the budget: add the reused gate (of ``repair_candidates`` drawn)
    that helps the held-out images most, while one more still fits and helps."""
    while score.left >= cfg.repair_candidates:
        off = [(i, j) for i, j in (mask[1:] < 0.5).nonzero().tolist()]
        trials = []
        for i, j in rng.sample(off, min(cfg.repair_candidates, len(off))):
            keep = mask.clone()
            keep[i + 1, j] = 1
            trial = _cascade(keep, result.graph)
            if pruned_ratio(trial, result.profile) >= ratio - cfg.tol:
                trials.append(trial)
        if not trials:
            break
        best = max(((score(t), t) for t in trials), key=lambda x: x[0])
        if best[0] <= value:
            break
        value, mask = best
    return mask, value


def _shift_call(mask: torch.Tensor, i: int, k: int) -> torch.Tensor:
    """``mask`` with calls ``i`` and ``k`` exchanged: what call i computed moves to call k."""
    keep = mask.clone()
    keep[i], keep[k] = mask[k], mask[i]
    return keep


def _propose(mask: torch.Tensor, cfg: RefineConfig, rng: random.Random) -> torch.Tensor | None:
    """Swap one computed and one reused gate (never call 0): mostly the same block in a neighbouring call."""
    calls, blocks = mask.shape
    on = [(i, j) for i, j in (mask > 0.5).nonzero().tolist() if i > 0]
    off = [(i, j) for i, j in (mask < 0.5).nonzero().tolist()]
    if not on or not off:
        return None
    u = rng.random()
    if u < cfg.shift_share:  # move everything one call computes to a neighbouring call (cheap calls stay cheap)
        i = rng.choice(sorted({c for c, _ in on}))
        k = i + rng.choice((-2, -1, 1, 2))
        return _shift_call(mask, i, k) if 1 <= k < calls else None
    if u < cfg.shift_share + cfg.neighbour_share:
        i, j = rng.choice(on)
        near = [(i + d, j) for d in (-2, -1, 1, 2) if 1 <= i + d < calls and mask[i + d, j] < 0.5]
        if not near:
            return None
        a, b = rng.choice(near)
    else:
        (i, j), (a, b) = rng.choice(on), rng.choice(off)
    keep = mask.clone()
    keep[i, j], keep[a, b] = 0.0, 1.0
    return keep


def interval_mask(calls: int, blocks: int, interval: int, warmup: int = 0) -> torch.Tensor:
    """Full calls at the first ``warmup`` calls, then every ``interval`` calls, reusing in between: DeepCache's and
    FORA's spacing (``warmup=0``) or TaylorSeer's (full first steps, while the features still change fast). Unlike
    :func:`uniform_mask` it leaves the last calls reusing."""
    mask = torch.zeros(calls, blocks)
    mask[:warmup] = 1
    mask[warmup::interval] = 1
    return mask


WARMUPS = (3, 2, 1)  # full first calls of the warm-up spacing: TaylorSeer's default, or fewer where 3 leave no budget


def _coarsest(masks: dict[str, torch.Tensor], graph, profile, floor: float) -> dict[str, torch.Tensor]:
    """Of ``masks`` (ordered from most pruned to least), the last that reaches the pruned share ``floor`` and
    the next finer one (which the repair then trims to the budget); none if none reaches it."""
    masks = {k: _cascade(m, graph) for k, m in masks.items()}
    names = list(masks)
    fit = [i for i, k in enumerate(names) if pruned_ratio(masks[k], profile) >= floor]
    if not fit:
        return {}
    return {names[i]: masks[names[i]] for i in sorted({fit[-1], min(len(names) - 1, fit[-1] + 1)})}


def _simple_starts(calls: int, blocks: int, graph, profile, floor: float) -> dict[str, torch.Tensor]:
    """For each spacing (evenly spread, every N, warm-up then every N), the two schedules of :func:`_coarsest`."""
    out = {}
    families = {"uniform": {f"{k}/{calls}": uniform_mask(calls, blocks, 1 - k / calls) for k in range(1, calls + 1)},
                "every": {f"{n}": interval_mask(calls, blocks, n) for n in range(calls, 0, -1)}}
    for w in WARMUPS:  # the longest warm-up that leaves room for the budget
        warm = {f"{n}": interval_mask(calls, blocks, n, w) for n in range(calls, 0, -1)}
        if _coarsest(warm, graph, profile, floor):
            families[f"warm-up {w}, every"] = warm
            break
    for family, masks in families.items():
        out.update({f"{family} {k}": m for k, m in _coarsest(masks, graph, profile, floor).items()})
    return out


Candidates = dict[tuple[str, int], tuple[torch.Tensor, float]]  # (start, order) -> (mask, held-out PSNR)


def _measure_starts(starts: dict[str, torch.Tensor], fits, ratio: float, score: Scorer, cfg: RefineConfig,
                    result) -> Candidates:
    """Every (start, forecast order) candidate with its held-out PSNR. Each start is repaired to the budget and
    its slack spent (:func:`_grow`) at the first order; at the other orders the better of the grown and the
    ungrown mask is kept, because a gate that helps a reused block can hurt a forecast one (an extra computed
    value between evenly spaced ones shortens the differences a forecast extrapolates). Each start draws from
    its own random stream, in the order given, so a start measured last (the search's) cannot change how the
    ones before it are repaired."""
    out: Candidates = {}
    first, *others = cfg.orders
    for name, mask in starts.items():
        rng = random.Random(f"{cfg.seed}/{name}")
        score.order = first
        if not fits(mask):
            mask = _repair(mask, ratio, score, cfg, result, rng)
        value = score(mask)
        grown, value = _grow(mask, value, ratio, score, cfg, result, rng)
        out[name, first] = (grown, value)
        for order in others:
            score.order = order
            tried = [(score(grown), grown)]
            if score.left > 0 and not torch.equal(grown, mask):
                tried.append((score(mask), mask))
            value, best = max(tried, key=lambda t: t[0])
            out[name, order] = (best, value)
    return out


def _measure_alternative(alt, ratio: float, score: Scorer, cfg: RefineConfig) -> Candidates:
    """The simple starts in another granularity's units (``alt``, a result of the same model) that fit the
    budget as they are, at every order: each costs one held-out run per order, with no repair or growth."""
    def fits(mask):
        return pruned_ratio(mask, alt.profile) >= ratio - cfg.tol

    out: Candidates = {}
    score.use(alt)
    starts = _simple_starts(*alt.scores.shape, alt.graph, alt.profile, ratio - cfg.tol)
    for name, mask in starts.items():
        if fits(mask):
            for order in cfg.orders:
                score.order = order
                out[alternative_name(name, alt), order] = (mask, score(mask))
    score.use(score.primary)
    return out


def alternative_name(name: str, alt) -> str:
    """How a start in another granularity's units is named: ``every 2 (fine units)``."""
    return f"{name} ({alt.config.granularity} units)"


def _best_candidate(candidates: Candidates, ratio: float, score: Scorer, cfg: RefineConfig, result,
                    owners: dict | None = None) -> tuple[str, torch.Tensor, float]:
    """The (start, order) pair with the highest held-out PSNR (a tie goes to the search, then the lower order),
    its slack spent again at its own order (or for the first time, for a start in ``owners``: start name ->
    the result in whose units it is); sets ``score.order`` to that order and ``score.result`` to its units."""
    name, score.order = max(candidates, key=lambda k: (candidates[k][1], k[0] == "search", -k[1]))
    mask, value = candidates[name, score.order]
    owner = (owners or {}).get(name, result)
    if owner is not result:
        score.use(owner)
    if score.order != cfg.orders[0] or owner is not result:
        mask, value = _grow(mask, value, ratio, score, cfg, owner, random.Random(f"{cfg.seed}/{name}/grow"))
    return name, mask, value


def start_label(name: str, order: int) -> str:
    """How a (start, forecast order) candidate is named in reports: ``uniform 7/20`` or ``search, order 1``."""
    return name if order == 0 else f"{name}, order {order}"


def _sweep(best: torch.Tensor, value: float, fits, score: Scorer, graph,
           history: list[float]) -> tuple[torch.Tensor, float]:
    """Every shift of a call's computed blocks by 1 or 2 calls, the best one taken, until none helps: the
    search's luck matters less than with random proposals alone."""
    calls = best.shape[0]
    while score.left > 0:
        trials = []
        for i in sorted({c for c, _ in (best[1:] > 0.5).nonzero().tolist()}):
            for k in (i + 1 + d for d in (-2, -1, 1, 2)):
                if 1 <= k < calls:
                    trial = _cascade(_shift_call(best, i + 1, k), graph)
                    if not torch.equal(trial, best) and fits(trial):
                        trials.append(trial)
        scored, running = [], value
        for trial in trials:
            if score.left <= 0:
                break
            scored.append((score(trial), trial))
            running = max(running, scored[-1][0])
            history.append(running)
        top = max(scored, key=lambda x: x[0], default=None)
        if top is None or top[0] <= value + 1e-3:
            break
        value, best = top
    return best, value


def _climb(best: torch.Tensor, value: float, fits, score: Scorer, cfg: RefineConfig, graph, rng: random.Random,
           history: list[float]) -> tuple[torch.Tensor, float]:
    """Random moves (:func:`_propose`), each kept when the held-out PSNR rises, until the budget is spent."""
    tries = 0
    while score.left > 0 and tries < 50 * max(1, cfg.evaluations):
        tries += 1
        keep = _propose(best, cfg, rng)
        if keep is None:
            continue
        trial = _cascade(keep, graph)
        if torch.equal(trial, best) or not fits(trial):
            continue
        trial_value = score(trial)
        if trial_value > value + 1e-3:
            best, value = trial, trial_value
        history.append(value)
    return best, value


def refine(target, result, ratio: float, calibration: Calibration | None = None, config: RefineConfig | None = None,
           guidance_scale: float | None = None, progress: bool = True, scorer: Scorer | None = None,
           simple_only: bool = False, alternatives: Sequence = ()) -> Refined:
    """The best schedule found at pruned MACs share >= ``ratio - tol``, by held-out PSNR; see the module
    docstring. ``target`` is a pipeline (run with ``calibration`` and ``guidance_scale``) or a sampler of
    :mod:`dipgo.cache.driver`; ``result`` is a :class:`~dipgo.cache.search.SearchResult` of it.
    ``simple_only`` leaves the searched schedule out of the starts (to measure what the search adds).
    ``alternatives``: results of the same model in other units (granularities) whose simple starts that fit
    the budget are measured too (:func:`_measure_alternative`); the schedule is in the winner's units."""
    cfg = config or RefineConfig()
    if not 0.0 < ratio < 1.0:
        raise DipgoError(f"ratio must be in (0, 1), got {ratio}")
    rng = random.Random(cfg.seed)
    graph, profile = result.graph, result.profile

    def fits(mask: torch.Tensor) -> bool:
        return pruned_ratio(mask, profile) >= ratio - cfg.tol

    sampler = target if hasattr(target, "profile_call") else PipelineSampler(
        target, calibration, result.config.num_inference_steps, guidance_scale)
    score = scorer or Scorer(sampler, result, cfg.n, cfg.evaluations, progress)
    try:
        starts = _simple_starts(*result.scores.shape, graph, profile, ratio - cfg.tol)
        if not simple_only:  # measured last: the simple starts come out the same with or without it
            starts["search"] = schedule_at_ratio(result, ratio, cfg.tol).mask()
        candidates = _measure_starts(starts, fits, ratio, score, cfg, result)
        owners = {}
        for alt in alternatives:
            extra = _measure_alternative(alt, ratio, score, cfg)
            owners.update({name: alt for name, _ in extra})
            candidates.update(extra)
        start, best, value = _best_candidate(candidates, ratio, score, cfg, result, owners)
        graph, profile = score.result.graph, score.result.profile  # fits() reads profile: the winner's units
        history = [value]
        best, value = _sweep(best, value, fits, score, graph, history)
        best, value = _climb(best, value, fits, score, cfg, graph, rng, history)
    finally:
        score.bar.close()
    labels = {start_label(*k): v for k, (_, v) in candidates.items()}
    won = start_label(start, score.order)
    schedule = score.schedule(best, meta={"method": "dipgo refined", "refine": {
        "start": won, "held_out_psnr": round(value, 3), "starts": {k: round(v, 3) for k, v in labels.items()},
        "evaluations": score.evaluations, "n": cfg.n, "seed": HELD_OUT_SEED}})
    schedule.requested_ratio = ratio
    return Refined(schedule, won, value, labels, history, score.evaluations)
