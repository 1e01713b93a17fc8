"""One search for every budget: a single DiP-GO search over a range of budgets (``SearchConfig.ratios``), cut
at 2x / 3x / 4.4x / 5.5x fewer MACs, against the dedicated per-budget searches of ``dipgo bench`` and the
fewer-steps / DeepCache curves at the same MACs.

    python -m benchmarks.budget_range mnist-sd 20      # one model and base per process
    python -m benchmarks.budget_range mnist-sd 20 --refine 300 --threads 2   # + held-out refinement
    python -m benchmarks.budget_range --report         # -> benchmarks/results/bench/budget-range.md

The range search uses the bench's iterations and batch for that model and base; its file is saved next
to the bench's searches. Quality is measured exactly as ``dipgo bench`` does (256 images, seed 0, batch
32, balanced digits); dedicated and baseline figures come from ``bench.json`` (same seeds).
"""

from __future__ import annotations

import time

from benchmarks import harness as h

BENCH = h.RESULTS / "bench"
JSON = BENCH / "budget-range.json"
REFINED_BENCH = h.RESULTS / "bench-refine" / "bench.json"  # dedicated searches + refinement
BUDGETS = (2.0, 3.0, 4.4, 5.5)
RANGE = (0.5, 1 - 1 / 5.5)
QUALITY = ("macs_speedup", "psnr_vs_full", "fid")


def range_search(m: h.Model, base: int):
    """The range search for ``base`` steps: loaded if saved, else run (the bench's iterations and batch)."""
    from dipgo.cache.search import Search, SearchConfig, load_result, save_result

    path = h.SEARCHES / f"{m.name}-ddim{base}-range.json"
    if not path.exists():
        sc = SearchConfig(ratios=RANGE, ratio=RANGE[1], num_inference_steps=base, guidance_scale=m.guidance,
                          iterations=h.SEARCH_ITERATIONS, batch=h.search_batch(m.pipe, base))
        ckpt = path.with_name(path.name + ".search.pt")
        save_result(Search(m.pipe, sc, checkpoint_path=ckpt, calibration=m.calibration).run(progress=True), path)
        ckpt.unlink(missing_ok=True)
    return load_result(path, m.pipe)


def save(report: dict, model: str, base: int) -> None:
    """Write this model and base's rows and search; re-read first, as another process may be measuring
    another model into the same file."""
    key = f"{model}-ddim{base}"
    current = h.read_json(JSON, {"rows": [], "searches": {}})
    current["rows"] = [r for r in current["rows"] if (r["model"], r["base"]) != (model, base)] + \
        [r for r in report["rows"] if (r["model"], r["base"]) == (model, base)]
    current["searches"][key] = report["searches"][key]
    current.update({k: v for k, v in report.items() if k not in ("rows", "searches")})
    h.write_json(JSON, current)


def cut_row(q: h.QualityPass, result, base: int, budget: float) -> dict:
    """The range search's schedule cut at ``budget``, measured."""
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.evaluate.baselines import AppliedSchedule

    schedule = schedule_at_ratio(result, 1 - 1 / budget)
    rec = q.record(AppliedSchedule(q.model.pipe, schedule, f"dipgo range {budget:g}x"))
    return {"model": q.model.name, "base": base, "budget": budget, "macs_speedup": rec["macs_speedup"],
            "psnr_vs_full": rec["psnr_vs_full"], "fid": rec["fid"], "fid_full": rec["fid_full"]}


def add_refined(row: dict, q: h.QualityPass, result, runs: int, refined_recs: list[dict]) -> None:
    """The cut refined on held-out samples (``dipgo prune --refine``), beside the dedicated search refined."""
    from dipgo.cache.refine import RefineConfig, refine
    from dipgo.evaluate.baselines import AppliedSchedule

    m, budget = q.model, row["budget"]
    t0 = time.perf_counter()
    done = refine(m.pipe, result, 1 - 1 / budget, m.calibration, RefineConfig(evaluations=runs),
                  guidance_scale=m.guidance, progress=False)
    seconds = time.perf_counter() - t0
    r = q.record(AppliedSchedule(m.pipe, done.schedule, f"dipgo range+refine {budget:g}x"))
    row["refined"] = {"macs_speedup": r["macs_speedup"], "psnr_vs_full": r["psnr_vs_full"], "fid": r["fid"],
                      "start": done.start, "held_out_psnr": done.psnr, "starts": done.starts,
                      "evaluations": done.evaluations, "seconds": seconds}
    ded = next((x for x in refined_recs if x["budget"] == budget), None)
    if ded is not None:
        row["dedicated_refined"] = {k: ded[k] for k in (*QUALITY, "method")}
    print(f"  refined: {h.summary(r)} from {done.start}"
          + (f" (dedicated+refine {ded['psnr_vs_full']:.2f} dB)" if ded else ""), flush=True)


