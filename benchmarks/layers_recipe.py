"""Issue 10: does the retraining recipe, not just its length, close the gap at 50 % of the parameters removed?

    python benchmarks/layers_recipe.py mnist-dit --steps 1500 --recipe cosine-ema
    python benchmarks/layers_recipe.py --report

Prunes with the output-loss criterion (knapsack, as ``layers_bench.py``), retrains with normalised KD on
the zoo's training data, and evaluates exactly as ``layers_bench.py`` does (256 images, DDIM-20, the same
seeds, FID / accuracy / PSNR against the full model), so its rows sit beside that table's.

Recipes: ``constant`` (the layer bench's: lr 2e-4 throughout, the last weights) and ``cosine-ema`` (what the
zoo models were trained with: warm-up, cosine decay to zero from ``--lr``, and the weights' moving average
at 0.999). The retraining time is measured with 2 threads, alone on the machine; a row whose time was
taken beside another job says so in its ``note``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "benchmarks" / "results" / "layers"
DEPTH_OUT = ROOT / "benchmarks" / "results" / "depth"
MODELS = ROOT / "out" / "layers-bench"
DEPTH_MODELS = ROOT / "out" / "depth-bench"
RECIPES = {"constant": {"lr_schedule": "constant", "ema": 0.0},
           "cosine-ema": {"lr_schedule": "cosine", "warmup": 100, "ema": 0.999}}


def run(args) -> None:
    import torch

    from dipgo import zoo
    from dipgo.depth import prune_depth, save_depth
    from dipgo.evaluate.baselines import Full
    from dipgo.evaluate.evaluation import Evaluator, Judge, compare
    from dipgo.layers import prune_layers, save_pruned
    from dipgo.models.pipelines import default_calibration, set_scheduler

    torch.set_num_threads(args.threads)
    pipe, source = zoo.load(args.model)
    set_scheduler(pipe, "ddim")
    cal = default_calibration(pipe, defaults=source.defaults)
    guidance = source.guidance_scale
    judge = Judge.from_source(source)
    data = source.training_set(pipe, cal)
    lr = args.lr if args.lr else (2e-4 if args.recipe == "constant" else 5e-4)
    kwargs = dict(calibration=cal, data=data, feature_kd=args.feature_kd, progress=True,
                  distill_kwargs={"batch": args.batch, "lr": lr, "p_uncond": args.p_uncond, "seed": args.seed,
                                   **RECIPES[args.recipe]},
                  num_inference_steps=20, guidance_scale=guidance)
    pu = f"-pu{args.p_uncond:g}" if args.p_uncond else ""
    ramp = f"-ramp{args.ramp:g}" if args.ramp != 0.5 and args.mode == "progressive" else ""
    seed = f"-seed{args.seed}" if args.seed else ""
    if args.method == "layers":
        tag = (f"{args.model}-output-r{args.ratio:g}-{args.feature_kd}-{args.recipe}-{args.steps}-lr{lr:g}"
               f"-ends{pu}{seed}")
        res = prune_layers(pipe, args.ratio, "output", retrain_steps=args.steps, n_images=8,
                           checkpoint=str(MODELS / f"{tag}.distill.pt"), **kwargs)
        save_pruned(res.pipe, MODELS / tag, res.info())
        what = f"output + {args.feature_kd} KD"
        seconds = res.seconds.get("retrain")
    else:
        tag = f"{args.model}-depth-r{args.ratio:g}-{args.mode}-{args.recipe}-{args.steps}-lr{lr:g}{pu}{ramp}{seed}"
        res = prune_depth(pipe, args.ratio, mode=args.mode, train_steps=args.steps, ramp_share=args.ramp,
                          checkpoint=str(DEPTH_MODELS / f"{tag}.distill.pt"), **kwargs)
        (save_pruned if args.mode == "remove" else save_depth)(res.pipe, DEPTH_MODELS / tag, res.info())
        what = {"progressive": "progressive UPDP", "abrupt": "abrupt linearisation", "remove": "remove + KD"}[args.mode]
        seconds = res.seconds.get("train")
    ev_full = Evaluator(pipe, args.n, 0, guidance, 32, cal, judge)
    full_run = ev_full.run(Full().bind(pipe, 20, guidance), progress=False)
    q_full = ev_full.quality(full_run, None, progress=False)
    ev_full.close()
    ev = Evaluator(res.pipe, args.n, 0, guidance, 32, cal, judge)
    run_ = ev.run(Full().bind(res.pipe, 20, guidance), progress=False)
    q = ev.quality(run_, full_run, progress=False)
    ev.close()
    rec = compare(ev_full, run_, full_run, q, q_full)
    uncond = f", unconditional {args.p_uncond:.0%}" if args.p_uncond else ""
    ramped = f", ramp over the first {args.ramp:.0%}" if ramp else ""
    seeded = f", training seed {args.seed}" if seed else ""
    rec.update(label=f"{what}, {args.recipe}, {args.steps} steps, lr {lr:g}{uncond}{ramped}{seeded}",
               method=args.method, p_uncond=args.p_uncond, seed=args.seed, ramp=args.ramp if ramp else None,
               model=args.model, ratio=args.ratio,
               recipe=args.recipe, kd=args.feature_kd,
               retrain_steps=args.steps, lr=lr, batch=args.batch, params_full=res.params_full,
               params=res.params, layers=res.selection.names, mode=args.mode if args.method == "depth" else None,
               macs_speedup=full_run.macs / run_.macs,
               retrain_seconds=seconds, threads=args.threads, folder=tag, features="run ends",
               final_loss=res.history[-1] if res.history else None, note=args.note)
    print(f"{rec['label']}: FID {rec['fid']:.2f} (full {q_full['fid']:.2f}), acc {rec['cond_acc']:.3f}, "
          f"PSNR {rec['psnr_vs_full']:.2f}, retrain {rec['retrain_seconds']} s", flush=True)
    path = (OUT if args.method == "layers" else DEPTH_OUT) / "recipe.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    rows = [r for r in rows if (r["model"], r["ratio"], r["label"]) != (args.model, args.ratio, rec["label"])] + [rec]
    path.write_text(json.dumps(rows, indent=1))


def report() -> None:
    intro = {"layers": ("# Retraining recipe for layer-pruned models (issue 10)",
                        "Output-loss criterion (knapsack); `removed` is the requested share of the denoiser's "
                        "parameters (DiT blocks are coarse, so more goes)."),
             "depth": ("# Training recipe for depth-pruned models (issue 11)",
                       "Blocks chosen by their linearisation loss; `removed` is the share of blocks.")}
    for folder, method in ((OUT, "layers"), (DEPTH_OUT, "depth")):
        if not (folder / "recipe.json").exists():
            continue
        rows = json.loads((folder / "recipe.json").read_text())
        title, what = intro[method]
        lines = [title, "", f"{what} Batch 32, on the zoo's training data; evaluated as in `{method}.md` (256 images, "
                 "DDIM-20, the same seeds). `benchmarks/layers_recipe.py`. Training time: 2 threads, alone on the "
                 "machine unless the note says otherwise.", "",
                 "`unconditional`: the share of training examples given the unconditional conditioning (the "
                 "branch classifier-free guidance calls at every step); rows without it never taught that branch.",
                 "",
                 "| model | removed | row | feature KD | features distilled | unconditional | steps | lr | MACs "
                 "| FID (full) | accuracy (full) | PSNR vs full | training | note |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            share = f" ({1 - r['params'] / r['params_full']:.0%} of params)" if r.get("params_full") else ""
            ramp = f", ramp over {r['ramp']:.0%}" if r.get("ramp") else ""
            ramp += f", training seed {r['seed']}" if r.get("seed") else ""
            lines.append(f"| {r['model']} | {r['ratio']:.0%}{share} | {r['label'].split(',')[0]}, {r['recipe']}{ramp} "
                         "| "
                         f"{r.get('kd', 'normalized')} | {r.get('features', 'every block')} | "
                         f"{r.get('p_uncond', 0):.0%} | {r['retrain_steps']} | "
                         f"{r['lr']:g} | {r['macs_speedup']:.2f}x | {r['fid']:.2f} ({r['fid_full']:.2f}) | "
                         f"{r['cond_acc']:.1%} ({r['cond_acc_full']:.1%}) | {r['psnr_vs_full']:.2f} dB | "
                         f"{r['retrain_seconds'] / 60:.1f} min | {r.get('note') or ''} |")
        (folder / "recipe.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="mnist-dit")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--method", choices=("layers", "depth"), default="layers")
    p.add_argument("--mode", choices=("progressive", "abrupt", "remove"), default="progressive",
                   help="depth pruning only")
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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    report() if args.report else run(args)


if __name__ == "__main__":
    main()
