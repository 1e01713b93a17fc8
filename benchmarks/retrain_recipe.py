"""Does the retraining recipe, not just its length, close the gap at 50 % of the parameters removed?

    python -m benchmarks.retrain_recipe mnist-dit --steps 1500 --recipe cosine-ema
    python -m benchmarks.retrain_recipe mnist-dit --method depth --mode progressive --ratio 0.375 --steps 3000
    python -m benchmarks.retrain_recipe --report

Layers (``--method layers``): prunes with the output-loss criterion (knapsack, as ``layer_pruning``),
retrains with normalised KD on the zoo's training data. Depth (``--method depth``): UPDP on the blocks
chosen by their linearisation loss, as ``depth_pruning``. Both are evaluated exactly as those benchmarks
do (256 images, DDIM-20, the same seeds, FID / accuracy / PSNR against the full model), so their rows sit
beside those tables.

Recipes: ``constant`` (the layer bench's: lr 2e-4 throughout, the last weights) and ``cosine-ema`` (what the
zoo models were trained with: warm-up, cosine decay to zero from ``--lr``, and the weights' moving average
at 0.999). The retraining time is measured with 2 threads, alone on the machine; a row whose time was
taken beside another job says so in its ``note``.
"""

from __future__ import annotations

from benchmarks import harness as h

OUT = {"layers": h.RESULTS / "layers", "depth": h.RESULTS / "depth"}
MODELS = {"layers": h.WORK / "layers-bench", "depth": h.WORK / "depth-bench"}
RECIPES = {"constant": {"lr_schedule": "constant", "ema": 0.0},
           "cosine-ema": {"lr_schedule": "cosine", "warmup": 100, "ema": 0.999}}
DEPTH_LABELS = {"progressive": "progressive UPDP", "abrupt": "abrupt linearisation", "remove": "remove + KD"}


def learning_rate(args) -> float:
    return args.lr if args.lr else (2e-4 if args.recipe == "constant" else 5e-4)


def tag_of(args) -> str:
    """The pruned model's folder name: every setting that makes it differ."""
    lr = learning_rate(args)
    pu = f"-pu{args.p_uncond:g}" if args.p_uncond else ""
    seed = f"-seed{args.seed}" if args.seed else ""
    if args.method == "layers":
        return (f"{args.model}-output-r{args.ratio:g}-{args.feature_kd}-{args.recipe}-{args.steps}-lr{lr:g}"
                f"-ends{pu}{seed}")
    ramp = f"-ramp{args.ramp:g}" if ramped(args) else ""
    return f"{args.model}-depth-r{args.ratio:g}-{args.mode}-{args.recipe}-{args.steps}-lr{lr:g}{pu}{ramp}{seed}"


def ramped(args) -> bool:
    """A depth row whose progressive ramp is not the default one."""
    return args.method == "depth" and args.ramp != 0.5 and args.mode == "progressive"


def prune(m: h.Model, args, tag: str):
    """Prune and retrain; ``(result, what was pruned, training seconds)``."""
    from dipgo.depth import prune_depth, save_depth
    from dipgo.layers import prune_layers, save_pruned

    kwargs = dict(calibration=m.calibration, data=m.source.training_set(m.pipe, m.calibration),
                  feature_kd=args.feature_kd, progress=True,
                  distill_kwargs={"batch": args.batch, "lr": learning_rate(args), "p_uncond": args.p_uncond,
                                  "seed": args.seed, **RECIPES[args.recipe]},
                  num_inference_steps=20, guidance_scale=m.guidance)
    folder = MODELS[args.method]
    if args.method == "layers":
        res = prune_layers(m.pipe, args.ratio, "output", retrain_steps=args.steps, n_images=8,
                           checkpoint=str(folder / f"{tag}.distill.pt"), **kwargs)
        save_pruned(res.pipe, folder / tag, res.info())
        return res, f"output + {args.feature_kd} KD", res.seconds.get("retrain")
    res = prune_depth(m.pipe, args.ratio, mode=args.mode, train_steps=args.steps, ramp_share=args.ramp,
                      checkpoint=str(folder / f"{tag}.distill.pt"), **kwargs)
    (save_pruned if args.mode == "remove" else save_depth)(res.pipe, folder / tag, res.info())
    return res, DEPTH_LABELS[args.mode], res.seconds.get("train")


