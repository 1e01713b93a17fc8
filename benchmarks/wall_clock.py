"""How much of a schedule's MACs speedup the wall clock keeps, at 16 images per batch.

For each zoo model and its committed schedule (`benchmarks/results/prune-*.schedule.json`), times whole
generations (pipeline call, 16 images, CFG on) of the full model, the schedule, and fewer steps at the
schedule's MACs, interleaved (full, dipgo, steps, full, ...) so that drifts hit all three alike, and
reports wall speedup / MACs speedup per method. Run it alone on the machine.

    python -m benchmarks.wall_clock                  # glibc thresholds raised, as the CLI does
    python -m benchmarks.wall_clock --malloc system  # the C library's defaults, for comparison
    python -m benchmarks.wall_clock --macs-only      # add whole-generation MACs to the report (no timing)
    python -m benchmarks.wall_clock --compile        # every method with its gated blocks torch.compile'd
    python -m benchmarks.wall_clock --report         # rewrite wall.md from wall.json

The wall clock covers the whole generation while a schedule's MACs count the denoiser only, so the report
also counts every op of a generation (text encoder, VAE decode included) for a like-for-like ratio.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from benchmarks import harness as h

SCHEDULES = {"mnist-sd": h.RESULTS / "prune-mnist-sd-r0.8.schedule.json",
             "mnist-dit": h.RESULTS / "prune-mnist-dit-r0.6.schedule.json"}
METHODS = ("full", "dipgo", "steps")


class Generations:
    """Whole generations of one model: the full model, its committed schedule, and fewer steps at the
    schedule's MACs; each timed call also records the time spent inside denoiser calls and page faults.
    With ``compile`` (a torch.compile backend), the schedule's gated blocks are compiled for all three."""

    def __init__(self, model: str, batch: int, compile: str | Callable | None = None):
        import dipgo
        from dipgo.evaluate.baselines import AppliedSchedule

        self.m = h.Model(model, scheduler=None)
        self.schedule = dipgo.Schedule.load(SCHEDULES[model])
        self.steps = self.schedule.num_inference_steps
        self.macs_speedup = self.schedule.macs_full / self.schedule.macs
        self.k = max(1, round(self.steps / self.macs_speedup))
        self.batch, self.conditions = batch, self.m.calibration.cycle(batch)
        self.applied = AppliedSchedule(self.m.pipe, self.schedule, "dipgo")
        self.inside = {"s": 0.0, "t0": 0.0}  # time spent inside denoiser calls (dipgo's hooks included)
        self.denoiser_s: dict[str, list[float]] = {m: [] for m in METHODS}
        self.faults: dict[str, list[int]] = {m: [] for m in METHODS}
        if compile is not None:
            self.compile_blocks(compile)

    def compile_blocks(self, backend: str | Callable) -> None:
        """Compile each gated block's forward in place of its own, before any schedule is applied: the full
        model and fewer steps run the compiled blocks, and dipgo's hooks, when applied, wrap them (the same
        compiled code ``dipgo.compile_blocks`` would make, shared by all three)."""
        import torch

        from dipgo.models.adapters import resolve_blocks
        from dipgo.models.pipelines import denoiser_of

        for block in resolve_blocks(denoiser_of(self.m.pipe), self.schedule.blocks).values():
            block.forward = torch.compile(block.forward, backend=backend)

    def generate(self, n_steps: int) -> None:
        from dipgo.models.pipelines import generate

        generate(self.m.pipe, self.m.calibration, self.conditions, seed=10_000, num_inference_steps=n_steps,
                 guidance_scale=self.m.guidance, batch_size=self.batch)

    def call(self, method: str):
        """The timed callable of ``method``: one generation, its denoiser time and page faults recorded."""
        n_steps = self.k if method == "steps" else self.steps

        def once() -> None:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            self.inside["s"] = 0.0
            self.generate(n_steps)
            self.denoiser_s[method].append(self.inside["s"])
            self.faults[method].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)

        return once

    def hook_denoiser(self) -> None:
        from dipgo.models.pipelines import denoiser_of

        def enter(*_):
            self.inside["t0"] = time.perf_counter()

        def leave(*_):
            self.inside["s"] += time.perf_counter() - self.inside["t0"]

        denoiser = denoiser_of(self.m.pipe)
        denoiser.register_forward_pre_hook(enter)
        denoiser.register_forward_hook(leave)


