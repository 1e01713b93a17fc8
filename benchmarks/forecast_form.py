"""The two forms of an order-2 forecast, and orders 0 and 1, on the forecast bench's schedules.

    python -m benchmarks.forecast_form

Each committed ``bench-forecast`` dipgo schedule (both zoo models, DDIM-20, 2x/4x/8x) keeps its computed blocks;
only what a reused block returns changes: its last value (order 0), a line through its last two (order 1), and
at order 2 the parabola through its last three (``polynomial``) or TaylorSeer's truncated Taylor series
(``taylor``). PSNR against the full model's images on the same seeds (``--n`` images from ``--seed``, balanced
conditions). Quality only: it may share the machine.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from benchmarks import harness as h

VARIANTS = (("0", 0, "taylor"), ("1", 1, "taylor"), ("2 polynomial", 2, "polynomial"), ("2 taylor", 2, "taylor"))


def measure(name: str, schedules: Path, budgets: list[str], n: int, seed: int) -> list[dict]:
    import dipgo
    from dipgo.cache.postprocess import with_forecast
    from dipgo.evaluate.metrics import psnr
    from dipgo.models.pipelines import generate

    m = h.Model(name)
    conditions = m.calibration.cycle(n)

    def images(schedule=None):
        if schedule is not None:
            dipgo.apply(m.pipe, schedule)
        try:
            return generate(m.pipe, m.calibration, conditions, seed, 20, m.guidance, 16)
        finally:
            if schedule is not None:
                dipgo.remove(m.pipe)

    full, rows = images(), []
    for budget in budgets:
        base = dipgo.Schedule.load(schedules / f"{name}-ddim20-x{budget}-quick.json")
        row = {"model": name, "budget": budget, "macs_speedup": round(base.macs_full / base.macs, 3),
               "chosen_order": base.forecast_order, "psnr": {}}
        for label, order, form in VARIANTS:
            s = replace(with_forecast(base, order), forecast_form=form)
            row["psnr"][label] = round(float(psnr(images(s), full, cap=100.0).mean()), 3)
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--schedules", default="benchmarks/results/bench-forecast/schedules")
    p.add_argument("--budgets", default="2,4,8")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    h.add_threads(p, 2)
    args = p.parse_args()
    h.set_threads(args.threads)
    rows = [r for name in ("mnist-dit", "mnist-sd")
            for r in measure(name, Path(args.schedules), args.budgets.split(","), args.n, args.seed)]
    h.write_json(h.RESULTS / "forecast-form.json", {"machine": h.machine(), "n": args.n, "seed": args.seed,
                                                    "rows": rows, "command": h.how_to_run("forecast_form")})


if __name__ == "__main__":
    main()
