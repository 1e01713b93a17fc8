"""Issue 10 benchmark: LAPTOP-Diff layer pruning on the zoo models, at 25 % and 50 % of the denoiser's
parameters removed, against its baselines, and combined with DiP-GO.

    python benchmarks/layers_bench.py mnist-sd            # quality pass (one model per process)
    python benchmarks/layers_bench.py mnist-dit
    python benchmarks/layers_bench.py --latency           # latency pass: alone on the machine
    python benchmarks/layers_bench.py --report            # md + png from the JSON files

Rows per model and ratio: each criterion one-shot (output loss, magnitude, similarity, handcrafted
BK-SDM order); output loss + normalised KD; output loss + plain KD; handcrafted + normalised KD (the
retrained rows get the same steps, batch and learning rate, on the zoo's own training data); then
DiP-GO (ratio 0.7) searched on the best retrained model. Quality: ``--n`` images (balanced digits,
the same seeds for every row), DDIM-``--steps``, FID against the shipped MNIST statistics, the MNIST
classifier's accuracy, PSNR/SSIM against the full model's images. Additivity: 50 random layer sets,
joint output loss vs the sum of single-layer losses (Pearson, Spearman, scatter plot).

The quality pass may run one model per process in parallel (1 thread each); the latency column is
measured afterwards by ``--latency`` alone on the machine: the denoiser call of every saved model at
batch 16 (CFG doubles it), median of 20 calls after warm-up, as a ratio to the full model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "benchmarks" / "results" / "layers"
MODELS = ROOT / "out" / "layers-bench"  # pruned model folders (not committed: sizes)
RATIOS = (0.25, 0.5)
OLD_RECIPE = ("constant learning rate, the last weights, features taught at every block (measured before the "
              "recipe of recipe.md)")
NEW_RECIPE = "cosine learning rate with warm-up, EMA 0.999 weights, features taught at the end of each removed run"


def quality_pass(model: str, args) -> None:
    import torch

    from dipgo import zoo
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.cache.search import Search, SearchConfig
    from dipgo.evaluate.baselines import AppliedSchedule, Full
    from dipgo.evaluate.evaluation import Evaluator, Judge, compare
    from dipgo.layers import layer_scores, load_pruned, prune_layers, save_pruned
    from dipgo.layers.criteria import additivity
    from dipgo.layers.data import capture_calls
    from dipgo.layers.select import select
    from dipgo.models.pipelines import default_calibration, set_scheduler

    torch.set_num_threads(args.threads)
    pipe, source = zoo.load(model)
    set_scheduler(pipe, "ddim")
    cal = default_calibration(pipe, defaults=source.defaults)
    guidance = source.guidance_scale
    judge = Judge.from_source(source)
    common = dict(n_images=8, num_inference_steps=20, guidance_scale=guidance)
    report: dict = {"model": model, "n": args.n, "steps": args.steps, "retrain_steps": args.retrain_steps,
                    "retrain_batch": args.batch, "lr": args.lr, "threads": args.threads, "rows": [],
                    "recipe": NEW_RECIPE}
    settings = ("n", "steps", "retrain_steps", "retrain_batch", "lr", "recipe")
    previous = OUT / f"{model}.json"
    if previous.exists():  # an interrupted run: rows already measured with these settings are kept
        old = json.loads(previous.read_text())
        if all(old.get(k) == report[k] for k in settings):
            report["rows"] = [r for r in old["rows"] if args.extra_steps or not r["label"].startswith("DiP-GO")]

    def done(label: str, ratio: float) -> bool:
        return any(r["label"] == label and r["ratio"] == ratio for r in report["rows"])

    def evaluate(p, label: str, extra: dict, applied=None) -> dict:
        ev = Evaluator(p, args.n, 0, guidance, 32, cal, judge)
        try:
            run = ev.run(applied or Full().bind(p, args.steps, guidance), progress=False)
            q = ev.quality(run, full_run, progress=False)
        finally:
            ev.close()
        rec = compare(ev_full, run, full_run, q, q_full)
        rec.update(extra, label=label, macs_speedup=full_run.macs / run.macs)
        print(f"{model} {label}: MACs {rec['macs_speedup']:.2f}x, FID {rec['fid']:.2f}, acc {rec['cond_acc']:.3f}, "
              f"PSNR {rec['psnr_vs_full']:.2f}", flush=True)
        report["rows"].append(rec)
        (OUT / f"{model}.json").write_text(json.dumps(report, indent=1))
        return rec

    OUT.mkdir(parents=True, exist_ok=True)
    ev_full = Evaluator(pipe, args.n, 0, guidance, 32, cal, judge)
    full_run = ev_full.run(Full().bind(pipe, args.steps, guidance), progress=False)
    q_full = ev_full.quality(full_run, None, progress=False)
    ev_full.close()
    params_full = sum(p.numel() for p in (getattr(pipe, "unet", None) or pipe.transformer).parameters())
    report["full"] = dict(q_full, params=params_full, macs=full_run.macs)

    # criteria once per model; additivity of the output loss
    t0 = time.perf_counter()
    scored = {c: layer_scores(pipe, c, cal, progress=False, **common) for c in
              ("output", "magnitude", "similarity", "handcrafted")}
    report["criteria_seconds"] = round(time.perf_counter() - t0, 1)
    cands, single, _ = scored["output"]
    calls = capture_calls(pipe, cal, **common)
    add = additivity(pipe.unet if hasattr(pipe, "unet") else pipe.transformer, calls, single, sets=50, seed=0)
    report["additivity"] = {"pearson": add.pearson, "spearman": add.spearman, "summed": add.summed,
                            "joint": add.joint, "sizes": add.sizes}
    report["single_losses"] = single
    report["candidates"] = [{"name": c.name, "params": c.params, "macs": c.macs} for c in cands]
    for ratio in RATIOS:
        k = select(cands, single, ratio, params_full, method="knapsack")
        g = select(cands, single, ratio, params_full, method="greedy")
        report.setdefault("knapsack_vs_greedy", []).append(
            {"ratio": ratio, "knapsack": {"loss_sum": k.score, "removed": k.removed, "layers": k.names},
             "greedy": {"loss_sum": g.score, "removed": g.removed, "layers": g.names}})
    data = source.training_set(pipe, cal)
    best = None
    for ratio in RATIOS:
        for criterion in ("output", "magnitude", "similarity", "handcrafted"):
            if done(f"{criterion}, one-shot", ratio):
                continue
            res = prune_layers(pipe, ratio, criterion, calibration=cal, progress=False,
                               scored=scored[criterion][:2], **common)
            save_pruned(res.pipe, MODELS / f"{model}-{criterion}-r{ratio:g}-oneshot", res.info())
            evaluate(res.pipe, f"{criterion}, one-shot", {"ratio": ratio, "criterion": criterion, "kd": None,
                                                          "params": res.params, "layers": res.selection.names})
        for criterion, kd in (("output", "normalized"), ("output", "plain"), ("handcrafted", "normalized")):
            tag = f"{model}-{criterion}-r{ratio:g}-{kd}"
            if done(f"{criterion} + {kd} KD", ratio):
                rec = next(r for r in report["rows"] if r["label"] == f"{criterion} + {kd} KD" and r["ratio"] == ratio)
                if ratio == max(RATIOS) and (best is None or rec["fid"] < best[1]["fid"]):
                    best = (load_pruned(MODELS / tag), rec)
                continue
            res = prune_layers(pipe, ratio, criterion, calibration=cal, retrain_steps=args.retrain_steps,
                               scored=scored[criterion][:2],
                               feature_kd=kd, data=data, distill_kwargs={"batch": args.batch, "lr": args.lr},
                               checkpoint=str(MODELS / f"{tag}.distill.pt"), progress=True, **common)
            save_pruned(res.pipe, MODELS / tag, res.info())
            rec = evaluate(res.pipe, f"{criterion} + {kd} KD", {
                "ratio": ratio, "criterion": criterion, "kd": kd, "params": res.params,
                "layers": res.selection.names, "retrain_seconds": res.seconds.get("retrain"),
                "final_loss": res.history[-1] if res.history else None})
            if ratio == max(RATIOS) and (best is None or rec["fid"] < best[1]["fid"]):
                best = (res.pipe, rec)
    if args.extra_steps:  # the KD comparison again with a longer budget, at the largest ratio only
        for kd in ("normalized", "plain"):
            label, ratio = f"output + {kd} KD, {args.extra_steps} steps", max(RATIOS)
            if done(label, ratio):
                continue
            tag = f"{model}-output-r{ratio:g}-{kd}-{args.extra_steps}"
            res = prune_layers(pipe, ratio, "output", calibration=cal, retrain_steps=args.extra_steps, feature_kd=kd,
                               data=data, distill_kwargs={"batch": args.batch, "lr": args.lr},
                               checkpoint=str(MODELS / f"{tag}.distill.pt"), progress=True,
                               scored=scored["output"][:2], **common)
            save_pruned(res.pipe, MODELS / tag, res.info())
            evaluate(res.pipe, label, {"ratio": ratio, "criterion": "output", "kd": kd, "params": res.params,
                                       "layers": res.selection.names, "retrain_steps": args.extra_steps,
                                       "retrain_seconds": res.seconds.get("retrain"), "folder": tag})
        report["seconds"] = round(time.perf_counter() - t0, 1)
        (OUT / f"{model}.json").write_text(json.dumps(report, indent=1))
        return
    # DiP-GO on top of the best 50 % model
    pruned, rec = best
    set_scheduler(pruned, "ddim")
    cfg = SearchConfig(ratio=0.7, num_inference_steps=args.steps, guidance_scale=guidance, iterations=60,
                       batch=4 if model == "mnist-sd" else 2)
    result = Search(pruned, cfg, calibration=cal).run(progress=False)
    schedule = schedule_at_ratio(result, 0.7)
    schedule.save(OUT / f"{model}-combined.schedule.json")
    evaluate(pruned, f"DiP-GO 0.7 on {rec['label']} (50 %)",
             {"ratio": 0.5, "criterion": rec["criterion"], "kd": rec["kd"], "params": rec["params"],
              "dipgo_ratio": 0.7, "search_seconds": round(result.seconds, 1)},
             applied=AppliedSchedule(pruned, schedule, "dipgo"))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (OUT / f"{model}.json").write_text(json.dumps(report, indent=1))


def latency_pass() -> None:
    import torch

    from dipgo import zoo
    from dipgo.layers.io import load_pruned
    from dipgo.models.costs import measure_latency
    from dipgo.models.pipelines import capture_denoiser_call, default_calibration, denoiser_of

    torch.set_num_threads(2)
    for model in ("mnist-sd", "mnist-dit"):
        path = OUT / f"{model}.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        pipe, source = zoo.load(model)
        cal = default_calibration(pipe, defaults=source.defaults)

        def latency(p, cal=cal) -> float:
            args, kwargs = capture_denoiser_call(p, cal)
            batch = 32  # 16 images, CFG doubles the batch
            args = (args[0].repeat(batch, *[1] * (args[0].dim() - 1)), *args[1:])
            kwargs = {k: (v.repeat(batch, *[1] * (v.dim() - 1)) if torch.is_tensor(v) and v.dim() > 0
                          and v.shape[0] == 1 else v) for k, v in kwargs.items()}
            den = denoiser_of(p)
            with torch.no_grad():
                return measure_latency(lambda: den(*args, **kwargs), runs=60, warmup=5).median_ms

        full = latency(pipe)
        report["full"]["latency_ms"] = full
        measured: dict[tuple, float] = {}  # one measurement per architecture: rows with the same layers share it
        for row in report["rows"]:
            if "dipgo_ratio" in row:  # a schedule's speed is a whole-pipeline matter: see its MACs column
                continue
            tag = row.get("folder") or f"{model}-{row['criterion']}-r{row['ratio']:g}-{row['kd'] or 'oneshot'}"
            folder = MODELS / tag
            key = tuple(row["layers"])
            if key not in measured and folder.exists():
                measured[key] = latency(load_pruned(folder))
            if key in measured:
                row["denoiser_latency_ms"] = measured[key]
                row["latency_ratio"] = full / measured[key]
        report["latency_note"] = ("denoiser call at batch 32 (16 images with CFG), median of 60 after 5 warm-up, "
                                  "2 threads, measured alone on the machine, once per distinct set of removed layers")
        path.write_text(json.dumps(report, indent=1))
        print(f"{model}: latency measured for {sum('latency_ratio' in r for r in report['rows'])} rows")


def write_report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# LAPTOP-Diff layer pruning (issue 10)", ""]
    reports = [json.loads((OUT / f"{m}.json").read_text()) for m in ("mnist-sd", "mnist-dit")
               if (OUT / f"{m}.json").exists()]
    fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 4), squeeze=False)
    for ax, rep in zip(axes[0], reports, strict=True):
        f = rep["full"]
        a = rep["additivity"]
        lines += [f"## {rep['model']}", "",
                  f"Full model: {f['params'] / 1e6:.2f} M parameters, FID {f['fid']:.2f}, accuracy "
                  f"{f['cond_acc']:.1%} ({rep['n']} images, DDIM-{rep['steps']}). Retrained rows: "
                  f"{rep['retrain_steps']} steps x batch {rep['retrain_batch']}, lr {rep['lr']}, "
                  f"{rep.get('recipe', OLD_RECIPE)}, on the zoo's training data. Latency: "
                  + rep.get("latency_note", "not measured") + ".", "",
                  "| ratio | row | params | MACs speedup | latency ratio | FID | accuracy | PSNR vs full |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rep["rows"]:
            lat = f"{r['latency_ratio']:.2f}x" if r.get("latency_ratio") else "-"
            lines.append(f"| {r['ratio']:g} | {r['label']} | {r['params'] / 1e6:.2f} M | {r['macs_speedup']:.2f}x | "
                         f"{lat} | {r['fid']:.2f} | {r['cond_acc']:.1%} | {r['psnr_vs_full']:.2f} dB |")
        lines += ["", f"Additivity (50 random layer sets): Pearson {a['pearson']:.3f}, Spearman {a['spearman']:.3f}.",
                  "", "| ratio | knapsack: summed loss (removed) | greedy: summed loss (removed) |", "|---|---|---|"]
        for kg in rep["knapsack_vs_greedy"]:
            lines.append(f"| {kg['ratio']:g} | {kg['knapsack']['loss_sum']:.5f} ({kg['knapsack']['removed']:.1%}) | "
                         f"{kg['greedy']['loss_sum']:.5f} ({kg['greedy']['removed']:.1%}) |")
        lines.append("")
        ax.scatter(a["summed"], a["joint"], s=12)
        hi = max(max(a["summed"]), max(a["joint"]))
        ax.plot([0, hi], [0, hi], "k--", lw=0.8)
        ax.set_xlabel("sum of single-layer output losses")
        ax.set_ylabel("joint output loss")
        ax.set_title(f"{rep['model']}: Pearson {a['pearson']:.2f}, Spearman {a['spearman']:.2f}")
    fig.tight_layout()
    fig.savefig(OUT / "additivity.png", dpi=110)
    (OUT / "layers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--retrain-steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extra-steps", type=int, default=0, help="only add the normalised/plain KD rows at 50 %% with "
                   "this many retraining steps (after a full run)")
    p.add_argument("--latency", action="store_true")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if args.latency:
        latency_pass()
    elif args.report:
        write_report()
    else:
        quality_pass(args.model or "mnist-sd", args)


if __name__ == "__main__":
    main()
