"""One ranking for every method, scored the way the NTIRE 2024 efficient super-resolution challenge scores
entries (docs/benchmarks.md), with the full model as the baseline:

    Score_x = exp(2 * x / x_base) for x in (runtime, MACs, params)
    Score   = 0.7 * Score_runtime + 0.15 * Score_MACs + 0.15 * Score_params      (lower is better)

The full model scores e^2 = 7.389 on each. A method is ranked only where it meets the quality floor (PSNR
against the full model and FID relative to the full model's, both configurable), as NTIRE ranks only
entries above RLFN's PSNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import DipgoError

WEIGHTS = {"runtime": 0.7, "macs": 0.15, "params": 0.15}


@dataclass(frozen=True)
class Floor:
    """The quality a method must keep to be ranked: PSNR vs the full model, FID at most (1 + fid) x full."""

    psnr: float = 30.0
    fid: float = 0.10

    def __post_init__(self):
        if self.fid < 0:
            raise DipgoError(f"the FID floor is a relative margin >= 0 (0.10 = within 10 %), got {self.fid}")

    def met(self, psnr_vs_full: float, fid: float, fid_full: float) -> bool:
        return psnr_vs_full >= self.psnr and fid <= fid_full * (1 + self.fid)

    def describe(self) -> str:
        return f"PSNR vs full >= {self.psnr:g} dB and FID within {self.fid:.0%} of the full model's"


def scores(runtime: float, macs: float, params: float) -> dict:
    """The three NTIRE scores and the weighted main score, for figures given as ratios to the baseline."""
    out = {f"{k}_score": math.exp(2 * v) for k, v in (("runtime", runtime), ("macs", macs), ("params", params))}
    out["score"] = sum(w * out[f"{k}_score"] for k, w in WEIGHTS.items())
    return out


def rank(entries: list[dict], floor: Floor) -> list[dict]:
    """``entries``: dicts with name, runtime, macs, params (ratios to the full model), psnr_vs_full, fid,
    fid_full. Returns them scored, those meeting the floor first by score, then the rest (unranked)."""
    out = []
    for e in entries:
        row = dict(e, **scores(e["runtime"], e["macs"], e["params"]))
        row["meets_floor"] = floor.met(e["psnr_vs_full"], e["fid"], e["fid_full"])
        out.append(row)
    ranked = sorted((r for r in out if r["meets_floor"]), key=lambda r: r["score"])
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked + sorted((r for r in out if not r["meets_floor"]), key=lambda r: r["score"])


def markdown(rows: list[dict], floor: Floor, note: str = "") -> list[str]:
    lines = [f"Floor: {floor.describe()}. Runtime, MACs and params are ratios to the full model; scores are "
             "exp(2 x ratio) (full model: 7.389 each), main score 0.7 runtime + 0.15 MACs + 0.15 params; lower "
             "is better." + (f" {note}" if note else ""), "",
             "| rank | method | runtime | MACs | params | PSNR vs full | FID (full) | runtime score | MACs score | "
             "params score | score |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rank_ = str(r["rank"]) if r.get("rank") else "below floor"
        lines.append(f"| {rank_} | {r['name']} | {r['runtime']:.3f} | {r['macs']:.3f} | {r['params']:.3f} | "
                     f"{r['psnr_vs_full']:.2f} dB | {r['fid']:.2f} ({r['fid_full']:.2f}) | {r['runtime_score']:.3f} | "
                     f"{r['macs_score']:.3f} | {r['params_score']:.3f} | {r['score']:.3f} |")
    return lines