def add_compared(row: dict, recs: list[dict]) -> None:
    """The dedicated search at the same budget, and the baselines' curves at the row's MACs."""
    from dipgo.evaluate.bench import at_macs

    ded = next((r for r in recs if r["family"] == "dipgo" and r["budget"] == row["budget"]), None)
    if ded is not None:
        row["dedicated"] = {k: ded[k] for k in QUALITY}
    for fam in ("fewer steps", "DeepCache"):
        curve = [r for r in recs if r["family"] in (fam, "full")]
        row[fam] = {k: at_macs(curve, row["macs_speedup"], k)[0] for k in ("psnr_vs_full", "fid")}
        row[fam]["extrapolated"] = not at_macs(curve, row["macs_speedup"], "fid")[1]
    print(f"{row['model']} DDIM-{row['base']} {row['budget']:g}x: range cut MACs {row['macs_speedup']:.2f}x PSNR "
          f"{row['psnr_vs_full']:.2f} FID {row['fid']:.2f}"
          + (f" (dedicated {ded['psnr_vs_full']:.2f} dB)" if ded else ""), flush=True)


def measure(model: str, base: int, threads: int, refine_runs: int = 0) -> None:
    h.set_threads(threads)
    bench = h.read_json(BENCH / "bench.json")
    cfg, key = bench["config"], f"{model}-ddim{base}"
    m = h.Model(model)
    result = range_search(m, base)
    recs = [r for r in bench["records"] if r["model"] == model and r["base"] == base]
    report = h.read_json(JSON, {"rows": [], "searches": {}})
    old_rows = {(r["model"], r["base"], r["budget"]): r for r in report["rows"]}
    report["rows"] = [r for r in report["rows"] if (r["model"], r["base"]) != (model, base)]
    refined_recs = []
    if refine_runs and REFINED_BENCH.exists():
        refined_recs = [r for r in h.read_json(REFINED_BENCH)["records"]
                        if r["model"] == model and r["base"] == base and r["family"] == "dipgo"]
    dedicated_seconds = {b: bench["searches"][f"{key}-x{b:g}"]["seconds"] for b in BUDGETS
                         if f"{key}-x{b:g}" in bench["searches"]}
    report["searches"][key] = {"seconds": result.seconds, "iterations": result.config.iterations,
                               "batch": result.config.batch, "range": list(RANGE),
                               "dedicated_seconds_per_budget_both_inits": dedicated_seconds}
    t0 = time.perf_counter()
    q = h.QualityPass(m, cfg["n"], base, cfg["seed"], cfg["batch"])
    for budget in BUDGETS:
        old = old_rows.get((model, base, budget))
        if refine_runs and old is not None:  # the range cut itself was measured before: keep it
            row = {k: v for k, v in old.items() if k not in ("refined", "dedicated_refined")}
        else:
            row = cut_row(q, result, base, budget)
        if refine_runs:
            add_refined(row, q, result, refine_runs, refined_recs)
        add_compared(row, recs)
        report["rows"].append(row)
        save(report, model, base)
    report["searches"][key]["eval_seconds"] = round(time.perf_counter() - t0, 1)
    save(report, model, base)


def _gap_at_macs(rows: list[dict], r: dict, mine: str, theirs: str) -> str:
    """PSNR of ``r[mine]`` minus the dedicated curve's (``theirs`` over all budgets of the same model and
    base) at ``r[mine]``'s own MACs, linear in log speedup as the bench's target check compares."""
    from dipgo.evaluate.bench import at_macs

    curve = [x[theirs] for x in rows if (x["model"], x["base"]) == (r["model"], r["base"]) and x.get(theirs)]
    x = r[mine] if mine else r
    if not curve or not r.get(theirs):  # no dedicated search at this budget: nothing to compare with
        return "-"
    value, inside = at_macs(curve, x["macs_speedup"], "psnr_vs_full")
    return f"{x['psnr_vs_full'] - value:+.2f} dB" + ("" if inside else " (nearest)")


def _point(x: dict | None, missing: str) -> str:
    return f"{x['macs_speedup']:.2f}x, {x['psnr_vs_full']:.2f} dB / {x['fid']:.2f}" if x else missing


