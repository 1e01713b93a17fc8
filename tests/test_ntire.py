"""The NTIRE-style score: the full model scores e^2 on each figure; only methods above the floor rank."""

from __future__ import annotations

import math

import pytest

from dipgo.errors import DipgoError
from dipgo.evaluate.bench import ntire_section
from dipgo.evaluate.ntire import Floor, rank, scores


def test_full_model_scores_e_squared():
    s = scores(1.0, 1.0, 1.0)
    assert s["runtime_score"] == s["macs_score"] == s["params_score"] == pytest.approx(math.e ** 2)
    assert s["score"] == pytest.approx(math.e ** 2)
    half = scores(0.5, 0.25, 1.0)
    assert half["score"] == pytest.approx(0.7 * math.e + 0.15 * math.exp(0.5) + 0.15 * math.e ** 2)


def _entry(name, runtime, psnr, fid):
    return {"name": name, "runtime": runtime, "macs": runtime, "params": 1.0, "psnr_vs_full": psnr, "fid": fid,
            "fid_full": 40.0}


def test_rank_only_above_the_floor():
    rows = rank([_entry("slow good", 0.6, 35, 41), _entry("fast bad", 0.2, 25, 41),
                 _entry("fast fid-bad", 0.3, 33, 45), _entry("fast good", 0.4, 31, 43.9)], Floor())
    assert [r["name"] for r in rows if r.get("rank")] == ["fast good", "slow good"]
    assert {r["name"] for r in rows if not r.get("rank")} == {"fast bad", "fast fid-bad"}
    loose = rank([_entry("fast bad", 0.2, 25, 41)], Floor(psnr=20, fid=0.1))
    assert loose[0]["rank"] == 1
    with pytest.raises(DipgoError, match="relative margin"):
        Floor(fid=-1)


def test_bench_report_has_the_section_with_pruned_rows():
    rec = {"model": "m", "base": 20, "family": "dipgo", "method": "dipgo 3x", "wall_speedup": 3.0,
           "macs_speedup": 3.0, "psnr_vs_full": 32.0, "fid": 41.0, "fid_full": 40.0}
    full = dict(rec, family="full", method="full", wall_speedup=1.0, macs_speedup=1.0, psnr_vs_full=100.0, fid=40.0)
    pruned = {"model": "m", "base": 20, "name": "depth: progressive UPDP (0.25)", "runtime": 0.8, "macs": 0.7,
              "params": 0.9, "psnr_vs_full": 31.0, "fid": 42.0, "fid_full": 40.0, "source": "depth/m.json"}
    text = "\n".join(ntire_section({"config": {"floor_psnr": 30.0}, "records": [rec, full], "pruned": [pruned]}))
    assert "### m, DDIM-20" in text and "| 1 | dipgo 3x |" in text and "depth: progressive UPDP" in text
    assert "denoiser call's latency" in text
