"""``dipgo bench`` / ``make bench``: every method at every budget, from more than one base, one harness.

For each model and base step count (DDIM): the full model once, then for each MACs budget (2x, 3x,
4.4x fewer by default) each method configured to land as close to the budget as it can:

* **dipgo** — the schedule ``dipgo prune --ratio 1-1/budget --effort E`` writes: the same pruning
  pipeline users run (:mod:`dipgo.cache.pipeline`), kept under ``OUT/schedules`` and reused
  (see :func:`dipgo_for_budget`);
* **fewer steps** — ``round(base / budget)`` steps of the same scheduler;
* **DeepCache** (uniform) and **DeepCache non-uniform** — the interval whose MACs are closest to the
  budget, skip branch 0 (on transformers: FORA-style, every block reused between full calls);
* **FBCache** — the first-block-cache threshold bisected on a calibration batch (other seeds) to the
  budget; its MACs in the table are those measured on the evaluation run.

All points are measured with :class:`~dipgo.evaluation.Evaluator` on the same seeds. Writes
``bench.json`` (every record + the machine), ``bench.md`` (tables + the target check) and
``bench.png`` (quality against measured wall-clock speedup, one line per method).
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import zoo
from ..cache.pipeline import EFFORTS, PruneConfig, prune_schedules, remove_checkpoints
from ..cache.schedule import Schedule
from ..dist import world
from ..errors import DipgoError
from ..malloc import malloc_settings
from ..models.costs import count_params
from ..models.pipelines import SCHEDULERS, default_calibration, denoiser_of, parse_dtype, set_scheduler
from .baselines import Applied, AppliedSchedule, DeepCache, FewerSteps, FirstBlockCache, Full, fine_profile
from .bench_report import (  # noqa: F401  (the reports' names, importable from here as before)
    FAMILIES,
    at_macs,
    floor_table,
    markdown,
    ntire_section,
    pareto_plot,
    scheduler_label,
    scheduler_tag,
    target_check,
    write_reports,
)
from .budget_fit import CACHE_FAMILIES, fit_cache
from .evaluation import Evaluator, Judge, compare

# The dipgo families: the pruning pipeline as users run it, and with reused blocks never forecast.
DIPGO_FAMILIES = {"dipgo": None, "dipgo reuse": 0}


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: zoo.zoo_names())
    bases: list[int] = field(default_factory=lambda: [50, 20])
    budgets: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.4])
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    n: int = 256
    batch: int = 32
    seed: int = 0
    out: str = "out/bench"
    schedules: str | None = None  # where each dipgo point's schedule is kept and reused (default OUT/schedules)
    tag: str = "bench"
    search_only: bool = False  # run the missing dipgo prunes and stop (they can run in parallel processes)
    effort: str = "default"    # dipgo points: the pruning pipeline's effort, exactly as `dipgo prune --effort`
    bracket: bool = True       # measure the baseline settings that bracket each dipgo point's MACs (target check)
    floor_psnr: float = 30.0   # the NTIRE-style ranking's quality floor: PSNR vs the full model (dB) ...
    floor_fid: float = 0.10    # ... and FID at most this much worse than the full model's (relative)
    scheduler: str = "ddim"    # ddim, pndm (PLMS), dpm++, euler
    device: str | None = None  # cpu (default), cuda, cuda:1, ...
    dtype: str = "fp32"        # fp32, fp16 or bf16

    def __post_init__(self):
        for m in self.models:
            zoo.resolve(m)  # a zoo name, a diffusers folder or a hub id; the error says which it is not
        bad = [b for b in self.budgets if b <= 1]
        if bad:
            raise DipgoError(f"budgets are MACs reduction factors > 1 (e.g. 2, 3, 4.4), got {bad}")
        fam = [f for f in self.families if f not in FAMILIES]
        if fam:
            raise DipgoError(f"unknown method families {fam}; choose from {FAMILIES}")
        if any(b < 2 for b in self.bases):
            raise DipgoError(f"base step counts must be >= 2, got {self.bases}")
        parse_dtype(self.dtype)
        if self.effort not in EFFORTS:
            raise DipgoError(f"unknown effort {self.effort!r}; choose one of {', '.join(EFFORTS)}")
        if self.schedules is None:
            self.schedules = str(Path(self.out) / "schedules")
        if self.scheduler not in SCHEDULERS:
            raise DipgoError(f"unknown scheduler {self.scheduler!r}; choose one of {sorted(SCHEDULERS)}")

    @classmethod
    def quick(cls, **kw) -> BenchConfig:
        """A few minutes: the UNet, the 20-step base, two budgets, 32 images."""
        base = {"models": zoo.zoo_names(quick=True), "bases": [20], "budgets": [2.0, 4.4], "n": 32, "batch": 16,
                "tag": "bench-quick"}
        base.update(kw)
        return cls(**base)


def _closest(candidates: list, budget: float, speedup) -> object:
    return min(candidates, key=lambda c: abs(math.log(speedup(c) / budget)))


def deepcache_for_budget(pipe, steps: int, guidance: float, budget: float, mode: str):
    """The DeepCache interval (branch 0) whose schedule's MACs speedup is closest to ``budget``."""
    profile = fine_profile(pipe)  # once, not once per interval
    options = [DeepCache(n, 0, mode).bind(pipe, steps, guidance, profile) for n in range(2, steps + 1)]
    return _closest(options, budget, lambda a: a.schedule.macs_full / a.schedule.macs)


