"""LAPTOP-Diff layer pruning on the zoo models, at 25 % and 50 % of the denoiser's parameters removed,
against its baselines, and combined with DiP-GO.

    python -m benchmarks.layer_pruning mnist-sd            # quality pass (one model per process)
    python -m benchmarks.layer_pruning mnist-dit
    python -m benchmarks.layer_pruning --latency           # latency pass: alone on the machine
    python -m benchmarks.layer_pruning --report            # md + png from the JSON files

Rows per model and ratio: each criterion one-shot (output loss, magnitude, similarity, handcrafted
BK-SDM order); output loss + normalised KD; output loss + plain KD; handcrafted + normalised KD (the
retrained rows get the same steps, batch and learning rate, on the zoo's own training data); then
DiP-GO (ratio 0.7) searched on the best retrained model. Quality: ``--n`` images (balanced digits,
the same seeds for every row), DDIM-``--steps``, FID against the shipped MNIST statistics, the MNIST
classifier's accuracy, PSNR/SSIM against the full model's images. Additivity: 50 random layer sets,
joint output loss vs the sum of single-layer losses (Pearson, Spearman, scatter plot).

The quality pass may run one model per process in parallel (1 thread each); the latency column is
measured afterwards by ``--latency`` alone on the machine: the denoiser call of every saved model at
batch 16 (CFG doubles it), median of 60 calls after warm-up, as a ratio to the full model's.
"""

from __future__ import annotations

import time

from benchmarks import harness as h

OUT = h.RESULTS / "layers"
MODELS = h.WORK / "layers-bench"  # pruned model folders (not committed: sizes)
ZOO = ("mnist-sd", "mnist-dit")
RATIOS = (0.25, 0.5)
CRITERIA = ("output", "magnitude", "similarity", "handcrafted")
RETRAINED = (("output", "normalized"), ("output", "plain"), ("handcrafted", "normalized"))
OLD_RECIPE = ("constant learning rate, the last weights, features taught at every block (measured before the "
              "recipe of recipe.md)")
NEW_RECIPE = "cosine learning rate with warm-up, EMA 0.999 weights, features taught at the end of each removed run"
SETTINGS = ("n", "steps", "retrain_steps", "retrain_batch", "lr", "recipe")


