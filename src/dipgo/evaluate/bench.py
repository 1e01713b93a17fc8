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

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import zoo
from ..cache.pipeline import EFFORTS, PruneConfig, prune_schedules
from ..cache.schedule import Schedule
from ..dist import world
from ..errors import DipgoError
from ..fileio import atomic_path
from ..malloc import malloc_settings
from ..models.costs import count_params
from ..models.pipelines import SCHEDULERS, default_calibration, denoiser_of, parse_dtype, set_scheduler
from .baselines import Applied, AppliedSchedule, DeepCache, FewerSteps, FirstBlockCache, Full, fine_profile
from .evaluation import Evaluator, Judge, compare

FAMILIES = ("dipgo", "fewer steps", "DeepCache", "DeepCache non-uniform", "FBCache")
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
        unknown = [m for m in self.models if m not in zoo.zoo_names()]
        if unknown:
            raise DipgoError(f"unknown model(s) {unknown}; bench runs on the zoo models {zoo.zoo_names()}")
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


def scheduler_tag(scheduler: str) -> str:
    """The scheduler's part of file names and keys: ``ddim``, ``pndm``, ``dpmpp``, ``euler``."""
    return {"plms": "pndm", "dpm": "dpmpp", "dpm++": "dpmpp"}.get(scheduler, scheduler)


def scheduler_label(scheduler: str | None) -> str:
    """How tables name a sampler: DDIM, PLMS, DPM++, Euler."""
    return {"pndm": "PLMS", "dpmpp": "DPM++", "euler": "Euler"}.get(scheduler_tag(scheduler or "ddim"), "DDIM")


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
    t_start = time.perf_counter()
    for model in cfg.models:
        pipe, source = zoo.load(model, cfg.dtype, cfg.device)
        set_scheduler(pipe, cfg.scheduler)
        guidance = source.guidance_scale
        calibration = default_calibration(pipe, defaults=source.defaults)
        params[model] = count_params(denoiser_of(pipe))
        ev = Evaluator(pipe, cfg.n, cfg.seed, guidance, cfg.batch, calibration, Judge.from_source(source))
        try:
            for base in cfg.bases:
                if not cfg.search_only:
                    full = ev.run(Full().bind(pipe, base, guidance), progress)
                    q_full = ev.quality(full, None, progress)
                    rec = compare(ev, full, full, dict(q_full, psnr_vs_full=100.0, ssim_vs_full=1.0), q_full)
                    records.append(dict(rec, model=model, base=base, family="full", budget=1.0))
                for budget in cfg.budgets:
                    schedule = None
                    if "dipgo" in cfg.families:
                        schedule = dipgo_for_budget(pipe, model, base, guidance, budget, cfg, calibration, progress)
                        if schedule is not None:
                            searches[f"{model}-{scheduler_tag(cfg.scheduler)}{base}-x{budget:g}"] = \
                                schedule.meta["pipeline"]
                    if cfg.search_only:
                        continue
                    for family in cfg.families:
                        applied = _method(family, pipe, ev, base, guidance, budget, schedule)
                        if applied is None:
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
                    records += _brackets(ev, todo, model, base, full, q_full, cfg.scheduler, progress)
        finally:
            ev.close()
    return {"config": asdict(cfg), "machine": machine(), "seconds": time.perf_counter() - t_start,
            "searches": searches, "params": params, "records": records}