def _options(family: str, pipe, steps: int, guidance: float, profile=None) -> list[tuple[float, Applied]]:
    """Every setting of a static baseline family with its MACs speedup over the full ``steps``-step run."""
    if family == "fewer steps":
        return [(steps / k, FewerSteps(k).bind(pipe, steps, guidance)) for k in range(1, steps)]
    mode = "uniform" if family == "DeepCache" else "nonuniform"
    profile = profile or fine_profile(pipe)
    out = []
    for n in range(2, steps + 1):
        a = DeepCache(n, 0, mode).bind(pipe, steps, guidance, profile)
        out.append((a.schedule.macs_full / a.schedule.macs, a))
    return out


def bracket_points(pipe, steps: int, guidance: float, records: list[dict],
                   families: tuple[str, ...] = ("fewer steps", "DeepCache")) -> list[tuple[str, float, Applied]]:
    """The baseline settings still to measure so that each baseline's curve brackets every dipgo point of
    ``records`` (one model and base): for a dipgo point beyond a family's measured MACs range, that family's
    nearest setting on the far side. Comparing with the nearest measured point instead would judge dipgo
    against a baseline spending other MACs. Returns ``(family, budget, applied)``; settings already measured,
    or with nothing beyond (DeepCache below N=2), give nothing."""
    todo: list[tuple[str, float, Applied]] = []
    profile = None
    for family in families:
        measured = [r["macs_speedup"] for r in records if r["family"] == family]
        if not measured:
            continue
        if family != "fewer steps" and profile is None:
            profile = fine_profile(pipe)
        options = None
        for d in sorted((r for r in records if r["family"] == "dipgo"), key=lambda r: r["macs_speedup"]):
            x = d["macs_speedup"]
            if min(measured) <= x <= max(measured):
                continue
            options = options or _options(family, pipe, steps, guidance, profile)
            side = [o for o in options if (o[0] >= x if x > max(measured) else o[0] <= x)]
            if not side:
                continue
            speedup, applied = min(side, key=lambda o: abs(math.log(o[0] / x)))
            if any(abs(math.log(speedup / m)) < 1e-6 for m in measured):
                continue
            measured.append(speedup)
            todo.append((family, d["budget"], applied))
    return todo


