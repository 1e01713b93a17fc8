"""Does a merged DiT block's batch-1 latency gain reach its MACs gain at the width of a real DiT?

    python -m benchmarks.depth_latency_scale                 # DiT-XL/2 at 256 x 256 (28 blocks, width 1152)
    python -m benchmarks.depth_latency_scale --preset dit-b  # DiT-B/2 (12 blocks, width 768)
    python -m benchmarks.depth_latency_scale --report        # rewrite scale-<preset>.md from its JSON

mnist-dit (width 128, 64 tokens) is per-op bound at batch 1, so a merged block's share of the time stays far
above its share of the MACs. This builds the real architecture from its config with random
weights (latency does not depend on the weights; no checkpoint can be downloaded here), merges the last
quarter or half of its transformer blocks with the same code as ``dipgo depth`` (pruned form, norm
statistics calibrated on one call, lam = 1, merged), removes the last quarter for comparison, and times the
denoiser call at batch 1 with CFG (2 rows), each row paired with the full model in alternating chunks.
Run it alone on the machine.
"""

from __future__ import annotations

import copy
import json

from benchmarks import harness as h

OUT = h.RESULTS / "depth"
PRESETS = {  # DiT paper, Table 1 (patch 2, 256 x 256 images -> 32 x 32 latents, 1000 classes)
    "dit-xl": {"num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 72},
    "dit-b": {"num_layers": 12, "num_attention_heads": 12, "attention_head_dim": 64},
}
THREADS = 2


def build(preset: str):
    import torch
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(in_channels=4, out_channels=8, sample_size=32, patch_size=2,
                                 num_embeds_ada_norm=1000, **PRESETS[preset]).eval()


def variants(full, call) -> dict:
    """The last quarter and half of the blocks merged, and the last quarter removed, by row label."""
    from dipgo.depth.supernet import calibrate, linearise, merge, set_lam
    from dipgo.models.surgery import remove_layers

    n = full.config.num_layers
    names = [f"transformer_blocks.{i}" for i in range(n)]
    rows = {}
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
    return rows


def measure(args) -> dict:
    import torch

    from dipgo.models.surgery import total_cost

    h.set_threads(THREADS)
    full = build(args.preset)
    g = torch.Generator().manual_seed(0)
    call = ((torch.randn(2, 4, 32, 32, generator=g),),
            {"timestep": torch.tensor([500, 500]), "class_labels": torch.tensor([3, 1000])})  # CFG: null class
    _, full_macs = total_cost(full, call)
    results = []
    with torch.no_grad():
        for label, m in variants(full, call).items():
            _, macs = total_cost(m, call)
            if not torch.isfinite(m(*call[0], **call[1]).sample).all():
                raise RuntimeError(f"{label}: non-finite output")
            t = h.paired_timing(lambda: full(*call[0], **call[1]), lambda m=m: m(*call[0], **call[1]),
                                passes=args.passes, chunks=args.chunks, calls=args.calls)
            r = {"row": label, "macs_speedup": full_macs / macs, "latency_speedup": t.ratio,
                 "latency_speedup_range": list(t.ratio_range), "full_ms": 1e3 * t.base_median_s,
                 "row_ms": 1e3 * t.other_median_s}
            r["latency_over_macs"] = r["latency_speedup"] / r["macs_speedup"]
            print(json.dumps(r), flush=True)
            results.append(r)
    cfg = dict(full.config)
    keys = ("num_layers", "num_attention_heads", "attention_head_dim", "sample_size", "patch_size")
    return {"preset": args.preset, "config": {k: cfg[k] for k in keys},
            "params_full": sum(q.numel() for q in full.parameters()), "macs_full_per_call": full_macs,
            "batch": "1 image with CFG (2 rows)", "passes": args.passes, "chunks": args.chunks,
            "calls_per_chunk": args.calls, "threads": THREADS, "rows": results, "machine": h.machine()}


def write_report(preset: str) -> None:
    report = h.read_json(OUT / f"scale-{preset}.json")
    c, rows = report["config"], report["rows"]
    lines = [f"# Merged blocks at a real DiT's width: {preset}", "",
             f"{report['params_full'] / 1e6:.0f} M parameters, {c['num_layers']} blocks of width "
             f"{c['num_attention_heads'] * c['attention_head_dim']}, 256 tokens; random weights (latency does "
             f"not depend on them). Denoiser call at batch 1 with CFG (2 rows), eager, {report['threads']} threads, "
             f"alone on the machine; each row paired with the full model in {report['chunks']} alternating chunks "
             f"of {report['calls_per_chunk']} calls, {report['passes']} passes, median (range over passes). "
             f"`{h.how_to_run('depth_latency_scale', '--preset ' + preset)}`.", "",
             f"Full model: {rows[0]['full_ms']:.0f} ms per call, {report['macs_full_per_call'] / 1e9:.1f} GMACs.", ""]
    lines += h.table(("row", "MACs speedup", "latency speedup b1", "latency / MACs"),
                     [[r["row"], f"{r['macs_speedup']:.2f}x",
                       f"{r['latency_speedup']:.2f}x ({r['latency_speedup_range'][0]:.2f}-"
                       f"{r['latency_speedup_range'][1]:.2f})", f"{r['latency_over_macs']:.2f}"] for r in rows])
    h.write_markdown(OUT / f"scale-{preset}.md", lines)


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="dit-xl")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--chunks", type=int, default=2)
    p.add_argument("--calls", type=int, default=2, help="calls per chunk")
    h.add_report(p, "scale-<preset>.md")
    args = p.parse_args()
    if not args.report:
        h.write_json(OUT / f"scale-{args.preset}.json", measure(args))
    write_report(args.preset)


if __name__ == "__main__":
    main()
