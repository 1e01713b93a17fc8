"""The time of ``dipgo prune`` as users run it: the default ``dipgo prune mnist-sd --ratio 0.8 --steps 50`` and
the demo's ``--ratio 0.67 --steps 20 --effort quick``, each the whole CLI run, alone on the machine.

    python -m benchmarks.prune_time            # -> benchmarks/results/prune-time/prune-time.json
                                               # (docs/results.md shows it: make results)

Each row also keeps what the command printed of its schedule: the seconds of each stage, the candidates'
held-out PSNR, the winning start and fewer steps at the same MACs on the same held-out images.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness as h

OUT = h.RESULTS / "prune-time"
DIPGO = str(Path(sys.executable).with_name("dipgo"))
COMMANDS = (["prune", "mnist-sd", "--ratio", "0.8", "--steps", "50"],
            ["prune", "mnist-sd", "--ratio", "0.67", "--steps", "20", "--effort", "quick"])


def row(cmd: list[str]) -> dict:
    sched = OUT / "schedule.json"
    t0 = time.perf_counter()
    subprocess.run([DIPGO, *cmd, "--out", str(sched)], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    s = h.read_json(sched)
    sched.unlink()
    Path(str(sched) + ".search.pt").unlink(missing_ok=True)
    rec = s["meta"]["pipeline"]
    return {"command": " ".join(["dipgo", *cmd]), "effort": rec["effort"], "seconds": seconds,
            "stages": rec["seconds"], "macs_speedup": s["macs_full"] / s["macs"], "held_out_psnr": rec["psnr"],
            "held_out_images": rec["held_out"]["n"], "winner": rec["winner"], "candidates": rec["candidates"],
            "compared": rec["compared"]}


def main() -> None:
    h.parser(__doc__).parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    h.write_json(OUT / "prune-time.json", {"alone_on_machine": True, "machine": h.machine(),
                                           "rows": [row(c) for c in COMMANDS]})


if __name__ == "__main__":
    main()