def measure(model: str, batch: int, repeats: int, compile: str | None = None) -> dict:
    g = Generations(model, batch, compile)
    g.hook_denoiser()
    around = [None, lambda: h.enabled(g.applied), None]
    times = dict(zip(METHODS, h.alternate([g.call(m) for m in METHODS], repeats, around=around), strict=True))
    denoiser_s = {m: v[1:] for m, v in g.denoiser_s.items()}  # the first call of each was its warm-up
    faults = {m: v[1:] for m, v in g.faults.items()}
    med = {m: statistics.median(v) for m, v in times.items()}
    med_d = {m: statistics.median(v) for m, v in denoiser_s.items()}
    out = {"model": model, "schedule": SCHEDULES[model].name, "steps": g.steps, "fewer_steps": g.k, "batch": batch,
           "repeats": repeats, "compile": compile, "times_s": times, "denoiser_s": denoiser_s, "minor_faults": faults,
           "ms_per_image": {m: 1000 * v / batch for m, v in med.items()},
           "macs_speedup": {"dipgo": g.macs_speedup, "steps": g.steps / g.k}}
    fast = ("dipgo", "steps")
    out["wall_speedup"] = {m: med["full"] / med[m] for m in fast}
    out["wall_over_macs"] = {m: out["wall_speedup"][m] / out["macs_speedup"][m] for m in fast}
    out["denoiser_speedup"] = {m: med_d["full"] / med_d[m] for m in fast}
    out["denoiser_over_macs"] = {m: out["denoiser_speedup"][m] / out["macs_speedup"][m] for m in fast}
    out["outside_share_full"] = 1 - med_d["full"] / med["full"]
    return out


def generation_macs(model: str, batch: int) -> dict:
    """MACs of one whole generation (``batch`` images: text encoder, every denoiser call, scheduler, VAE decode)
    for the full model, the schedule and fewer steps, counted op by op; the denoiser's own share beside it.
    Like for like with a whole generation's wall clock, where the schedule's MACs count the denoiser only."""
    import torch

    from dipgo.models.costs import MacCounter
    from dipgo.models.pipelines import denoiser_of

    g = Generations(model, batch)
    out: dict[str, dict[str, int]] = {}
    for method in METHODS:
        with h.enabled(g.applied) if method == "dipgo" else nullcontext():
            with torch.no_grad(), MacCounter({"denoiser": denoiser_of(g.m.pipe)}) as counter:
                g.generate(g.k if method == "steps" else g.steps)
        out[method] = {"total": counter.total, "denoiser": counter.by_scope["denoiser"]}
    return out


def add_generation_macs(path: Path) -> None:
    """Add whole-generation MACs to every run of ``path`` (no timing: safe beside other work)."""
    report = h.read_json(path)
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
    h.write_json(path, report)
    write_report(path)


INTRO = [
    "Whole generations, 16 images per pipeline call (CFG on), interleaved full / dipgo / fewer steps, "
    "median of the repeats; measured alone on the machine. `wall / MACs` is the share of the MACs "
    "speedup that the whole generation's wall clock keeps; `denoiser / MACs` the same for the time spent "
    "inside denoiser calls (dipgo's hooks included), which is what MACs count: the rest of the pipeline "
    "(text encoder, VAE decode, scheduler) is the same for every method and caps the whole-generation "
    "ratio. Page faults: minor faults per generation (median). Made by `python -m benchmarks.wall_clock` "
    "(`make bench-wall`).", "",
    "`whole-generation MACs`: every op of the generation counted (text encoder, all denoiser calls, "
    "scheduler, VAE decode), the like-for-like denominator of the whole generation's wall clock; "
    "`wall / whole MACs` is the wall speedup over that MACs speedup.", ""]
