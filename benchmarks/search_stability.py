"""How stable the DiP-GO search is on its own, and what it adds to the pruning pipeline.

For each zoo model and budget (DDIM, one base), and each search seed:

* **search alone**: the search of the pipeline's effort level (started from the evenly spread schedule of
  the budget), cut at the budget, measured on held-out images (seeds from ``HELD_OUT_SEED``) without any
  selection or refinement. The spread over seeds is the search's stability; a PSNR near or below the
  ``collapse`` floor, or far below the evenly spread schedule's, is a collapse.
* **full pipeline**: selection among the search and the simple schedules, then refinement
  (``dipgo prune`` as users run it).
* **simple starts only**: the same selection and refinement with the same number of held-out sampling runs,
  without the searched schedule among the starts: what the pipeline gives when the search adds nothing.
* **pipeline now**: ``dipgo prune`` at the effort as it now runs: no search, and the search's time given to
  held-out runs (:data:`WITH_SEARCH` holds what the effort spent with the search).

The search and the two columns after it use the effort's former settings, :data:`WITH_SEARCH`.

Every figure is the mean PSNR against the full model on the same held-out images. Rows are saved as they
are measured, so an interrupted run resumes.

    python -m benchmarks.search_stability --models mnist-sd mnist-dit --budgets 3 --seeds 0 1 2 3 4
    python -m benchmarks.search_stability --bases 20 50 --budgets 3 4.4 6 --seeds 0
"""

from __future__ import annotations

import statistics
import time

from benchmarks import harness as h

OUT = h.RESULTS / "search-stability"
# What the pipeline's selection and refinement hold; rows measured with another version are not kept.
PIPELINE = ("search: lr 0.03, no sparsity push within half a call of the budget; starts: evenly spread, every N, "
            "warm-up then every N, then the search's, each repaired with its own random draws")


# (search iterations, held-out runs) of each effort while it ran the search
WITH_SEARCH = {"quick": (30, 120), "default": (80, 400)}
KEY = ("model", "base", "budget", "seed")


def _config(m: h.Model, base: int, budget: float, seed: int, effort: str, with_search: bool):
    from dipgo.cache.pipeline import PruneConfig

    iterations, evaluations = WITH_SEARCH[effort] if with_search else (None, None)
    return PruneConfig(ratio=round(1 - 1 / budget, 4), num_inference_steps=base, guidance_scale=m.guidance,
                       effort=effort, seed=seed, iterations=iterations, evaluations=evaluations)


def pipeline_now(m: h.Model, row: dict) -> dict:
    """The ``pipeline_now`` columns of ``row``: the effort's pipeline as ``dipgo prune`` runs it now."""
    from dipgo.cache.heldout import held_out_images
    from dipgo.cache.pipeline import make_sampler
    from dipgo.cache.refine import Scorer, refine
    from dipgo.cache.search import Search

    config = _config(m, row["base"], row["budget"], row["seed"], row["effort"], with_search=False)
    sampler = make_sampler(m.pipe, config, calibration=m.calibration)
    rc, result = config.refine_config(), Search(sampler, config.search_config()).result()
    scorer = Scorer(sampler, result, rc.n, rc.evaluations, False, full=held_out_images(sampler, rc.n))
    t0 = time.perf_counter()
    done = refine(sampler, result, config.ratios[0], config=rc, progress=False, scorer=scorer,
                  simple_only=not result.config.iterations)
    return {"pipeline_now": done.psnr, "pipeline_now_start": done.start, "pipeline_now_evaluations": rc.evaluations,
            "pipeline_now_speedup": done.schedule.macs_full / done.schedule.macs,
            "pipeline_now_seconds": round(time.perf_counter() - t0, 1)}


def measure_row(m: h.Model, base: int, budget: float, seed: int, effort: str) -> dict:
    from dipgo.cache.heldout import held_out_images, held_out_psnr
    from dipgo.cache.pipeline import make_sampler, uniform_schedule
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.cache.refine import Scorer, refine
    from dipgo.cache.search import Search

    config = _config(m, base, budget, seed, effort, with_search=True)
    ratio = config.ratios[0]
    sampler = make_sampler(m.pipe, config, calibration=m.calibration)
    rc = config.refine_config()
    full = held_out_images(sampler, rc.n)
    t0 = time.perf_counter()
    result = Search(sampler, config.search_config()).run(progress=False)
    seconds = time.perf_counter() - t0
    cut = schedule_at_ratio(result, ratio)
    even = uniform_schedule(result, cut.achieved_ratio)
    rows = {"search_alone": held_out_psnr(sampler, cut, full), "evenly_spread": held_out_psnr(sampler, even, full)}
    for name, simple_only in (("full_pipeline", False), ("simple_only", True)):
        done = refine(sampler, result, ratio, config=rc, progress=False, simple_only=simple_only,
                      scorer=Scorer(sampler, result, rc.n, rc.evaluations, False, full=full))
        rows[name] = done.psnr
        rows[f"{name}_start"] = done.start
        rows[f"{name}_speedup"] = done.schedule.macs_full / done.schedule.macs
    return {"model": m.name, "base": base, "budget": budget, "seed": seed, "effort": effort,
            "search_speedup": cut.macs_full / cut.macs, "evenly_spread_speedup": even.macs_full / even.macs,
            "search_seconds": round(seconds, 1), "held_out": rc.n, "evaluations": rc.evaluations, **rows}


