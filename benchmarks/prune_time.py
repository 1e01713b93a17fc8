"""Issue 13: the time of the default ``dipgo prune mnist-sd --ratio 0.8 --steps 50`` (target <= 600 s on 2
cores), with fresh references every iteration (the default), with a pool of full-model references
sampled once (``--references N``), and with that pool plus the fewer-steps initialisation (``--init
uniform``); each schedule then evaluated the same way.

    python benchmarks/prune_time.py            # -> benchmarks/results/prune-time.{json,md}

Every command runs alone on the machine, one after another; the search time is the CLI's whole wall
time (loading, search, writing). Quality: ``dipgo eval`` with 256 images, seeds 0-255, against the full
model and against the fewer-steps schedule of the closest MACs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "prune-time"
DIPGO = str(Path(sys.executable).with_name("dipgo"))
VARIANTS = {"fresh references (default)": [], "64 pooled references": ["--references", "64"],
            "64 pooled references, uniform init": ["--references", "64", "--init", "uniform"]}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, extra) in enumerate(VARIANTS.items()):
        sched = OUT / f"schedule-{i}.json"
        seconds = timed([DIPGO, "prune", "mnist-sd", "--ratio", "0.8", "--steps", "50", "--out", str(sched),
                         "--checkpoint", str(OUT / f"search-{i}.pt"), *extra])
        (OUT / f"search-{i}.pt").unlink(missing_ok=True)
        rec_path = OUT / f"eval-{i}.json"
        subprocess.run([DIPGO, "eval", "mnist-sd", "--schedule", str(sched), "--n", "256", "--json", str(rec_path)],
                       check=True, stdout=subprocess.DEVNULL)
        rec = json.loads(rec_path.read_text())
        rows.append({"variant": name, "args": extra, "seconds": seconds, "macs_speedup": rec["macs_speedup"],
                     "psnr_vs_full": rec["psnr_vs_full"], "ssim_vs_full": rec["ssim_vs_full"], "fid": rec["fid"],
                     "fid_full": rec["fid_full"], "cond_acc": rec["cond_acc"]})
    steps = max(1, round(50 / rows[0]["macs_speedup"]))
    ref_path = OUT / "eval-fewer-steps.json"
    subprocess.run([DIPGO, "eval", "mnist-sd", "--steps", "50", "--method", f"steps:{steps}", "--n", "256",
                    "--json", str(ref_path)], check=True, stdout=subprocess.DEVNULL)
    fewer = json.loads(ref_path.read_text())
    report = {"command": "dipgo prune mnist-sd --ratio 0.8 --steps 50", "alone_on_machine": True,
              "date": time.strftime("%Y-%m-%d"), "rows": rows,
              "fewer_steps": {k: fewer[k] for k in ("method", "macs_speedup", "psnr_vs_full", "fid")}}
    (OUT / "prune-time.json").write_text(json.dumps(report, indent=1))
    lines = ["# Time of the default prune (`dipgo prune mnist-sd --ratio 0.8 --steps 50`)", "",
             "Each command alone on the 2-core machine, one after another; seconds are the whole CLI run. Quality: "
             "`dipgo eval`, 256 images, seeds 0-255.", "",
             "| variant | seconds | MACs speedup | PSNR vs full (dB) | SSIM | FID (full) | cond. acc |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seconds']:.0f} | {r['macs_speedup']:.2f}x | {r['psnr_vs_full']:.2f} | "
                     f"{r['ssim_vs_full']:.3f} | {r['fid']:.2f} ({r['fid_full']:.2f}) | {100 * r['cond_acc']:.1f} % |")
    f = report["fewer_steps"]
    lines += ["", f"Fewer steps for comparison: {f['method']}, {f['macs_speedup']:.2f}x, "
              f"PSNR {f['psnr_vs_full']:.2f} dB, FID {f['fid']:.2f}."]
    (OUT / "prune-time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