HEAD = ("malloc", "model", "method", "MACs speedup", "wall speedup", "wall / MACs", "denoiser / MACs",
        "whole-generation MACs speedup", "wall / whole MACs", "ms/image", "page faults")


def rows(r: dict) -> list[list[str]]:
    """The table rows of one run: the full model, then the schedule and fewer steps against it."""
    mode = "glibc defaults" if r["malloc"] is None else "thresholds raised (CLI default)"
    if r.get("compile"):
        mode += f", blocks compiled ({r['compile']})"
    gm = r.get("generation_macs")
    share = f"; {1 - gm['full']['denoiser'] / gm['full']['total']:.1%} of its MACs" if gm else ""
    faults = {m: f"{statistics.median(r['minor_faults'][m]):,.0f}" for m in METHODS}
    out = [[mode, r["model"], f"full, {r['steps']} steps (outside the denoiser: {r['outside_share_full']:.1%} of "
            f"the time{share})", "1.00x", "1.00x", "", "", "1.00x", "", f"{r['ms_per_image']['full']:.1f}",
            faults["full"]]]
    for m, label in (("dipgo", f"dipgo ({r['schedule']})"), ("steps", f"{r['fewer_steps']} steps")):
        whole = ([f"{r['generation_macs_speedup'][m]:.2f}x", f"{r['wall_over_generation_macs'][m]:.3f}"] if gm
                 else ["-", "-"])
        out.append([mode, r["model"], label, f"{r['macs_speedup'][m]:.2f}x", f"{r['wall_speedup'][m]:.2f}x",
                    f"**{r['wall_over_macs'][m]:.3f}**", f"{r['denoiser_over_macs'][m]:.3f}", *whole,
                    f"{r['ms_per_image'][m]:.1f}", faults[m]])
    return out


def write_report(path: Path) -> None:
    runs = h.read_json(path)["runs"]
    lines = ["# Wall clock against MACs", "", *INTRO, *h.table(HEAD, [x for r in runs for x in rows(r)])]
    h.write_markdown(path.with_suffix(".md"), lines, echo=False)


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("models", nargs="*", default=list(SCHEDULES))
    p.add_argument("--malloc", choices=("tuned", "system"), default="tuned")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(h.RESULTS / "bench" / "wall.json"))
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the gated blocks of every method (backend: inductor unless given)")
    p.add_argument("--macs-only", action="store_true",
                   help="only add whole-generation MACs to the existing report (no timing)")
    h.add_report(p, "the Markdown page")
    args = p.parse_args()
    out = Path(args.out)
    if args.report or args.macs_only:
        return write_report(out) if args.report else add_generation_macs(out)
    from dipgo.malloc import tune_malloc

    settings = tune_malloc() if args.malloc == "tuned" else None
    h.set_threads(min(2, os.cpu_count() or 1))
    runs = (h.read_json(out) or {"runs": []})["runs"]
    for model in args.models:
        r = dict(measure(model, args.batch, args.repeats, args.compile), malloc=settings)
        print(json.dumps({k: r[k] for k in ("model", "wall_over_macs", "denoiser_over_macs", "ms_per_image")}),
              flush=True)
        key = (model, settings is None, args.compile)
        runs = [x for x in runs if (x["model"], x["malloc"] is None, x.get("compile")) != key] + [r]
    runs.sort(key=lambda x: (x["malloc"] is not None, x.get("compile") or "", x["model"]))
    h.write_json(out, {"machine": h.machine(), "runs": runs})
    add_generation_macs(out)  # after the timing: counting MACs is slow, and nothing is timed meanwhile
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
