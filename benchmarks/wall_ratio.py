"""Issue-13 benchmark: how much of a schedule's MACs speedup the wall clock keeps, at 16 images per batch.

For each zoo model and its committed schedule (`benchmarks/results/prune-*.schedule.json`), times whole
generations (pipeline call, 16 images, CFG on) of the full model, the schedule, and fewer steps at the
schedule's MACs, interleaved (full, dipgo, steps, full, ...) so that drifts hit all three alike, and
reports wall speedup / MACs speedup per method. Run it alone on the machine.

    python benchmarks/wall_ratio.py                  # glibc thresholds raised, as the CLI does
    python benchmarks/wall_ratio.py --malloc system  # the C library's defaults, for comparison
    python benchmarks/wall_ratio.py --macs-only      # add whole-generation MACs to the report (no timing)

The wall clock covers the whole generation while a schedule's MACs count the denoiser only, so the report
also counts every op of a generation (text encoder, VAE decode included) for a like-for-like ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

import dipgo
from dipgo import zoo
from dipgo.evaluate.bench import machine
from dipgo.fileio import atomic_path
from dipgo.malloc import tune_malloc
from dipgo.models.costs import MacCounter
from dipgo.models.pipelines import default_calibration, denoiser_of, generate

ROOT = Path(__file__).resolve().parent
SCHEDULES = {"mnist-sd": ROOT / "results/prune-mnist-sd-r0.8.schedule.json",
             "mnist-dit": ROOT / "results/prune-mnist-dit-r0.6.schedule.json"}


def measure(model: str, batch: int, repeats: int) -> dict:
    pipe, source = zoo.load(model)
    calibration = default_calibration(pipe, defaults=source.defaults)
    schedule = dipgo.Schedule.load(SCHEDULES[model])
    steps = schedule.num_inference_steps
    macs_speedup = schedule.macs_full / schedule.macs
    k = max(1, round(steps / macs_speedup))
    conditions = calibration.cycle(batch)

    inside = {"s": 0.0, "t0": 0.0}  # time spent inside denoiser calls (dipgo's hooks included)

    def enter(*_):
        inside["t0"] = time.perf_counter()

    def leave(*_):
        inside["s"] += time.perf_counter() - inside["t0"]

    denoiser = denoiser_of(pipe)
    denoiser.register_forward_pre_hook(enter)
    denoiser.register_forward_hook(leave)

    def once(n_steps: int) -> tuple[float, float, int]:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        inside["s"] = 0.0
        t0 = time.perf_counter()
        generate(pipe, calibration, conditions, seed=10_000, num_inference_steps=n_steps,
                 guidance_scale=source.guidance_scale, batch_size=batch)
        return (time.perf_counter() - t0, inside["s"],
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)

    def run(method: str) -> tuple[float, float, int]:
        if method == "dipgo":
            dipgo.apply(pipe, schedule)
            try:
                return once(steps)
            finally:
                dipgo.remove(pipe)
        return once(steps if method == "full" else k)

    methods = ("full", "dipgo", "steps")
    for m in methods:  # warm-up of every path
        run(m)
    times: dict[str, list[float]] = {m: [] for m in methods}
    denoiser_s: dict[str, list[float]] = {m: [] for m in methods}
    faults: dict[str, list[int]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            t, d, f = run(m)
            times[m].append(t)
            denoiser_s[m].append(d)
            faults[m].append(f)
    med = {m: statistics.median(v) for m, v in times.items()}
    med_d = {m: statistics.median(v) for m, v in denoiser_s.items()}
    out = {"model": model, "schedule": SCHEDULES[model].name, "steps": steps, "fewer_steps": k, "batch": batch,
           "repeats": repeats, "times_s": times, "denoiser_s": denoiser_s, "minor_faults": faults,
           "ms_per_image": {m: 1000 * v / batch for m, v in med.items()},
           "macs_speedup": {"dipgo": macs_speedup, "steps": steps / k}}
    out["wall_speedup"] = {m: med["full"] / med[m] for m in ("dipgo", "steps")}
    out["wall_over_macs"] = {m: out["wall_speedup"][m] / out["macs_speedup"][m] for m in ("dipgo", "steps")}
    out["denoiser_speedup"] = {m: med_d["full"] / med_d[m] for m in ("dipgo", "steps")}
    out["denoiser_over_macs"] = {m: out["denoiser_speedup"][m] / out["macs_speedup"][m] for m in ("dipgo", "steps")}
    out["outside_share_full"] = 1 - med_d["full"] / med["full"]
    return out


def generation_macs(model: str, batch: int) -> dict:
    """MACs of one whole generation (``batch`` images: text encoder, every denoiser call, scheduler, VAE decode)
    for the full model, the schedule and fewer steps, counted op by op; the denoiser's own share beside it.
    Like for like with a whole generation's wall clock, where the schedule's MACs count the denoiser only."""
    pipe, source = zoo.load(model)
    calibration = default_calibration(pipe, defaults=source.defaults)
    schedule = dipgo.Schedule.load(SCHEDULES[model])
    steps = schedule.num_inference_steps
    k = max(1, round(steps / (schedule.macs_full / schedule.macs)))
    conditions = calibration.cycle(batch)
    out: dict[str, dict[str, int]] = {}
    for method, n_steps in (("full", steps), ("dipgo", steps), ("steps", k)):
        if method == "dipgo":
            dipgo.apply(pipe, schedule)
        try:
            with torch.no_grad(), MacCounter({"denoiser": denoiser_of(pipe)}) as counter:
                generate(pipe, calibration, conditions, seed=10_000, num_inference_steps=n_steps,
                         guidance_scale=source.guidance_scale, batch_size=batch)
        finally:
            if method == "dipgo":
                dipgo.remove(pipe)
        out[method] = {"total": counter.total, "denoiser": counter.by_scope["denoiser"]}
    return out


def add_generation_macs(path: Path) -> None:
    """Add whole-generation MACs to every run of ``path`` (no timing: safe beside other work)."""
    report = json.loads(path.read_text())
    counted: dict[tuple[str, int], dict] = {}
    for r in report["runs"]:
        key = (r["model"], r["batch"])
        if key not in counted:
            counted[key] = generation_macs(*key)
        macs = counted[key]
        r["generation_macs"] = macs
        r["generation_macs_speedup"] = {m: macs["full"]["total"] / macs[m]["total"] for m in ("dipgo", "steps")}
        r["wall_over_generation_macs"] = {m: r["wall_speedup"][m] / r["generation_macs_speedup"][m]
                                          for m in ("dipgo", "steps")}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_path(path.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(report["runs"]))


def markdown(runs: list[dict]) -> str:
    lines = ["# Wall clock against MACs (issue 13)", "",
             "Whole generations, 16 images per pipeline call (CFG on), interleaved full / dipgo / fewer steps, "
             "median of the repeats; measured alone on the machine. `wall / MACs` is the share of the MACs "
             "speedup that the whole generation's wall clock keeps; `denoiser / MACs` the same for the time spent "
             "inside denoiser calls (dipgo's hooks included), which is what MACs count: the rest of the pipeline "
             "(text encoder, VAE decode, scheduler) is the same for every method and caps the whole-generation "
             "ratio. Page faults: minor faults per generation (median).", "",
             "`whole-generation MACs`: every op of the generation counted (text encoder, all denoiser calls, "
             "scheduler, VAE decode), the like-for-like denominator of the whole generation's wall clock; "
             "`wall / whole MACs` is the wall speedup over that MACs speedup.", "",
             "| malloc | model | method | MACs speedup | wall speedup | wall / MACs | denoiser / MACs | "
             "whole-generation MACs speedup | wall / whole MACs | ms/image | page faults |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        mode = "glibc defaults" if r["malloc"] is None else "thresholds raised (CLI default)"
        full_ms = r["ms_per_image"]["full"]
        gm = r.get("generation_macs")
        share = f"; {1 - gm['full']['denoiser'] / gm['full']['total']:.1%} of its MACs" if gm else ""
        lines.append(f"| {mode} | {r['model']} | full, {r['steps']} steps (outside the denoiser: "
                     f"{r['outside_share_full']:.1%} of the time{share}) | 1.00x | 1.00x | | | 1.00x | | "
                     f"{full_ms:.1f} | {statistics.median(r['minor_faults']['full']):,.0f} |")
        for m, label in (("dipgo", f"dipgo ({r['schedule']})"), ("steps", f"{r['fewer_steps']} steps")):
            whole = (f"{r['generation_macs_speedup'][m]:.2f}x | {r['wall_over_generation_macs'][m]:.3f}" if gm
                     else "- | -")
            lines.append(f"| {mode} | {r['model']} | {label} | {r['macs_speedup'][m]:.2f}x | "
                         f"{r['wall_speedup'][m]:.2f}x | **{r['wall_over_macs'][m]:.3f}** | "
                         f"{r['denoiser_over_macs'][m]:.3f} | {whole} | "
                         f"{r['ms_per_image'][m]:.1f} | {statistics.median(r['minor_faults'][m]):,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=list(SCHEDULES))
    p.add_argument("--malloc", choices=("tuned", "system"), default="tuned")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "results/bench/wall.json"))
    p.add_argument("--macs-only", action="store_true",
                   help="only add whole-generation MACs to the existing report (no timing)")
    args = p.parse_args()
    if args.macs_only:
        add_generation_macs(Path(args.out))
        return
    settings = tune_malloc() if args.malloc == "tuned" else None
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = Path(args.out)
    runs = json.loads(out.read_text())["runs"] if out.exists() else []
    for model in args.models:
        r = dict(measure(model, args.batch, args.repeats), malloc=settings)
        print(json.dumps({k: r[k] for k in ("model", "wall_over_macs", "denoiser_over_macs", "ms_per_image")}),
              flush=True)
        runs = [x for x in runs if (x["model"], x["malloc"] is None) != (model, settings is None)] + [r]
    runs.sort(key=lambda x: (x["malloc"] is not None, x["model"]))
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=1))
    add_generation_macs(out)  # after the timing: counting MACs is slow, and nothing is timed meanwhile
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
