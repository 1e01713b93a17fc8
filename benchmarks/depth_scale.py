"""Issue 11: does a merged DiT block's batch-1 latency gain reach its MACs gain at the width of a real DiT?

    python benchmarks/depth_scale.py                 # DiT-XL/2 at 256 x 256 (28 blocks, width 1152), ~10 min
    python benchmarks/depth_scale.py --preset dit-b  # DiT-B/2 (12 blocks, width 768)

mnist-dit (width 128, 64 tokens) is per-op bound at batch 1, so a merged block, with 1/12 of a block's
MACs, costs far more than 1/12 of its time. This builds the real architecture from its config with random
weights (latency does not depend on the weights; no checkpoint can be downloaded here), merges the last
quarter or half of its transformer blocks with the same code as ``dipgo depth`` (pruned form, norm
statistics calibrated on one call, lam = 1, merged), removes the last quarter for comparison, and times the
denoiser call at batch 1 with CFG (2 rows), each row paired with the full model in alternating chunks.
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "benchmarks" / "results" / "depth"
PRESETS = {  # DiT paper, Table 1 (patch 2, 256 x 256 images -> 32 x 32 latents, 1000 classes)
    "dit-xl": {"num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 72},
    "dit-b": {"num_layers": 12, "num_attention_heads": 12, "attention_head_dim": 64},
}


def build(preset: str):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(in_channels=4, out_channels=8, sample_size=32, patch_size=2,
                                 num_embeds_ada_norm=1000, **PRESETS[preset]).eval()


def main() -> None:
    from dipgo.depth.supernet import calibrate, linearise, merge, set_lam
    from dipgo.layers.candidates import remove_layers, total_cost

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="dit-xl")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--chunks", type=int, default=2)
    p.add_argument("--calls", type=int, default=2, help="calls per chunk")
    args = p.parse_args()
    torch.set_num_threads(2)
    full = build(args.preset)
    n = full.config.num_layers
    g = torch.Generator().manual_seed(0)
    call = ((torch.randn(2, 4, 32, 32, generator=g),),
            {"timestep": torch.tensor([500, 500]), "class_labels": torch.tensor([3, 1000])})  # CFG: null class
    names = [f"transformer_blocks.{i}" for i in range(n)]
    rows: dict[str, torch.nn.Module] = {}
    for share in (0.25, 0.5):
        k = round(n * share)
        m = copy.deepcopy(full)
        forms = linearise(m, names[n - k:])
        calibrate(m, forms, [call])
        set_lam(forms, 1.0)
        merge(m, forms)
        rows[f"merged, last {k} of {n}"] = m
    k = round(n * 0.25)
    rows[f"removed, last {k} of {n}"] = remove_layers(copy.deepcopy(full), names[n - k:])
    _, full_macs = total_cost(full, call)
    results = []
    with torch.no_grad():
        for label, m in rows.items():
            _, macs = total_cost(m, call)
            out = m(*call[0], **call[1]).sample
            if not torch.isfinite(out).all():
                raise RuntimeError(f"{label}: non-finite output")
            ratios, t_full, t_row = [], [], []
            for _ in range(args.passes):
                times: tuple[list[float], list[float]] = ([], [])
                for f in (full, m):
                    f(*call[0], **call[1])  # warm-up
                for _ in range(args.chunks):
                    for f, store in zip((full, m), times, strict=True):
                        for _ in range(args.calls):
                            t0 = time.perf_counter()
                            f(*call[0], **call[1])
                            store.append(time.perf_counter() - t0)
                a, b = statistics.median(times[0]), statistics.median(times[1])
                ratios.append(a / b)
                t_full.append(a)
                t_row.append(b)
            r = {"row": label, "macs_speedup": full_macs / macs, "latency_speedup": statistics.median(ratios),
                 "latency_speedup_range": [min(ratios), max(ratios)], "full_ms": 1e3 * statistics.median(t_full),
                 "row_ms": 1e3 * statistics.median(t_row)}
            r["latency_over_macs"] = r["latency_speedup"] / r["macs_speedup"]
            print(json.dumps(r), flush=True)
            results.append(r)
    cfg = dict(full.config)
    report = {"preset": args.preset, "config": {k: cfg[k] for k in ("num_layers", "num_attention_heads",
                                                                      "attention_head_dim", "sample_size",
                                                                      "patch_size")},
              "params_full": sum(q.numel() for q in full.parameters()), "macs_full_per_call": full_macs,
              "batch": "1 image with CFG (2 rows)", "passes": args.passes, "chunks": args.chunks,
              "calls_per_chunk": args.calls, "threads": 2, "rows": results}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"scale-{args.preset}.json").write_text(json.dumps(report, indent=1))
    lines = [f"# Merged blocks at a real DiT's width: {args.preset} (issue 11)", "",
             f"{report['params_full'] / 1e6:.0f} M parameters, {n} blocks of width "
             f"{cfg['num_attention_heads'] * cfg['attention_head_dim']}, 256 tokens; random weights (latency does "
             "not depend on them). Denoiser call at batch 1 with CFG (2 rows), eager, 2 threads, alone on the "
             f"machine; each row paired with the full model in {args.chunks} alternating chunks of {args.calls} "
             f"calls, {args.passes} passes, median (range over passes). `benchmarks/depth_scale.py`.", "",
             f"Full model: {results[0]['full_ms']:.0f} ms per call, {full_macs / 1e9:.1f} GMACs.", "",
             "| row | MACs speedup | latency speedup b1 | latency / MACs |", "|---|---|---|---|"]
    for r in results:
        lo, hi = r["latency_speedup_range"]
        lines.append(f"| {r['row']} | {r['macs_speedup']:.2f}x | {r['latency_speedup']:.2f}x ({lo:.2f}-{hi:.2f}) | "
                     f"{r['latency_over_macs']:.2f} |")
    (OUT / f"scale-{args.preset}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