def _gap(x: dict, d: dict | None) -> str:
    return f"{x['psnr_vs_full'] - d['psnr_vs_full']:+.2f} dB" if d else "-"


def _baseline(x: dict) -> str:
    return f"{x['psnr_vs_full']:.2f} dB / {x['fid']:.2f}" + (" (nearest point)" if x["extrapolated"] else "")


def main_table(rows: list[dict]) -> list[str]:
    return h.table(("model", "base", "budget", "range search: MACs, PSNR / FID", "dedicated: MACs, PSNR / FID",
                    "PSNR gap", "at equal MACs", "fewer steps at MACs: PSNR / FID", "DeepCache at MACs: PSNR / FID"),
                   [[r["model"], f"DDIM-{r['base']}", f"{r['budget']:g}x", _point(r, ""),
                     _point(r.get("dedicated"), "- (none)"), _gap(r, r.get("dedicated")),
                     _gap_at_macs(rows, r, "", "dedicated"), _baseline(r["fewer steps"]), _baseline(r["DeepCache"])]
                    for r in rows])


def refined_section(rows: list[dict]) -> list[str]:
    refined = [r for r in rows if "refined" in r]
    if not refined:
        return []
    lines = ["", "## With the held-out refinement (`dipgo prune --refine N`)", "",
             "The same range search, then `cache/refine.py` at each budget (its starts: the range search's cut, "
             "uniform spreads and DeepCache/FORA spacing next to the budget; held-out seeds from 1,000,000). "
             "Against the dedicated searches refined the same way (`benchmarks/results/bench-refine/`), where "
             "that run exists. Same 256 evaluation images.", ""]
    return lines + h.table(
        ("model", "base", "budget", "range + refine: MACs, PSNR / FID (winning start)",
         "dedicated + refine: MACs, PSNR / FID", "PSNR gap", "at equal MACs",
         "refine time (2 processes side by side, 1 thread each)"),
        [[r["model"], f"DDIM-{r['base']}", f"{r['budget']:g}x", f"{_point(r['refined'], '')} ({r['refined']['start']})",
          _point(r.get("dedicated_refined"), "- (not run)"), _gap(r["refined"], r.get("dedicated_refined")),
          _gap_at_macs(rows, r, "refined", "dedicated_refined"),
          f"{r['refined']['seconds']:.0f} s, {r['refined']['evaluations']} runs"] for r in refined])


def write_report() -> None:
    report = h.read_json(JSON)
    lines = ["# One search for every budget", "",
             f"One DiP-GO search per model and base over the budget range {RANGE[0]:.2f}-{RANGE[1]:.3f} of MACs pruned "
             "(2x-5.5x): each iteration draws a budget and cuts the current scores at it, starting from a graded "
             "fewer-steps prior. Its schedules at each budget against the dedicated search made for that budget "
             "alone (`dipgo bench`, best of two initialisations) and the baselines' curves at the same MACs. "
             f"256 images, seed 0, PSNR against the full model. `{h.how_to_run('budget_range', 'MODEL BASE')}`.", "",
             "`PSNR gap`: against the dedicated schedule as it landed; `at equal MACs`: against the dedicated "
             "schedules' curve at the range search's own MACs (linear in log MACs speedup between the two dedicated "
             "points that bracket it, as the bench's target check compares with baselines).", ""]
    lines += main_table(report["rows"]) + refined_section(report["rows"])
    lines += ["", "Search time (1 thread; other benchmark processes shared the machine, so compare loosely):"]
    for k, v in report["searches"].items():
        ded = v["dedicated_seconds_per_budget_both_inits"]
        lines.append(f"- {k}: one range search {v['seconds']:.0f} s ({v['iterations']} iterations x batch "
                     f"{v['batch']}); the dedicated searches took {sum(ded.values()):.0f} s for {len(ded)} "
                     "budgets (two initialisations each)")
    h.write_markdown(BENCH / "budget-range.md", lines)


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("model", nargs="?", default="mnist-sd")
    p.add_argument("base", nargs="?", type=int, default=20)
    h.add_threads(p, 1)
    h.add_report(p, "budget-range.md")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="also refine each budget's schedule with N held-out sampling runs (keeps the measured cuts)")
    args = p.parse_args()
    if not args.report:
        measure(args.model, args.base, args.threads, args.refine)
    write_report()


if __name__ == "__main__":
    main()
