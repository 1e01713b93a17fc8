"""What forecasting costs at run time: the values the cache holds and the time of a generation.

    python -m benchmarks.forecast_cost --schedules benchmarks/results/bench-forecast/schedules

For each zoo model, the bench's 4x dipgo schedule is applied at forecast orders 0, 1 and 2 (the same computed
blocks; only what a reused block returns differs). Memory: the largest number of bytes the runtime's caches
hold at the end of any denoiser call of one generation of ``--batch`` images. Time: whole generations of
``--batch`` images, order 0 against each other order, timed in turn (:func:`harness.paired_timing`). Forecast
share: the part of a generation's time spent inside the forecasts of reused blocks, timed within the same
generations (median over ``--runs``), which varies far less from run to run than two generations' times do. Run it
alone on the machine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks import harness as h


def cache_bytes(value) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(cache_bytes(v) for v in value)
    return 0


def peak_cache_bytes(m: h.Model, schedule, batch: int) -> int:
    """The most bytes the caches hold after any denoiser call of one generation."""
    import dipgo
    from dipgo.cache.hooks import attachment_of
    from dipgo.models.pipelines import denoiser_of, generate

    denoiser = denoiser_of(m.pipe)
    dipgo.apply(m.pipe, schedule)
    state, peak = attachment_of(denoiser).state, [0]
    handle = denoiser.register_forward_hook(
        lambda mod, a, o: peak.__setitem__(0, max(peak[0], cache_bytes(list(state.caches.values())))))
    try:
        generate(m.pipe, m.calibration, m.calibration.cycle(batch), 0, schedule.num_inference_steps, m.guidance, batch)
    finally:
        handle.remove()
        dipgo.remove(m.pipe)
    return peak[0]


def forecast_share(m: h.Model, schedule, batch: int, runs: int) -> float:
    """The median share of a generation's time spent in ``forecast`` (the reused blocks' arithmetic)."""
    import statistics
    import time

    import dipgo
    from dipgo.cache.hooks import block
    from dipgo.models.pipelines import generate

    inner, spent, shares = block.forecast, [0.0], []

    def timed(*args):
        t = time.perf_counter()
        out = inner(*args)
        spent[0] += time.perf_counter() - t
        return out

    block.forecast = timed
    dipgo.apply(m.pipe, schedule)
    try:
        for i in range(runs + 1):  # the first one warms up
            spent[0], t = 0.0, time.perf_counter()
            generate(m.pipe, m.calibration, m.calibration.cycle(batch), 0, schedule.num_inference_steps, m.guidance,
                     batch)
            if i:
                shares.append(spent[0] / (time.perf_counter() - t))
    finally:
        dipgo.remove(m.pipe)
        block.forecast = inner
    return statistics.median(shares)


def measure(name: str, schedule, batch: int, passes: int, runs: int) -> dict:
    import dipgo
    from dipgo.cache.postprocess import with_forecast
    from dipgo.models.pipelines import generate

    m = h.Model(name)
    out = {"model": name, "schedule_macs_speedup": round(schedule.macs_full / schedule.macs, 3),
           "chosen_order": schedule.forecast_order, "batch": batch, "orders": {}}
    variants = {k: with_forecast(schedule, k) for k in (0, 1, 2)}

    def run(s):
        def go():
            dipgo.apply(m.pipe, s)
            try:
                generate(m.pipe, m.calibration, m.calibration.cycle(batch), 0, s.num_inference_steps, m.guidance, batch)
            finally:
                dipgo.remove(m.pipe)
        return go

    for k, s in variants.items():
        row = {"peak_cache_bytes": peak_cache_bytes(m, s, batch), "macs_speedup": round(s.macs_full / s.macs, 3)}
        if k:
            t = h.paired_timing(run(variants[0]), run(s), passes=passes, chunks=3)
            row.update(seconds_order0=t.base_median_s, seconds=t.other_median_s, time_ratio=t.ratio,
                       time_ratio_range=list(t.ratio_range), forecast_share=forecast_share(m, s, batch, runs))
        out["orders"][str(k)] = row
        print(name, k, row, flush=True)
    return out


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--schedules", default="benchmarks/results/bench-forecast/schedules")
    p.add_argument("--budget", default="4")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--passes", type=int, default=7)
    p.add_argument("--runs", type=int, default=5, help="generations the forecast share is the median of")
    h.add_threads(p, 2)
    args = p.parse_args()
    h.set_threads(args.threads)
    from dipgo.cache.schedule import Schedule

    rows = []
    for name in ("mnist-sd", "mnist-dit"):
        path = Path(args.schedules) / f"{name}-ddim20-x{args.budget}-quick.json"
        rows.append(measure(name, Schedule.load(path), args.batch, args.passes, args.runs))
    h.write_json(h.RESULTS / "forecast-cost.json", {"machine": h.machine(), "rows": rows,
                                                    "command": h.how_to_run("forecast_cost")})


if __name__ == "__main__":
    main()