def _brackets(ev: Evaluator, todo: list[tuple[str, float, Applied]], model: str, base: int, full, q_full: dict,
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


def add_brackets(report: dict, progress: bool = True) -> dict:
    """A finished bench report with its bracketing baseline points measured and added (same images, seeds and
    batch as the report; the full model is re-run for the PSNR reference). For reports made before
    ``BenchConfig.bracket`` existed."""
    cfg = BenchConfig(**{k: v for k, v in report["config"].items() if k in BenchConfig.__dataclass_fields__})
    records = list(report["records"])
    t0 = time.perf_counter()
    for model in dict.fromkeys(r["model"] for r in records):
        pipe, source = zoo.load(model, cfg.dtype, cfg.device)
        set_scheduler(pipe, cfg.scheduler)
        guidance = source.guidance_scale
        ev = Evaluator(pipe, cfg.n, cfg.seed, guidance, cfg.batch, default_calibration(pipe, defaults=source.defaults),
                       Judge.from_source(source))
        try:
            for base in dict.fromkeys(r["base"] for r in records if r["model"] == model):
                todo = bracket_points(pipe, base, guidance, [r for r in records if r["model"] == model
                                                             and r["base"] == base])
                if not todo:
                    continue
                full = ev.run(Full().bind(pipe, base, guidance), progress)
                q_full = ev.quality(full, None, progress)
                records += _brackets(ev, todo, model, base, full, q_full, cfg.scheduler, progress)
        finally:
            ev.close()
    return dict(report, records=records, bracket_seconds=round(time.perf_counter() - t0, 1),
                bracket_machine=machine())


def _say(model: str, scheduler: str, base: int, budget: float, label: str, rec: dict) -> None:
    print(f"{model} {scheduler_label(scheduler)}-{base} {budget:g}x {label}: MACs {rec['macs_speedup']:.2f}x, "
          f"wall {rec['wall_speedup']:.2f}x, FID {rec['fid']:.2f}, PSNR {rec['psnr_vs_full']:.2f}", flush=True)


def dipgo_for_budget(pipe, model: str, base: int, guidance: float, budget: float, cfg: BenchConfig, calibration,
                     progress: bool = True) -> Schedule | None:
    """The dipgo point of one budget: the pruning pipeline users run (``dipgo prune --effort``), at ratio
    ``1 - 1/budget``; its schedule is kept under ``cfg.schedules`` and reused. None if out of reach."""
    directory = Path(cfg.schedules)
    path = directory / f"{model}-{scheduler_tag(cfg.scheduler)}{base}-x{budget:g}-{cfg.effort}.json"
    if path.exists():
        return Schedule.load(path)
    directory.mkdir(parents=True, exist_ok=True)
    config = PruneConfig(ratio=round(1 - 1 / budget, 4), num_inference_steps=base, guidance_scale=guidance,
                         effort=cfg.effort)
    ckpt = path.with_name(path.name + ".search.pt")
    try:
        pruned = prune_schedules(pipe, config, calibration=calibration, checkpoint=ckpt, progress=progress)[0]
    except DipgoError as err:
        if "out of reach" not in str(err):
            raise
        return None  # the table shows no point
    if world().main:
        pruned.schedule.save(path)
        ckpt.unlink(missing_ok=True)
    world().barrier()
    if progress:
        print(f"{model} {scheduler_label(cfg.scheduler)}-{base} {budget:g}x held out: {pruned.line()}", flush=True)
    return pruned.schedule


def _method(family: str, pipe, ev: Evaluator, base: int, guidance: float, budget: float,
            schedule: Schedule | None = None):
    if family == "dipgo":
        if schedule is None:
            return None
        won = schedule.meta.get("pipeline", {}).get("winner")
        tag = f" (from {'the search' if won == 'search' else won})" if won else ""
        return AppliedSchedule(pipe, schedule, f"dipgo {schedule.macs_full / schedule.macs:.2f}x{tag}")
    if family == "fewer steps":
        return FewerSteps(max(1, round(base / budget))).bind(pipe, base, guidance)
    if family in ("DeepCache", "DeepCache non-uniform"):
        mode = "uniform" if family == "DeepCache" else "nonuniform"
        return deepcache_for_budget(pipe, base, guidance, budget, mode)
    if family == "FBCache":
        return fbcache_for_budget(ev, pipe, base, budget).bind(pipe, base, guidance)
    raise DipgoError(f"unknown family {family!r}")


# ------------------------------------------------------------------------------------------ reports
def at_macs(points: list[dict], speedup: float, metric: str) -> tuple[float, bool]:
    """``metric`` of a method's curve at MACs ``speedup``: linear in log-speedup between the two
    measured points that bracket it; the nearest point (flagged ``False``) when none do."""
    pts = sorted((math.log(p["macs_speedup"]), p[metric]) for p in points)
    x = math.log(speedup)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        if x0 <= x <= x1:
            return (y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)), True
    return min(pts, key=lambda p: abs(p[0] - x))[1], abs(min(abs(p[0] - x) for p in pts)) < 1e-9


