"""Prune a zoo model, then measure MACs, wall clock and quality against the full model and fewer steps.

    python -m benchmarks.prune_quality mnist-sd --ratio 0.8
    python -m benchmarks.prune_quality mnist-dit --ratio 0.6 --iterations 80 --batch 2
    python -m benchmarks.prune_quality mnist-sd --ratio 0.8 --schedule S.json --wall-only   # re-time only

Steps: (1) the DiP-GO search at DDIM-50 with the model card's guidance (timed); (2) wall clock of
sampling a batch of 16, full and pruned alternated, ``--repeats`` times each (medians); (3) ``--n``
images (balanced digits, seeds 0..n-1) with both, FID against the zoo's statistics of the 5,000 MNIST
images (``zoo/fid-mnist5k.npz``, made by ``zoo/fid_reference.py``), conditioning accuracy, PSNR/SSIM of
each pruned image against the full image of the same seed; the same for the same sampler with fewer
steps at the schedule's MACs. Writes ``benchmarks/results/prune-<model>-r<ratio>.json``, the schedule and
a grid of images beside it.
"""

from __future__ import annotations

import json
import statistics

from benchmarks import harness as h

QUALITY = ("fid", "cond_acc", "psnr_vs_full", "ssim_vs_full")


def check_fid_reference(m: h.Model) -> None:
    """Fail before any long run if the zoo's FID statistics are missing."""
    ref = m.source.fid_reference
    if ref is None or not ref.is_file():
        raise SystemExit(f"{m.name}: FID reference statistics {ref} are missing; "
                         "make them with `python zoo/fid_reference.py`")


def search(m: h.Model, args, tag: str) -> tuple[object, dict]:
    """The DiP-GO search (timed); ``(schedule, search record)``."""
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.cache.search import Search, SearchConfig

    cfg = SearchConfig(ratio=args.ratio, num_inference_steps=args.steps, guidance_scale=m.guidance,
                       iterations=args.iterations, batch=args.batch, init=args.init,
                       grad_checkpointing={"auto": None, "on": True, "off": False}[args.grad_checkpointing])
    ckpt = h.RESULTS / f"{tag}.search.pt"
    s = Search(m.pipe, cfg, checkpoint_path=ckpt, calibration=m.calibration)
    result = s.run(progress=True)
    schedule = schedule_at_ratio(result, args.ratio)
    schedule.save(h.RESULTS / f"{tag}.schedule.json")
    ckpt.unlink(missing_ok=True)
    return schedule, {"seconds": result.seconds, "iterations": cfg.iterations, "batch": cfg.batch,
                      "grad_checkpointing": s.checkpointing, "init": cfg.init, "final": result.history[-1]}


def wall_clock(m: h.Model, schedule, steps: int, repeats: int, batch: int = 16) -> dict:
    """Whole generations of ``batch`` images, full and pruned alternated (drifts in machine load hit both)."""
    from dipgo.evaluate.baselines import AppliedSchedule
    from dipgo.models.pipelines import generate

    conditions = m.calibration.cycle(batch)

    def once() -> None:
        generate(m.pipe, m.calibration, conditions, seed=10_000, num_inference_steps=steps,
                 guidance_scale=m.guidance, batch_size=batch)

    applied = AppliedSchedule(m.pipe, schedule, "dipgo")
    full, pruned = h.alternate((once, once), repeats, around=(None, lambda: h.enabled(applied)))
    f, p = statistics.median(full), statistics.median(pruned)
    return {"batch": batch, "repeats": repeats, "full_s": full, "pruned_s": pruned,
            "latency_full_ms_per_image": 1000 * f / batch, "latency_ms_per_image": 1000 * p / batch,
            "wall_speedup": f / p}


def quality(m: h.Model, schedule, record: dict, n: int, tag: str) -> None:
    """The schedule and fewer steps at its MACs, against the full model on the same ``n`` seeds."""
    from dipgo.evaluate.baselines import AppliedSchedule, FewerSteps
    from dipgo.models.images import labelled_rows, save_image

    q = h.QualityPass(m, n, record["steps"], seed=0, batch=50, progress=True)
    rec, run = q.measure(AppliedSchedule(m.pipe, schedule, "dipgo"))
    record.update({"n": n, "seed": 0, "fid_full": rec["fid_full"], "fid": rec["fid"],
                   "cond_acc_full": rec["cond_acc_full"], "cond_acc": rec["cond_acc"],
                   "psnr_vs_full": rec["psnr_vs_full"], "ssim_vs_full": rec["ssim_vs_full"]})
    record["fid_rel_change"] = record["fid"] / record["fid_full"] - 1
    k = max(1, round(record["steps"] * record["macs"] / record["macs_full"]))  # the same DDIM, same MACs
    few = q.record(FewerSteps(k).bind(m.pipe, record["steps"], m.guidance))
    record["fewer_steps"] = {"steps": k, "macs_speedup": record["steps"] / k, **{x: few[x] for x in QUALITY}}
    grid = labelled_rows([("full model", q.full.images[:20]),
                          (f"dipgo {record['macs_speedup']:.2f}x fewer MACs", run.images[:20])])
    save_image(grid, h.RESULTS / f"{tag}.png")


def main() -> None:
    import dipgo
    from dipgo.zoo import zoo_names

    p = h.parser(__doc__)
    p.add_argument("model", choices=zoo_names())
    p.add_argument("--ratio", type=float, default=0.8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--init", default="keep")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--grad-checkpointing", choices=("auto", "on", "off"), default="auto")
    h.add_threads(p, None)
    p.add_argument("--schedule", default=None, help="skip the search and use this schedule")
    p.add_argument("--wall-only", action="store_true", help="with --schedule: only re-measure the wall clock "
                   "and update it in the existing result file")
    args = p.parse_args()
    h.set_threads(args.threads)
    tag = f"prune-{args.model}-r{args.ratio:g}"
    m = h.Model(args.model)
    if not args.wall_only:
        check_fid_reference(m)
    record: dict = {"model": args.model, "ratio": args.ratio, "steps": args.steps, "guidance_scale": m.guidance,
                    "machine": h.machine()}
    if args.schedule:
        schedule = dipgo.Schedule.load(args.schedule)
    else:
        schedule, record["search"] = search(m, args, tag)
    record["macs_full"], record["macs"] = schedule.macs_full, schedule.macs
    record["macs_speedup"] = schedule.macs_full / schedule.macs
    record["achieved_ratio"] = schedule.achieved_ratio
    print(schedule.summary(), flush=True)
    record["wall"] = wall_clock(m, schedule, args.steps, args.repeats)
    record["wall_over_macs_speedup"] = record["wall"]["wall_speedup"] / record["macs_speedup"]
    print(json.dumps(record["wall"], indent=1), flush=True)
    if args.wall_only:
        old = h.read_json(h.RESULTS / f"{tag}.json")
        old.update({k: record[k] for k in ("wall", "wall_over_macs_speedup", "machine")})
        h.write_json(h.RESULTS / f"{tag}.json", old)
        return
    quality(m, schedule, record, args.n, tag)
    h.write_json(h.RESULTS / f"{tag}.json", record)
    print(json.dumps({k: v for k, v in record.items() if k not in ("wall", "machine")}, indent=1))


if __name__ == "__main__":
    main()
