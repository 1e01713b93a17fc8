"""The reports of ``dipgo bench``: the tables, the target check against each baseline's curve, the
quality-floor table, the NTIRE-style ranking and the Pareto plot, all from a bench report's records."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..fileio import atomic_path

FAMILIES = ("dipgo", "dipgo reuse", "fewer steps", "DeepCache", "DeepCache non-uniform", "FBCache", "TaylorSeer",
            "TaylorSeer order 2", "MagCache", "SeaCache")


def scheduler_tag(scheduler: str) -> str:
    """The scheduler's part of file names and keys: ``ddim``, ``pndm``, ``dpmpp``, ``euler``."""
    return {"plms": "pndm", "dpm": "dpmpp", "dpm++": "dpmpp"}.get(scheduler, scheduler)


def scheduler_label(scheduler: str | None) -> str:
    """How tables name a sampler: DDIM, PLMS, DPM++, Euler."""
    return {"pndm": "PLMS", "dpmpp": "DPM++", "euler": "Euler"}.get(scheduler_tag(scheduler or "ddim"), "DDIM")


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
    """The target: at each budget, dipgo's PSNR vs full beats every other method's (fewer steps, the
    caches, dipgo without forecasting), and its FID is equal or better (within ``tol``), compared at dipgo's
    own MACs: each other method's PSNR and FID are interpolated along its measured curve (methods land
    near, not on, a budget)."""
    rows = []
    curves: dict = {}
    for r in records:
        curves.setdefault((r["model"], r["base"], r["family"]), []).append(r)
    rank = {f: i for i, f in enumerate(FAMILIES)}
    others = sorted({r["family"] for r in records} - {"dipgo", "full"}, key=lambda f: (rank.get(f, len(rank)), f))
    for d in records:
        if d["family"] != "dipgo":
            continue
        for other in others:
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
    for model, families in (report.get("not_applicable") or {}).items():
        lines += [f"Not measured on {model}: " + "; ".join(f"{f} ({why})" for f, why in families.items()) + ".", ""]
    sched = scheduler_label(cfg.get("scheduler"))
    lines += _floor_section(report, sched)
    lines += ntire_section(report)
    lines += _target_section(report, sched)
    if report.get("searches"):
        lines += ["dipgo points: the pruning pipeline of `dipgo prune` (held-out selection and refinement, after a "
                  "gradient search where it ran), per model, base and budget: "
                  + "; ".join(_pipeline_note(k, v) for k, v in report["searches"].items()) + ".", ""]
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
        iterations = (rec.get("search") or {}).get("iterations")
        search = "no search" if iterations == 0 else f"search {iterations} iterations" if iterations else ""
        runs = f"{rec['evaluations']} held-out runs" if rec.get("evaluations") else ""
        spent = ", ".join(x for x in (search, runs) if x)
        return (f"{key} ({rec.get('effort')}{': ' + spent if spent else ''}; {secs}; won by {rec.get('winner')}, "
                f"held-out {rec.get('psnr'):.2f} dB{versus})")
    return f"{key} (search {rec.get('seconds', 0):.0f} s)"


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
    colors = dict(zip(FAMILIES, ("C3", "C5", "C0", "C1", "C2", "C4", "C6", "C7", "C8", "C9"), strict=True))
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


def write_reports(report: dict, out: str | Path, pruned: list[dict] | None = None) -> list[Path]:
    """``<tag>.json``, ``<tag>.md`` and ``<tag>.png`` in ``out``; ``pruned``: layer/depth-pruned models
    measured elsewhere, as NTIRE entries beside the bench points (the Markdown only)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tag = report["config"]["tag"]
    paths = [out / f"{tag}.json", out / f"{tag}.md", out / f"{tag}.png"]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    if pruned:
        report = dict(report, pruned=pruned)
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(markdown(report))
    pareto_plot(report, paths[2])
    return paths