def target_check(records: list[dict], tol: float = 0.05) -> list[dict]:
    """The target: at each budget, dipgo's PSNR vs full beats fewer steps' and DeepCache's, and its
    FID is equal or better (within ``tol``), compared at dipgo's own MACs: each baseline's PSNR and
    FID are interpolated along its measured curve (methods land near, not on, a budget)."""
    rows = []
    curves: dict = {}
    for r in records:
        curves.setdefault((r["model"], r["base"], r["family"]), []).append(r)
    for d in records:
        if d["family"] != "dipgo":
            continue
        for other in ("fewer steps", "DeepCache"):
            pts = curves.get((d["model"], d["base"], other))
            if not pts:
                continue
            psnr_o, inside = at_macs(pts, d["macs_speedup"], "psnr_vs_full")
            fid_o, _ = at_macs(pts, d["macs_speedup"], "fid")
            psnr_ok = d["psnr_vs_full"] > psnr_o
            fid_ok = d["fid"] <= fid_o * (1 + tol)
            rows.append({"model": d["model"], "base": d["base"], "budget": d["budget"], "versus": other,
                         "dipgo_macs_speedup": d["macs_speedup"], "dipgo_psnr": d["psnr_vs_full"],
                         "other_psnr": psnr_o, "dipgo_fid": d["fid"], "other_fid": fid_o, "interpolated": inside,
                         "psnr_better": psnr_ok, "fid_ok": fid_ok, "met": psnr_ok and fid_ok})
    return rows


def floor_table(records: list[dict], floor: float = 30.0) -> list[dict]:
    """NTIRE-style: per model, base and method, the fastest measured point that keeps PSNR vs the full
    model at or above ``floor`` dB (None when no point does)."""
    rows = []
    keys = sorted({(r["model"], r["base"]) for r in records}, key=lambda k: (k[0], -k[1]))
    for model, base in keys:
        for fam in FAMILIES:
            pts = [r for r in records if (r["model"], r["base"], r["family"]) == (model, base, fam)]
            if not pts:
                continue
            ok = [r for r in pts if r["psnr_vs_full"] >= floor]
            best = max(ok, key=lambda r: r["wall_speedup"]) if ok else None
            rows.append({"model": model, "base": base, "family": fam, "floor_db": floor,
                         "wall_speedup": best["wall_speedup"] if best else None,
                         "macs_speedup": best["macs_speedup"] if best else None,
                         "method": best["method"] if best else None})
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    cfg = report["config"]
    lines = [f"# Benchmark: dipgo against the alternatives ({cfg['tag']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, torch {m['torch']}, "
             f"{m['date']}. {cfg['n']} images per point (balanced digits, seeds "
             f"{cfg['seed']}..{cfg['seed'] + cfg['n'] - 1}), "
             f"batch {cfg['batch']}, whole run {report['seconds'] / 60:.1f} min.", "",
             "MACs: denoiser MACs per image (CFG included) of the blocks that actually ran. Wall: whole pipeline "
             "per image, median over batches (first batch not timed) [25-75 %]. PSNR/SSIM: against the full model's "
             "image from the same seed (8-bit). FID: against the model's reference statistics (at this n, FID is "
             "biased upward; compare within a table).", ""]
    for c in report.get("corrections", []):
        lines += [f"Correction: {c['what']}.", ""]
    if report.get("bracket_seconds") is not None:
        bm = report.get("bracket_machine", {})
        lines += [f"Rows marked '(bracket)' were measured afterwards (`benchmarks/bracket_baselines.py`, "
                  f"{bm.get('date', '')}, {report['bracket_seconds'] / 60:.1f} min, same images, seeds and batch, "
                  "the full model re-run as the reference), so that each baseline's curve brackets every dipgo "
                  "point in the target check.", ""]
    by = {}
    for r in report["records"]:
        by.setdefault((r["model"], r["base"]), []).append(r)
    for (model, base), recs in by.items():
        lines += [f"## {model}, {scheduler_label(cfg.get('scheduler'))}-{base}", "",
                  "| budget | method | MACs speedup | wall speedup | ms/image [IQR] | FID | cond. acc "
                  "| PSNR (dB) | SSIM |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in recs:
            lo, hi = r["latency_spread_ms"]
            budget = "full" if r["family"] == "full" else f"{r['budget']:g}x"
            method = r["method"] + (" (bracket)" if r.get("bracket") else "")
            lines.append(f"| {budget} | {method} | {r['macs_speedup']:.2f}x | {r['wall_speedup']:.2f}x | "
                         f"{r['latency_ms']:.1f} [{lo:.1f}-{hi:.1f}] | {r['fid']:.2f} | {100 * r['cond_acc']:.1f} % | "
                         f"{r['psnr_vs_full']:.2f} | {r['ssim_vs_full']:.3f} |")
        lines.append("")
    sched = scheduler_label(cfg.get("scheduler"))
    lines += _floor_section(report, sched)
    lines += ntire_section(report)
    lines += _target_section(report, sched)
    if report.get("searches"):
        lines += ["dipgo points: the pruning pipeline of `dipgo prune` (search, held-out selection, refinement), "
                  "per model, base and budget: " + "; ".join(_pipeline_note(k, v) for k, v in
                                                           report["searches"].items()) + ".", ""]
    return "\n".join(lines)


def _floor_section(report: dict, sched: str) -> list[str]:
    """The NTIRE-style table: each method's fastest point above the PSNR floor."""
    lines: list[str] = []
    floor = floor_table(report["records"])
    if floor:
        lines += ["## Speed at a quality floor", "",
                  f"The fastest measured point of each method whose PSNR against the full model stays at or above "
                  f"{floor[0]['floor_db']:g} dB (NTIRE-style: cost at a stated quality floor). Parameters are "
                  "unchanged by every method here (all skip computation; none removes weights): "
                  + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in report.get("params", {}).items()) + ".", "",
                  "| model | base | method | best wall speedup | MACs speedup | point |", "|---|---|---|---|---|---|"]
        for f in floor:
            if f["wall_speedup"] is None:
                lines.append(f"| {f['model']} | {sched}-{f['base']} | {f['family']} | none reaches the floor | | |")
            else:
                lines.append(f"| {f['model']} | {sched}-{f['base']} | {f['family']} | {f['wall_speedup']:.2f}x | "
                             f"{f['macs_speedup']:.2f}x | {f['method']} |")
        lines.append("")
    return lines