class LayerBench:
    """One model's quality pass: its report (resumed if the settings match), the full model's images, and
    every row measured against them."""

    def __init__(self, model: str, args):
        from dipgo.models.pipelines import denoiser_of

        self.args, self.m = args, h.Model(model)
        self.common = dict(n_images=8, num_inference_steps=20, guidance_scale=self.m.guidance)
        report = {"model": model, "n": args.n, "steps": args.steps, "retrain_steps": args.retrain_steps,
                  "retrain_batch": args.batch, "lr": args.lr, "threads": args.threads, "rows": [], "recipe": NEW_RECIPE}
        self.rows = h.RowReport(OUT / f"{model}.json", report, SETTINGS,
                                keep=lambda r: args.extra_steps or not r["label"].startswith("DiP-GO"))
        self.report = report
        self.q = h.QualityPass(self.m, args.n, args.steps)
        self.params_full = sum(p.numel() for p in denoiser_of(self.m.pipe).parameters())
        report["full"] = dict(self.q.q_full, params=self.params_full, macs=self.q.full.macs)

    def find(self, label: str, ratio: float) -> dict | None:
        return self.rows.find(label=label, ratio=ratio)

    def evaluate(self, pipe, label: str, extra: dict, applied=None) -> dict:
        return self.rows.add(self.q.record(applied, pipe, **extra, label=label), f"{self.m.name} ")

    def criteria(self) -> dict:
        """Every criterion's scores once per model; the output loss's additivity; knapsack against greedy."""
        from dipgo.layers import layer_scores
        from dipgo.layers.criteria import additivity
        from dipgo.models.data import capture_calls
        from dipgo.models.pipelines import denoiser_of
        from dipgo.models.select import select

        m = self.m
        t0 = time.perf_counter()
        scored = {c: layer_scores(m.pipe, c, m.calibration, progress=False, **self.common) for c in CRITERIA}
        self.report["criteria_seconds"] = round(time.perf_counter() - t0, 1)
        cands, single, _ = scored["output"]
        calls = capture_calls(m.pipe, m.calibration, **self.common)
        add = additivity(denoiser_of(m.pipe), calls, single, sets=50, seed=0)
        self.report["additivity"] = {"pearson": add.pearson, "spearman": add.spearman, "summed": add.summed,
                                     "joint": add.joint, "sizes": add.sizes}
        self.report["single_losses"] = single
        self.report["candidates"] = [{"name": c.name, "params": c.params, "macs": c.macs} for c in cands]
        for ratio in RATIOS:
            k, g = (select(cands, single, ratio, self.params_full, method=x) for x in ("knapsack", "greedy"))
            self.report.setdefault("knapsack_vs_greedy", []).append(
                {"ratio": ratio, "knapsack": {"loss_sum": k.score, "removed": k.removed, "layers": k.names},
                 "greedy": {"loss_sum": g.score, "removed": g.removed, "layers": g.names}})
        return scored

    def one_shot(self, ratio: float, scored: dict) -> None:
        from dipgo.layers import prune_layers, save_pruned

        for criterion in CRITERIA:
            if self.find(f"{criterion}, one-shot", ratio):
                continue
            res = prune_layers(self.m.pipe, ratio, criterion, calibration=self.m.calibration, progress=False,
                               scored=scored[criterion][:2], **self.common)
            save_pruned(res.pipe, MODELS / f"{self.m.name}-{criterion}-r{ratio:g}-oneshot", res.info())
            self.evaluate(res.pipe, f"{criterion}, one-shot", {"ratio": ratio, "criterion": criterion, "kd": None,
                                                               "params": res.params, "layers": res.selection.names})

    def retrain(self, ratio: float, criterion: str, kd: str, steps: int, tag: str, scored: dict, data):
        from dipgo.layers import prune_layers, save_pruned

        res = prune_layers(self.m.pipe, ratio, criterion, calibration=self.m.calibration, retrain_steps=steps,
                           scored=scored[criterion][:2], feature_kd=kd, data=data,
                           distill_kwargs={"batch": self.args.batch, "lr": self.args.lr},
                           checkpoint=str(MODELS / f"{tag}.distill.pt"), progress=True, **self.common)
        save_pruned(res.pipe, MODELS / tag, res.info())
        return res

    def retrained(self, ratio: float, scored: dict, data, best: tuple | None) -> tuple | None:
        """The retrained rows at ``ratio``; returns the best (lowest FID) at the largest ratio so far, as
        ``(pipeline, or the folder of one measured before, record)``."""
        for criterion, kd in RETRAINED:
            tag, label = f"{self.m.name}-{criterion}-r{ratio:g}-{kd}", f"{criterion} + {kd} KD"
            rec, pipe = self.find(label, ratio), tag
            if rec is None:
                res = self.retrain(ratio, criterion, kd, self.args.retrain_steps, tag, scored, data)
                pipe = res.pipe
                rec = self.evaluate(res.pipe, label, {
                    "ratio": ratio, "criterion": criterion, "kd": kd, "params": res.params,
                    "layers": res.selection.names, "retrain_seconds": res.seconds.get("retrain"),
                    "final_loss": res.history[-1] if res.history else None})
            if ratio == max(RATIOS) and (best is None or rec["fid"] < best[1]["fid"]):
                best = (pipe, rec)
        return best

    def extra_steps(self, scored: dict, data) -> None:
        """The KD comparison again with a longer budget, at the largest ratio only."""
        steps, ratio = self.args.extra_steps, max(RATIOS)
        for kd in ("normalized", "plain"):
            label = f"output + {kd} KD, {steps} steps"
            if self.find(label, ratio):
                continue
            tag = f"{self.m.name}-output-r{ratio:g}-{kd}-{steps}"
            res = self.retrain(ratio, "output", kd, steps, tag, scored, data)
            self.evaluate(res.pipe, label, {"ratio": ratio, "criterion": "output", "kd": kd, "params": res.params,
                                            "layers": res.selection.names, "retrain_steps": steps,
                                            "retrain_seconds": res.seconds.get("retrain"), "folder": tag})

    def combined(self, best: tuple) -> None:
        """DiP-GO (ratio 0.7) searched on the best retrained model at the largest ratio."""
        from dipgo.cache.postprocess import schedule_at_ratio
        from dipgo.cache.search import Search, SearchConfig
        from dipgo.evaluate.baselines import AppliedSchedule
        from dipgo.layers import load_pruned
        from dipgo.models.pipelines import set_scheduler

        pruned, rec = best
        pruned = load_pruned(MODELS / pruned) if isinstance(pruned, str) else pruned
        set_scheduler(pruned, "ddim")
        cfg = SearchConfig(ratio=0.7, num_inference_steps=self.args.steps, guidance_scale=self.m.guidance,
                           iterations=60, batch=4 if self.m.name == "mnist-sd" else 2)
        result = Search(pruned, cfg, calibration=self.m.calibration).run(progress=False)
        schedule = schedule_at_ratio(result, 0.7)
        schedule.save(OUT / f"{self.m.name}-combined.schedule.json")
        self.evaluate(pruned, f"DiP-GO 0.7 on {rec['label']} (50 %)",
                      {"ratio": 0.5, "criterion": rec["criterion"], "kd": rec["kd"], "params": rec["params"],
                       "dipgo_ratio": 0.7, "search_seconds": round(result.seconds, 1)},
                      applied=AppliedSchedule(pruned, schedule, "dipgo"))