def markdown(report: dict) -> list[str]:
    lines = ["# The DiP-GO search: stability over seeds, and what it adds to the pipeline", "",
             f"Generated by `{h.how_to_run('search_stability', '--report')}` from `search-stability.json`. "
             f"Machine: {report['machine'].get('cpu')}, {report['machine'].get('threads')} threads. "
             "PSNR (dB) against the full model, mean over the same held-out images (seeds never used for evaluation). "
             f"Pipeline: {report.get('pipeline', 'earlier version')}. The search's seconds were timed while other "
             "work shared the machine.", ""]
    if report.get("pipeline") != PIPELINE:
        lines += [f"The default pipeline has changed since these rows were measured; it is now: {PIPELINE}. In "
                  "the simple-starts-only column nothing the search learned is used, in both versions.", ""]
    rows = sorted(report["rows"], key=lambda r: (r["model"], r["base"], r["budget"], r["seed"]))
    lines += h.table(["model", "base", "budget", "seed", "search alone", "evenly spread", "full pipeline (start; MACs)",
                    "simple starts only (start; MACs)", "search s", "pipeline now (start; MACs)"],
                   ([r["model"], f"DDIM-{r['base']}", f"{r['budget']:g}x ({r['search_speedup']:.2f}x)", r["seed"],
                     f"{r['search_alone']:.2f}", f"{r['evenly_spread']:.2f}",
                     f"{r['full_pipeline']:.2f} ({r['full_pipeline_start']}; {r['full_pipeline_speedup']:.2f}x)",
                     f"{r['simple_only']:.2f} ({r['simple_only_start']}; {r['simple_only_speedup']:.2f}x)",
                     r["search_seconds"], _now(r)] for r in rows))
    lines += ["", "## Per model and budget", ""]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["base"], r["budget"]), []).append(r)
    summary = []
    for (model, base, budget), rs in groups.items():
        alone = [r["search_alone"] for r in rs]
        gain = [r["full_pipeline"] - r["simple_only"] for r in rs]
        now = [r["pipeline_now"] - r["full_pipeline"] for r in rs if "pipeline_now" in r]
        summary.append([model, f"DDIM-{base}", f"{budget:g}x", len(rs), f"{min(alone):.2f}-{max(alone):.2f}",
                        f"{max(alone) - min(alone):.2f}", f"{statistics.mean(gain):+.2f}",
                        sum(g >= 0.5 for g in gain), f"{statistics.mean(now):+.2f}" if now else "-"])
    lines += h.table(["model", "base", "budget", "seeds", "search alone: range", "spread", "pipeline - simple only",
                    "seeds where the search adds >= 0.5 dB", "pipeline now - full pipeline"], summary)
    wins = sum(r["full_pipeline"] - r["simple_only"] >= 0.5 for r in rows)
    lines += ["", f"The full pipeline beats the simple starts alone by at least 0.5 dB in {wins} of {len(rows)} runs."]
    now = [r["pipeline_now"] - r["full_pipeline"] for r in rows if "pipeline_now" in r]
    if now:
        runs = ", ".join(f"{e}: {WITH_SEARCH[e][1]} -> {n}" for e, n in sorted(
            {(r["effort"], r["pipeline_now_evaluations"]) for r in rows if "pipeline_now" in r}))
        lines += ["", f"The pipeline now (no search; held-out runs {runs}) against the full pipeline with the search: "
                  f"ahead in {sum(d > 0 for d in now)}, level in {sum(d == 0 for d in now)} and behind in "
                  f"{sum(d < 0 for d in now)} of {len(now)} runs; mean {statistics.mean(now):+.2f} dB, range "
                  f"{min(now):+.2f} to {max(now):+.2f}."]
    return lines + [""]


def _now(r: dict) -> str:
    if "pipeline_now" not in r:
        return "-"
    return f"{r['pipeline_now']:.2f} ({r['pipeline_now_start']}; {r['pipeline_now_speedup']:.2f}x)"


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--models", nargs="+", default=["mnist-sd", "mnist-dit"])
    p.add_argument("--bases", type=int, nargs="+", default=[20])
    p.add_argument("--budgets", type=float, nargs="+", default=[3.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--effort", default="quick", choices=("quick", "default", "thorough"))
    h.add_report(p, "the Markdown page")
    args = p.parse_args()
    if args.report:  # the page of the rows as measured, whatever this code's pipeline version
        h.write_markdown(OUT / "search-stability.md", markdown(h.read_json(OUT / "search-stability.json")))
        return
    report = h.RowReport(OUT / "search-stability.json", {"machine": h.machine(), "effort": args.effort,
                                                       "pipeline": PIPELINE}, ("effort", "pipeline"), key=KEY)
    for base in args.bases:
        for name in args.models:
            m = h.Model(name)
            for budget in args.budgets:
                for seed in args.seeds:
                    rec = report.find(model=name, base=base, budget=budget, seed=seed)
                    if rec is None:
                        rec = measure_row(m, base, budget, seed, args.effort)
                        report.rows.append(rec)
                    elif "pipeline_now" in rec:
                        continue
                    rec.update(pipeline_now(m, rec))
                    print({k: round(v, 2) if isinstance(v, float) else v for k, v in rec.items()}, flush=True)
                    report.save()
    h.write_markdown(OUT / "search-stability.md", markdown(report.report))


if __name__ == "__main__":
    main()