def _target_section(report: dict, sched: str) -> list[str]:
    """The target check: dipgo against each baseline at dipgo's own MACs."""
    lines: list[str] = []
    checks = target_check(report["records"])
    if checks:
        met = sum(c["met"] for c in checks)
        lines += ["## Target check", "",
                  "dipgo against each baseline at dipgo's MACs: PSNR vs full higher, and FID at most 5 % worse. "
                  "The baseline's PSNR and FID are interpolated (linear in log MACs speedup) between its two "
                  "measured points that bracket dipgo's MACs; '(nearest)' marks a baseline value taken from its "
                  "closest point because none bracket it. Rows marked '(bracket)' are the baseline settings "
                  "measured for that purpose: the nearest setting on the far side of a dipgo point.",
                  f"Met in {met} of {len(checks)} comparisons.", "",
                  "| model | base | budget | versus | dipgo MACs speedup | PSNR (dipgo / other) "
                  "| FID (dipgo / other) | met |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in checks:
            lines.append(f"| {c['model']} | {sched}-{c['base']} | {c['budget']:g}x | {c['versus']} | "
                         f"{c['dipgo_macs_speedup']:.2f}x | "
                         f"{c['dipgo_psnr']:.2f} / {c['other_psnr']:.2f}{'' if c['interpolated'] else ' (nearest)'} | "
                         f"{c['dipgo_fid']:.2f} / {c['other_fid']:.2f} | "
                         f"{'yes' if c['met'] else 'no'} |")
        lines.append("")
    return lines


def _pipeline_note(key: str, rec: dict) -> str:
    """One dipgo point's pruning: its effort, seconds per stage, the winning start and the held-out comparison."""
    if "seconds" in rec and isinstance(rec["seconds"], dict):
        secs = ", ".join(f"{k} {v:.0f} s" for k, v in rec["seconds"].items())
        c = rec.get("compared") or {}
        versus = f"; {c['label']} {c['psnr']:.2f} dB" if c else ""
        return (f"{key} ({rec.get('effort')}: {secs}; won by {rec.get('winner')}, held-out "
                f"{rec.get('psnr'):.2f} dB{versus})")
    return f"{key} (search {rec.get('seconds', 0):.0f} s)"


def pruned_entries(results: Path) -> list[dict]:
    """Layer- and depth-pruned models measured by their own benchmarks (``benchmarks/results/layers`` and
    ``depth``, DDIM-20, the same images and seeds as the bench), as NTIRE entries. Their runtime is the
    denoiser call's latency ratio at 16 images (the whole generation's was not timed for them)."""
    out = []
    for kind in ("layers", "depth"):
        for path in sorted((results / kind).glob("*.json")):
            rep = json.loads(path.read_text())
            if "full" not in rep or "rows" not in rep:
                continue
            for r in rep["rows"]:
                speed = r.get("latency_ratio") or (r.get("latency_speedup") or {}).get("16")
                if not speed:
                    continue  # a DiP-GO combination: its speed is a whole-pipeline matter, not timed here
                name = f"{kind}: {r['label']} ({r['ratio']:g})"
                out.append({"model": rep["model"], "base": rep["steps"], "name": name, "runtime": 1 / speed,
                            "macs": 1 / r["macs_speedup"], "params": r["params"] / rep["full"]["params"],
                            "psnr_vs_full": r["psnr_vs_full"], "fid": r["fid"], "fid_full": r["fid_full"],
                            "source": f"{kind}/{path.name}"})
    return out


def ntire_section(report: dict) -> list[str]:
    """The NTIRE-style ranking per model and base: every measured bench point (whole-generation wall time),
    plus the layer/depth-pruned models of ``report["pruned"]`` at their step count."""
    from .ntire import Floor, markdown, rank

    cfg = report.get("config", {})
    floor = Floor(cfg.get("floor_psnr", Floor.psnr), cfg.get("floor_fid", Floor.fid))
    by: dict = {}
    full_fid = {(r["model"], r["base"]): r["fid"] for r in report["records"] if r["family"] == "full"}
    for r in report["records"]:
        by.setdefault((r["model"], r["base"]), []).append(
            {"name": r["method"] if r["family"] != "full" else "full model", "runtime": 1 / r["wall_speedup"],
             "macs": 1 / r["macs_speedup"], "params": 1.0, "psnr_vs_full": r["psnr_vs_full"], "fid": r["fid"],
             "fid_full": r.get("fid_full", full_fid.get((r["model"], r["base"]), r["fid"]))})
    for e in report.get("pruned", []):
        if (e["model"], e["base"]) in by:
            by[(e["model"], e["base"])].append(e)
    if not by:
        return []
    lines = ["## NTIRE-style efficiency score", ""]
    for (model, base), entries in by.items():
        pruned = any("source" in e for e in entries)
        lines += [f"### {model}, {scheduler_label(report['config'].get('scheduler'))}-{base}", ""] + markdown(
            rank(entries, floor), floor,
            "Bench points: runtime is the whole generation's wall time." + (
                " Layer/depth-pruned rows (`layers:` / `depth:`): runtime is the denoiser call's latency at 16 "
                "images, from their own benchmarks." if pruned else "")) + [""]
    return lines


def pareto_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict = {}
    for r in report["records"]:
        by.setdefault((r["model"], r["base"]), []).append(r)
    keys = list(by)
    fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 7.5), squeeze=False)
    colors = dict(zip(FAMILIES, ("C3", "C0", "C1", "C2", "C4"), strict=True))
    for col, key in enumerate(keys):
        recs = by[key]
        full = next(r for r in recs if r["family"] == "full")
        for row, (metric, label) in enumerate((("psnr_vs_full", "PSNR vs full (dB)"), ("fid", "FID"))):
            ax = axes[row][col]
            for fam in FAMILIES:
                pts = sorted((r["wall_speedup"], r[metric]) for r in recs if r["family"] == fam)
                if pts:
                    ax.plot(*zip(*pts, strict=True), "o-", color=colors[fam], label=fam,
                            lw=2.5 if fam == "dipgo" else 1.2)
            if metric == "fid":
                ax.axhline(full["fid"], color="k", ls=":", lw=1, label="full model")
            ax.set_xlabel("measured wall-clock speedup")
            ax.set_ylabel(label)
            ax.set_title(f"{key[0]}, {scheduler_label(report['config'].get('scheduler'))}-{key[1]}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[1][0].legend(fontsize=8)
    fig.suptitle("Quality against measured wall-clock speedup\n(PSNR: up and right is better; FID: down and right)",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_reports(report: dict, out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tag = report["config"]["tag"]
    paths = [out / f"{tag}.json", out / f"{tag}.md", out / f"{tag}.png"]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    if "pruned" not in report:  # layer/depth-pruned models measured by their own benchmarks, if any
        report = dict(report, pruned=pruned_entries(out.parent))
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(markdown(report))
    pareto_plot(report, paths[2])
    return paths