def fbcache_for_budget(ev: Evaluator, pipe, steps: int, budget: float, calib: int = 8, iters: int = 7):
    """Bisect the FBCache threshold (log scale) so that a calibration batch lands at ``budget``."""
    full_macs = ev.full_macs(steps)
    lo, hi, best = -3.0, 1.0, None
    for _ in range(iters):
        mid = (lo + hi) / 2
        method = FirstBlockCache(round(10 ** mid, 5))
        run = ev.run(method.bind(pipe, steps, ev.guidance), progress=False, n=calib, seed=10_000)
        s = full_macs / run.macs
        if best is None or abs(math.log(s / budget)) < abs(math.log(best[1] / budget)):
            best = (method, s)
        if s < budget:
            lo = mid
        else:
            hi = mid
    return best[0]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "processes": world().size,
            "torch": torch.__version__, "malloc": malloc_settings(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict:
    records: list[dict] = []
    searches: dict = {}
    params: dict = {}
    not_applicable: dict = {}  # model -> family -> why it does not apply
    t_start = time.perf_counter()
    for model in cfg.models:
        pipe, source = zoo.load(model, cfg.dtype, cfg.device)
        set_scheduler(pipe, cfg.scheduler)
        guidance = source.guidance_scale
        calibration = default_calibration(pipe, defaults=source.defaults)
        params[model] = count_params(denoiser_of(pipe))
        ev = Evaluator(pipe, cfg.n, cfg.seed, guidance, cfg.batch, calibration, Judge.from_source(source))
        memo: dict = {}  # measured cache settings, shared by the budgets
        try:
            for base in cfg.bases:
                if not cfg.search_only:
                    full = ev.run(Full().bind(pipe, base, guidance), progress)
                    q_full = ev.quality(full, None, progress)
                    rec = compare(ev, full, full, dict(q_full, psnr_vs_full=100.0, ssim_vs_full=1.0), q_full)
                    records.append(dict(rec, model=model, base=base, family="full", budget=1.0))
                for budget in cfg.budgets:
                    schedules = _dipgo_points(pipe, model, base, guidance, budget, cfg, calibration, progress,
                                              searches)
                    if cfg.search_only:
                        continue
                    for family in cfg.families:
                        applied = _method(family, pipe, ev, base, guidance, budget, schedules.get(family), memo)
                        if isinstance(applied, str):
                            not_applicable.setdefault(model, {})[family] = applied
                        if applied is None or isinstance(applied, str):
                            continue
                        run = ev.run(applied, progress)
                        q = ev.quality(run, full, progress)
                        rec = compare(ev, run, full, q, q_full)
                        records.append(dict(rec, model=model, base=base, family=family, budget=budget))
                        if progress:
                            _say(model, cfg.scheduler, base, budget, run.label, rec)
                if cfg.bracket and not cfg.search_only:
                    todo = bracket_points(pipe, base, guidance, [r for r in records if r["model"] == model
                                                                 and r["base"] == base])
                    records += measure_brackets(ev, todo, model, base, full, q_full, cfg.scheduler, progress)
        finally:
            ev.close()
    return {"config": asdict(cfg), "machine": machine(), "seconds": time.perf_counter() - t_start,
            "searches": searches, "params": params, "records": records, "not_applicable": not_applicable}


def measure_brackets(ev: Evaluator, todo: list[tuple[str, float, Applied]], model: str, base: int, full, q_full: dict,
              scheduler: str, progress: bool) -> list[dict]:
    """Measure the settings :func:`bracket_points` chose for one model and base; returns their records."""
    out = []
    for family, budget, applied in todo:
        run = ev.run(applied, progress)
        rec = compare(ev, run, full, ev.quality(run, full, progress), q_full)
        out.append(dict(rec, model=model, base=base, family=family, budget=budget, bracket=True))
        if progress:
            _say(model, scheduler, base, budget, run.label + " (bracket)", rec)
    return out


def _say(model: str, scheduler: str, base: int, budget: float, label: str, rec: dict) -> None:
    print(f"{model} {scheduler_label(scheduler)}-{base} {budget:g}x {label}: MACs {rec['macs_speedup']:.2f}x, "
          f"wall {rec['wall_speedup']:.2f}x, FID {rec['fid']:.2f}, PSNR {rec['psnr_vs_full']:.2f}", flush=True)


def dipgo_for_budget(pipe, model: str, base: int, guidance: float, budget: float, cfg: BenchConfig, calibration,
                     progress: bool = True, forecast: int | None = None) -> Schedule | None:
    """The dipgo point of one budget: the pruning pipeline users run (``dipgo prune --effort``, with
    ``--forecast`` when ``forecast`` is set), at ratio ``1 - 1/budget``; its schedule is kept under
    ``cfg.schedules`` and reused. None if out of reach."""
    directory = Path(cfg.schedules)
    tag = "" if forecast is None else f"-order{forecast}"
    path = directory / f"{model}-{scheduler_tag(cfg.scheduler)}{base}-x{budget:g}-{cfg.effort}{tag}.json"
    if path.exists():
        return Schedule.load(path)
    directory.mkdir(parents=True, exist_ok=True)
    config = PruneConfig(ratio=round(1 - 1 / budget, 4), num_inference_steps=base, guidance_scale=guidance,
                         effort=cfg.effort, forecast=forecast)
    ckpt = path.with_name(path.name + ".search.pt")
    try:
        pruned = prune_schedules(pipe, config, calibration=calibration, checkpoint=ckpt, progress=progress)[0]
    except DipgoError as err:
        if "out of reach" not in str(err):
            raise
        return None  # the table shows no point
    if world().main:
        pruned.schedule.save(path)
        remove_checkpoints(ckpt)
    world().barrier()
    if progress:
        print(f"{model} {scheduler_label(cfg.scheduler)}-{base} {budget:g}x held out: {pruned.line()}", flush=True)
    return pruned.schedule


def _dipgo_points(pipe, model: str, base: int, guidance: float, budget: float, cfg: BenchConfig, calibration,
                  progress: bool, searches: dict) -> dict[str, Schedule | None]:
    """Each dipgo family's schedule at one budget; what its pipeline chose goes into ``searches``."""
    out = {}
    for family, forecast in DIPGO_FAMILIES.items():
        if family not in cfg.families:
            continue
        out[family] = dipgo_for_budget(pipe, model, base, guidance, budget, cfg, calibration, progress, forecast)
        if out[family] is not None:
            key = f"{model}-{scheduler_tag(cfg.scheduler)}{base}-x{budget:g}"
            searches[key if family == "dipgo" else f"{key} ({family})"] = out[family].meta["pipeline"]
    return out


def _method(family: str, pipe, ev: Evaluator, base: int, guidance: float, budget: float,
            schedule: Schedule | None = None, memo: dict | None = None):
    """The method of ``family`` closest to ``budget``; None for no point, or a string saying why the
    family does not apply to this model."""
    if family in CACHE_FAMILIES:
        applied, reason = fit_cache(family, ev, pipe, base, budget, {} if memo is None else memo)
        return applied if applied is not None else reason
    if family in DIPGO_FAMILIES:
        if schedule is None:
            return None
        won = schedule.meta.get("pipeline", {}).get("winner")
        tag = f" (from {'the search' if won == 'search' else won})" if won else ""
        return AppliedSchedule(pipe, schedule, f"{family} {schedule.macs_full / schedule.macs:.2f}x{tag}")
    if family == "fewer steps":
        return FewerSteps(max(1, round(base / budget))).bind(pipe, base, guidance)
    if family in ("DeepCache", "DeepCache non-uniform"):
        mode = "uniform" if family == "DeepCache" else "nonuniform"
        return deepcache_for_budget(pipe, base, guidance, budget, mode)
    if family == "FBCache":
        return fbcache_for_budget(ev, pipe, base, budget).bind(pipe, base, guidance)
    raise DipgoError(f"unknown family {family!r}")


# ------------------------------------------------------------------------------------------ reports