def run(args) -> None:
    h.set_threads(args.threads)
    m = h.Model(args.model)
    tag = tag_of(args)
    res, what, seconds = prune(m, args, tag)
    lr = learning_rate(args)
    uncond = f", unconditional {args.p_uncond:.0%}" if args.p_uncond else ""
    ramp = f", ramp over the first {args.ramp:.0%}" if ramped(args) else ""
    seeded = f", training seed {args.seed}" if args.seed else ""
    q = h.QualityPass(m, args.n, steps=20)
    rec = q.record(pipe=res.pipe,
                   label=f"{what}, {args.recipe}, {args.steps} steps, lr {lr:g}{uncond}{ramp}{seeded}",
                   method=args.method, p_uncond=args.p_uncond, seed=args.seed,
                   ramp=args.ramp if ramped(args) else None, model=args.model, ratio=args.ratio,
                   recipe=args.recipe, kd=args.feature_kd, retrain_steps=args.steps, lr=lr, batch=args.batch,
                   params_full=res.params_full, params=res.params, layers=res.selection.names,
                   mode=args.mode if args.method == "depth" else None, retrain_seconds=seconds,
                   threads=args.threads, folder=tag, features="run ends",
                   final_loss=res.history[-1] if res.history else None, note=args.note)
    print(f"{rec['label']}: {h.summary(rec)} (full FID {q.q_full['fid']:.2f}), retrain {seconds} s", flush=True)
    path = OUT[args.method] / "recipe.json"
    rows = [r for r in h.read_json(path, []) if (r["model"], r["ratio"], r["label"]) != (args.model, args.ratio,
                                                                                          rec["label"])]
    h.write_json(path, rows + [rec])


INTRO = {"layers": ("# Retraining recipe for layer-pruned models",
                    "Output-loss criterion (knapsack); `removed` is the requested share of the denoiser's "
                    "parameters (DiT blocks are coarse, so more goes)."),
         "depth": ("# Training recipe for depth-pruned models",
                   "Blocks chosen by their linearisation loss; `removed` is the share of blocks.")}
HEAD = ("model", "removed", "row", "feature KD", "features distilled", "unconditional", "steps", "lr", "MACs",
        "FID (full)", "accuracy (full)", "PSNR vs full", "training", "note")


def cells(r: dict) -> list[str]:
    share = f" ({1 - r['params'] / r['params_full']:.0%} of params)" if r.get("params_full") else ""
    ramp = f", ramp over {r['ramp']:.0%}" if r.get("ramp") else ""
    ramp += f", training seed {r['seed']}" if r.get("seed") else ""
    return [r["model"], f"{r['ratio']:.0%}{share}", f"{r['label'].split(',')[0]}, {r['recipe']}{ramp}",
            r.get("kd", "normalized"), r.get("features", "every block"), f"{r.get('p_uncond', 0):.0%}",
            r["retrain_steps"], f"{r['lr']:g}", f"{r['macs_speedup']:.2f}x", f"{r['fid']:.2f} ({r['fid_full']:.2f})",
            f"{r['cond_acc']:.1%} ({r['cond_acc_full']:.1%})", f"{r['psnr_vs_full']:.2f} dB",
            f"{r['retrain_seconds'] / 60:.1f} min", r.get("note") or ""]


def report() -> None:
    for method, folder in OUT.items():
        rows = h.read_json(folder / "recipe.json")
        if rows is None:
            continue
        title, what = INTRO[method]
        lines = [title, "", f"{what} Batch 32, on the zoo's training data; evaluated as in `{method}.md` (256 images, "
                 f"DDIM-20, the same seeds). `{h.how_to_run('retrain_recipe', '--method ' + method)}`. Training "
                 "time: 2 threads, alone on the machine unless the note says otherwise.", "",
                 "`unconditional`: the share of training examples given the unconditional conditioning (the "
                 "branch classifier-free guidance calls at every step); rows without it never taught that branch.",
                 ""]
        h.write_markdown(folder / "recipe.md", lines + h.table(HEAD, [cells(r) for r in rows]))


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("model", nargs="?", default="mnist-dit")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--method", choices=("layers", "depth"), default="layers")
    p.add_argument("--mode", choices=tuple(DEPTH_LABELS), default="progressive", help="depth pruning only")
    p.add_argument("--feature-kd", choices=("normalized", "plain"), default="normalized")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="cosine-ema")
    p.add_argument("--lr", type=float, default=None, help="default 2e-4 (constant) or 5e-4 (cosine-ema)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--p-uncond", type=float, default=0.1,
                   help="share of examples trained unconditionally (0: the rows before it existed)")
    p.add_argument("--ramp", type=float, default=0.5,
                   help="depth, progressive: share of the steps over which the blend reaches linear")
    p.add_argument("--seed", type=int, default=0,
                   help="training seed (batches, timesteps, noise); non-zero seeds are tagged, to measure the spread")
    p.add_argument("--n", type=int, default=256)
    h.add_threads(p, 2)
    p.add_argument("--note", default="")
    h.add_report(p, "recipe.md (layers and depth)")
    args = p.parse_args()
    report() if args.report else run(args)


if __name__ == "__main__":
    main()
