"""The time of the default ``dipgo prune mnist-sd --ratio 0.8 --steps 50``, with fresh references every
iteration (the default), with a pool of full-model references sampled once (``--references N``), and with
that pool plus the fewer-steps initialisation (``--init uniform``); each schedule then evaluated the same way.

    python -m benchmarks.prune_time            # -> benchmarks/results/prune-time/prune-time.{json,md}
    python -m benchmarks.prune_time --report   # rewrite prune-time.md from its JSON

Every command runs alone on the machine, one after another; the search time is the CLI's whole wall
time (loading, search, writing). Quality: ``dipgo eval`` with 256 images, seeds 0-255, against the full
model and against the fewer-steps schedule of the closest MACs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness as h

OUT = h.RESULTS / "prune-time"
DIPGO = str(Path(sys.executable).with_name("dipgo"))
COMMAND = ["prune", "mnist-sd", "--ratio", "0.8", "--steps", "50"]
VARIANTS = {"fresh references (default)": [], "64 pooled references": ["--references", "64"],
            "64 pooled references, uniform init": ["--references", "64", "--init", "uniform"]}
KEYS = ("macs_speedup", "psnr_vs_full", "ssim_vs_full", "fid", "fid_full", "cond_acc")


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def evaluate(path: Path, *method: str) -> dict:
    """``dipgo eval`` of mnist-sd at 256 images, its record written to ``path``."""
    subprocess.run([DIPGO, "eval", "mnist-sd", *method, "--n", "256", "--json", str(path)], check=True,
                   stdout=subprocess.DEVNULL)
    return h.read_json(path)


def measure() -> dict:
    rows = []
    for i, (name, extra) in enumerate(VARIANTS.items()):
        sched, ckpt = OUT / f"schedule-{i}.json", OUT / f"search-{i}.pt"
        seconds = timed([DIPGO, *COMMAND, "--out", str(sched), "--checkpoint", str(ckpt), *extra])
        ckpt.unlink(missing_ok=True)
        rec = evaluate(OUT / f"eval-{i}.json", "--schedule", str(sched))
        rows.append({"variant": name, "args": extra, "seconds": seconds, **{k: rec[k] for k in KEYS}})
    steps = max(1, round(50 / rows[0]["macs_speedup"]))
    fewer = evaluate(OUT / "eval-fewer-steps.json", "--steps", "50", "--method", f"steps:{steps}")
    return {"command": " ".join(["dipgo", *COMMAND]), "alone_on_machine": True, "date": time.strftime("%Y-%m-%d"),
            "rows": rows, "fewer_steps": {k: fewer[k] for k in ("method", "macs_speedup", "psnr_vs_full", "fid")},
            "machine": h.machine()}


def write_report() -> None:
    report = h.read_json(OUT / "prune-time.json")
    lines = [f"# Time of the default prune (`{report['command']}`)", "",
             "Each command alone on the 2-core machine, one after another; seconds are the whole CLI run. Quality: "
             f"`dipgo eval`, 256 images, seeds 0-255. `{h.how_to_run('prune_time')}`.", ""]
    lines += h.table(("variant", "seconds", "MACs speedup", "PSNR vs full (dB)", "SSIM", "FID (full)", "cond. acc"),
                     [[r["variant"], f"{r['seconds']:.0f}", f"{r['macs_speedup']:.2f}x", f"{r['psnr_vs_full']:.2f}",
                       f"{r['ssim_vs_full']:.3f}", f"{r['fid']:.2f} ({r['fid_full']:.2f})",
                       f"{100 * r['cond_acc']:.1f} %"] for r in report["rows"]])
    f = report["fewer_steps"]
    lines += ["", f"Fewer steps for comparison: {f['method']}, {f['macs_speedup']:.2f}x, "
              f"PSNR {f['psnr_vs_full']:.2f} dB, FID {f['fid']:.2f}."]
    h.write_markdown(OUT / "prune-time.md", lines)


def main() -> None:
    p = h.parser(__doc__)
    h.add_report(p, "prune-time.md")
    if not p.parse_args().report:
        OUT.mkdir(parents=True, exist_ok=True)
        h.write_json(OUT / "prune-time.json", measure())
    write_report()


if __name__ == "__main__":
    main()