def quality_pass(model: str, args) -> None:
    h.set_threads(args.threads)
    b = LayerBench(model, args)
    t0 = time.perf_counter()
    scored = b.criteria()
    data = b.m.source.training_set(b.m.pipe, b.m.calibration)
    best = None
    for ratio in RATIOS:
        b.one_shot(ratio, scored)
        best = b.retrained(ratio, scored, data, best)
    if args.extra_steps:
        b.extra_steps(scored, data)
    else:
        b.combined(best)
    b.report["seconds"] = round(time.perf_counter() - t0, 1)
    b.rows.save()


def latency(pipe, calibration) -> float:
    """Median ms of the denoiser call of ``pipe`` at 16 images (CFG doubles them to 32 rows)."""
    import torch

    from dipgo.models.costs import measure_latency
    from dipgo.models.pipelines import denoiser_of

    args, kwargs = h.denoiser_call(pipe, calibration, 32)
    den = denoiser_of(pipe)
    with torch.no_grad():
        return measure_latency(lambda: den(*args, **kwargs), runs=60, warmup=5).median_ms


def latency_pass() -> None:
    """The denoiser call of every saved model at 16 images (32 rows with CFG) against the full model's."""
    from dipgo.layers import load_pruned

    h.set_threads(2)
    for model in ZOO:
        report = h.read_json(OUT / f"{model}.json")
        if report is None:
            continue
        m = h.Model(model, scheduler=None)
        full = report["full"]["latency_ms"] = latency(m.pipe, m.calibration)
        measured: dict[tuple, float] = {}  # one measurement per architecture: rows with the same layers share it
        for row in report["rows"]:
            if "dipgo_ratio" in row:  # a schedule's speed is a whole-pipeline matter: see its MACs column
                continue
            folder = MODELS / (row.get("folder") or f"{model}-{row['criterion']}-r{row['ratio']:g}-"
                                                    f"{row['kd'] or 'oneshot'}")
            key = tuple(row["layers"])
            if key not in measured and folder.exists():
                measured[key] = latency(load_pruned(folder), m.calibration)
            if key in measured:
                row["denoiser_latency_ms"], row["latency_ratio"] = measured[key], full / measured[key]
        report["latency_note"] = ("denoiser call at batch 32 (16 images with CFG), median of 60 after 5 warm-up, "
                                  "2 threads, measured alone on the machine, once per distinct set of removed layers")
        h.write_json(OUT / f"{model}.json", report)
        print(f"{model}: latency measured for {sum('latency_ratio' in r for r in report['rows'])} rows")


def model_section(rep: dict) -> list[str]:
    f, a = rep["full"], rep["additivity"]
    lines = [f"## {rep['model']}", "",
             f"Full model: {f['params'] / 1e6:.2f} M parameters, FID {f['fid']:.2f}, accuracy "
             f"{f['cond_acc']:.1%} ({rep['n']} images, DDIM-{rep['steps']}). Retrained rows: "
             f"{rep['retrain_steps']} steps x batch {rep['retrain_batch']}, lr {rep['lr']}, "
             f"{rep.get('recipe', OLD_RECIPE)}, on the zoo's training data. Latency: "
             + rep.get("latency_note", "not measured") + ".", ""]
    lines += h.table(("ratio", "row", "params", "MACs speedup", "latency ratio", "FID", "accuracy", "PSNR vs full"),
                     [[f"{r['ratio']:g}", r["label"], f"{r['params'] / 1e6:.2f} M", f"{r['macs_speedup']:.2f}x",
                       f"{r['latency_ratio']:.2f}x" if r.get("latency_ratio") else "-", f"{r['fid']:.2f}",
                       f"{r['cond_acc']:.1%}", f"{r['psnr_vs_full']:.2f} dB"] for r in rep["rows"]])
    lines += ["", f"Additivity (50 random layer sets): Pearson {a['pearson']:.3f}, Spearman {a['spearman']:.3f}.", ""]
    lines += h.table(("ratio", "knapsack: summed loss (removed)", "greedy: summed loss (removed)"),
                     [[f"{kg['ratio']:g}", f"{kg['knapsack']['loss_sum']:.5f} ({kg['knapsack']['removed']:.1%})",
                       f"{kg['greedy']['loss_sum']:.5f} ({kg['greedy']['removed']:.1%})"]
                      for kg in rep["knapsack_vs_greedy"]])
    return lines + [""]


def write_report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = [r for r in (h.read_json(OUT / f"{m}.json") for m in ZOO) if r is not None]
    lines = ["# LAPTOP-Diff layer pruning", "", f"`{h.how_to_run('layer_pruning', 'MODEL')}`, then `--latency`.", ""]
    fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 4), squeeze=False)
    for ax, rep in zip(axes[0], reports, strict=True):
        lines += model_section(rep)
        a = rep["additivity"]
        ax.scatter(a["summed"], a["joint"], s=12)
        hi = max(max(a["summed"]), max(a["joint"]))
        ax.plot([0, hi], [0, hi], "k--", lw=0.8)
        ax.set_xlabel("sum of single-layer output losses")
        ax.set_ylabel("joint output loss")
        ax.set_title(f"{rep['model']}: Pearson {a['pearson']:.2f}, Spearman {a['spearman']:.2f}")
    fig.tight_layout()
    h.write_figure(fig, OUT / "additivity.png")
    h.write_markdown(OUT / "layers.md", lines)


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--retrain-steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    h.add_threads(p, 1)
    p.add_argument("--extra-steps", type=int, default=0, help="only add the normalised/plain KD rows at 50 %% with "
                   "this many retraining steps (after a full run)")
    p.add_argument("--latency", action="store_true", help="the latency pass (alone on the machine)")
    h.add_report(p, "layers.md and additivity.png")
    args = p.parse_args()
    if args.latency:
        latency_pass()
    elif args.report:
        write_report()
    else:
        quality_pass(args.model or "mnist-sd", args)


if __name__ == "__main__":
    main()
