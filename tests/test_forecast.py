"""Forecasting backup connections: the extrapolation itself, its exactness on blocks whose outputs are
polynomial in the call index, the search and the pipeline with a forecast, and old schedules."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import generate_digits, make_schedule
from torch import nn

from dipgo.cache.hooks.forecast import forecast, push, taylor_weights, weights
from dipgo.cache.postprocess import with_forecast
from dipgo.cache.runtime import attach, detach
from dipgo.cache.schedule import Schedule, ScheduleError


def test_weights_reproduce_polynomials_of_their_degree():
    for calls, at in (([0, 1], 3), ([2, 5], 9), ([0, 1, 2], 4), ([1, 4, 6], 10)):
        ws = weights(calls, at)
        for degree in range(len(calls)):
            assert sum(w * c ** degree for w, c in zip(ws, calls, strict=True)) == pytest.approx(at ** degree)


def test_forecast_orders_on_values_tuples_and_none():
    line = push(push(None, 0, torch.tensor(1.0), 1), 2, torch.tensor(5.0), 1)   # 1 + 2 * call
    assert len(line) == 2
    assert forecast(line, 3, 0).item() == 5.0                  # order 0: the newest value
    assert forecast(line, 3, 1).item() == pytest.approx(7.0)   # on the line
    assert forecast(line, 3, 2).item() == pytest.approx(7.0)   # order 2 with two values falls back to a line
    h = None
    for c in (0, 1, 2, 3):
        h = push(h, c, (torch.tensor(float(c * c)), None), 2)
    assert len(h) == 3 and [c for c, _ in h] == [1, 2, 3]
    value, none = forecast(h, 5, 2, "polynomial")
    assert none is None and value.item() == pytest.approx(25.0)  # the parabola through 1, 4, 9
    value, _ = forecast(h, 5, 2)  # Taylor: 9 + 5 * 2 + (5 - 3) * 2 ** 2 / 2
    assert value.item() == pytest.approx(23.0)
    assert forecast(((1, torch.tensor(2.0)), (1, torch.tensor(3.0))), 4, 1).item() == 3.0  # a re-run call



@pytest.mark.parametrize("calls", [[0, 1, 2], [2, 5, 6], [1, 4, 9]])
def test_the_taylor_form_is_diffusers_taylorseer_prediction(calls):
    """Fed the same values at the same steps, diffusers' own TaylorSeer state predicts what the Taylor form
    does, at order 1 and 2 and at several gaps, uneven spacing included."""
    from diffusers.hooks.taylorseer_cache import TaylorSeerState

    g = torch.Generator().manual_seed(sum(calls))
    values = [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in calls]
    for order in (1, 2):
        state = TaylorSeerState(taylor_factors_dtype=torch.float64, max_order=order)
        for c, v in zip(calls, values, strict=True):
            state.current_step = c
            state.update((v,))
        history = tuple(zip(calls, values, strict=True))
        for at in (calls[-1] + 1, calls[-1] + 3):
            state.current_step = at
            torch.testing.assert_close(forecast(history, at, order), state.predict()[0])
    line = taylor_weights(calls[-2:], calls[-1] + 2)
    assert line == pytest.approx(weights(calls[-2:], calls[-1] + 2))  # the two forms share their line
    assert sum(taylor_weights(calls, calls[-1] + 2)) == pytest.approx(1.0)
    assert taylor_weights(calls, calls[-1] + 2) != pytest.approx(weights(calls, calls[-1] + 2))


class Affine(nn.Module):
    """Blocks whose outputs are affine in ``s``: with ``s`` affine in the call index, a forecast of order 1
    from any two computed calls is exact."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x, s):
        h = self.a(s * torch.ones(1, 4))
        return x + self.c(self.b(h))


def _schedule(steps: list[list[str]], order: int) -> Schedule:
    return Schedule(model_class="Affine", config_hash="x", blocks=["a", "b"], num_inference_steps=len(steps),
                    scheduler="custom", steps=steps, forecast_order=order)


def _loop(model, calls: int) -> list[torch.Tensor]:
    x, outs = torch.zeros(1, 4), []
    for i in range(calls):
        x = model(x, 0.5 * i + 1.0)
        outs.append(x)
    return outs


@pytest.mark.parametrize("order", [1, 2])
def test_a_forecast_is_exact_on_affine_blocks_and_plain_reuse_is_not(order):
    model = Affine().requires_grad_(False)
    full = _loop(model, 7)
    steps = [["a", "b"], ["a", "b"], ["a"], [], ["a", "b"], [], []]
    results = {}
    for o in (0, order):
        att = attach(model, {"a": model.a, "b": model.b}, {"a": "output", "b": "output"},
                     schedule=_schedule(steps, o))
        try:
            results[o] = _loop(model, 7)
            assert att.state.reused == 7 and att.state.computed == 7
        finally:
            detach(model)
    for f, r in zip(full, results[order], strict=True):
        torch.testing.assert_close(r, f, rtol=1e-5, atol=1e-5)
    assert (results[0][-1] - full[-1]).abs().max() > 1e-2
    assert torch.equal(_loop(model, 7)[-1], full[-1])  # detached: the model runs as before


class Wavy(nn.Module):
    """Blocks whose outputs bend with the call index (``sin``): no forecast is exact, so a search that
    extrapolates from other values than the runtime's gives other images."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x, s):
        return x + self.b(torch.sin(self.a(s * torch.ones(1, 4))))


@pytest.mark.parametrize("order", [1, 2])
def test_the_search_forecasts_from_the_values_the_runtime_does(order):
    """The search's gated run with hard 0/1 gates is the run the schedule executes, at every forecast order:
    reused calls followed by a computed one, then reused again (where a search that kept its forecast values
    among the computed ones extrapolated along another line)."""
    from dipgo.cache.runtime import apply_search_gates

    model = Wavy().requires_grad_(False)
    steps = [["a", "b"], [], ["b"], ["a", "b"], [], [], ["a"], ["a", "b"], [], []]
    mask = torch.tensor([[float(n in row) for n in ("a", "b")] for row in steps])
    blocks, modes = {"a": model.a, "b": model.b}, {"a": "output", "b": "output"}
    attach(model, blocks, modes, schedule=_schedule(steps, order))
    try:
        executed = _loop(model, len(steps))
    finally:
        detach(model)
    att = apply_search_gates(model, blocks, modes, forecast_order=order)
    try:
        att.state.reset()
        att.state.new_generation, att.state.gates = True, mask
        searched = _loop(model, len(steps))
    finally:
        detach(model)
    for e, s in zip(executed, searched, strict=True):
        torch.testing.assert_close(s, e, rtol=1e-6, atol=1e-6)
    assert (executed[-1] - _loop(model, len(steps))[-1]).abs().max() > 1e-2  # the reuse is visible


def test_schedules_record_the_order_and_old_files_load_as_reuse(tmp_path):
    s = _schedule([["a", "b"], ["a"], []], 2)
    path = s.save(tmp_path / "s.json")
    assert Schedule.load(path).forecast_order == 2
    data = json.loads(path.read_text())
    data.pop("forecast_order")
    path.write_text(json.dumps(data))
    assert Schedule.load(path).forecast_order == 0
    for bad in (3, -1, 1.5, True, "1"):
        data["forecast_order"] = bad
        path.write_text(json.dumps(data))
        with pytest.raises(ScheduleError, match="forecast_order"):
            Schedule.load(path)


def test_with_forecast_counts_the_calls_that_reuse_every_block():
    """Where the model's output depends on one cached block (a UNet), a call that reuses every block is
    skipped as a whole, but only without a forecast: the MACs say so."""
    from dipgo.cache.postprocess import schedule_from_mask
    from dipgo.models.adapters import BlockGraph
    from dipgo.models.costs import CostProfile

    graph = BlockGraph(["a", "b"], output_block="b")
    profile = CostProfile(blocks=["a", "b"], block_macs=[30, 50], call_macs=100)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    s0 = schedule_from_mask(mask, graph, profile, model_class="M", config_hash="x", scheduler="S",
                            num_inference_steps=4)
    assert s0.macs == 3 * 20 + 30 * 3 + 50 * 2 and s0.macs_full == 400
    s1 = with_forecast(s0, 1)
    assert (s1.forecast_order, s1.macs, s0.forecast_order) == (1, s0.macs + 20, 0)
    assert s1.achieved_ratio == pytest.approx(1 - s1.macs / 400, abs=1e-6)
    assert with_forecast(s1, 0).macs == s0.macs
    assert schedule_from_mask(mask, graph, profile, model_class="M", config_hash="x", scheduler="S",
                              num_inference_steps=4, forecast_order=2).macs == s1.macs


@pytest.mark.parametrize("pipe_name", ["sd_pipe", "dit_pipe"])
def test_a_forecast_schedule_runs_a_pipeline_and_comes_off_cleanly(pipe_name, request):
    """UNet (output caches) and DiT (residual caches): a forecast changes the images against plain reuse of
    the same schedule, and removing it restores the pipeline bitwise. (Whether it helps depends on the
    model and the schedule: that is for the held-out selection and the bench to measure.)"""
    import dipgo
    from dipgo.evaluate.baselines import DeepCache

    pipe = request.getfixturevalue(pipe_name)

    def run():
        return generate_digits(pipe, (3, 7), seed=1, num_inference_steps=10, guidance_scale=3.0)

    full = run()
    reuse = DeepCache(3).bind(pipe, 10, 3.0).schedule
    images = {}
    for order in (0, 1):
        dipgo.apply(pipe, with_forecast(reuse, order))
        try:
            images[order] = run()
        finally:
            dipgo.remove(pipe)
    assert not torch.equal(images[0], images[1])
    assert torch.equal(run(), full)
    # nothing of dipgo is left: no hook on the denoiser or its blocks, set_timesteps the class's own again
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    registries = [m._diffusers_hook for m in denoiser.modules() if hasattr(m, "_diffusers_hook")]
    assert not any(name.startswith("dipgo") for r in registries for name in r.hooks)
    assert "set_timesteps" not in vars(pipe.scheduler) and not dipgo.is_applied(pipe)


def test_a_forecasting_schedule_is_version_2_and_an_older_reader_refuses_it_by_version(tmp_path):
    from dipgo.cache import schedule as sched

    assert _schedule([["a", "b"], []], 0).to_dict()["version"] == 1
    path = _schedule([["a", "b"], []], 1).save(tmp_path / "f.json")
    data = json.loads(path.read_text())
    assert data["version"] == 2
    assert Schedule.load(path).forecast_order == 1
    old_reader = (sched.SCHEMA_VERSION,)  # what a dipgo without forecasting reads
    try:
        sched.READ_VERSIONS, saved = old_reader, sched.READ_VERSIONS
        with pytest.raises(ScheduleError, match="version 2 is not supported .*upgrade dipgo"):
            Schedule.load(path)
    finally:
        sched.READ_VERSIONS = saved
    data["version"] = 1  # a version-1 file cannot hold a forecast
    path.write_text(json.dumps(data))
    with pytest.raises(ScheduleError, match="version-1 schedule has forecast_order=1"):
        Schedule.load(path)


def test_a_taylor_order_2_schedule_is_version_3_and_a_version_2_file_keeps_its_polynomial(tmp_path):
    """The Taylor form of order 2 is written as version 3, which a dipgo that only knows the polynomial form
    refuses by version; an order-2 version-2 file loads as the polynomial it was made with, and applies it."""
    from dipgo.cache import schedule as sched

    steps = [["a", "b"], ["a", "b"], ["a", "b"], [], []]
    taylor = _schedule(steps, 2)
    assert taylor.forecast_form == "taylor"
    path = taylor.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["version"] == 3 and data["forecast_form"] == "taylor"
    assert Schedule.load(path).to_dict() == data
    try:
        sched.READ_VERSIONS, saved = (1, 2), sched.READ_VERSIONS
        with pytest.raises(ScheduleError, match="version 3 is not supported .*upgrade dipgo"):
            Schedule.load(path)
    finally:
        sched.READ_VERSIONS = saved
    line = _schedule(steps, 1).to_dict()
    assert line["version"] == 2 and "forecast_form" not in line  # one line in either form: unchanged files
    data.update(version=2)
    data.pop("forecast_form")
    path.write_text(json.dumps(data))
    poly = Schedule.load(path)
    assert poly.forecast_form == "polynomial" and poly.to_dict()["version"] == 2
    model = Affine().requires_grad_(False)

    def loop():  # s quadratic in the call index: the blocks' outputs are parabolas, which order 2 can hold
        x, outs = torch.zeros(1, 4), []
        for i in range(5):
            x = model(x, (0.5 * i + 1.0) ** 2)
            outs.append(x)
        return outs

    full, outs = loop(), {}
    for name, s in (("taylor", taylor), ("polynomial", poly)):
        attach(model, {"a": model.a, "b": model.b}, {}, schedule=s)
        try:
            outs[name] = loop()
        finally:
            detach(model)
    torch.testing.assert_close(outs["polynomial"][4], full[4])      # the parabola through calls 0-2 is exact
    assert not torch.allclose(outs["taylor"][4], full[4], atol=1e-3)  # the truncated series is not
    with pytest.raises(ScheduleError, match="forecast_form must be one of"):
        dataclasses.replace(taylor, forecast_form="spline")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("form", ["taylor", "polynomial"])
def test_forecast_equals_its_weighted_sum_leaves_history_alone_and_passes_gradients(order, dtype, form):
    """The fused forms (one lerp for a line, in-place accumulation for a parabola) compute the plain
    weighted sum, never write into the cached values, and keep the forecast differentiable (the search
    runs with it in the loop)."""
    g = torch.Generator().manual_seed(order)
    values = [torch.randn(3, 5, generator=g).to(dtype).requires_grad_() for _ in range(order + 1)]
    calls = [1, 3, 4][-(order + 1):]
    history = tuple(zip(calls, values, strict=True))
    before = [v.detach().clone() for v in values]
    out = forecast(history, 7, order, form)
    ws = (taylor_weights if form == "taylor" else weights)(calls, 7)
    expected = sum(w * v.detach().double() for w, v in zip(ws, values, strict=True))
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert out.dtype == dtype
    assert torch.allclose(out.detach().double(), expected, atol=tol * 10, rtol=tol)
    assert all(torch.equal(v.detach(), b) for v, b in zip(values, before, strict=True))
    out.sum().backward()
    for w, v in zip(ws, values, strict=True):
        assert torch.allclose(v.grad.double(), torch.full((3, 5), w, dtype=torch.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("order", [1, 2])
def test_a_call_that_reuses_every_block_forecasts_the_output_block_alone(order, monkeypatch):
    """At a call that reuses every block of a UNet, only the output block's value reaches the output, so the
    other blocks hand back their newest value without arithmetic: the images are bitwise those of forecasting
    every block, with one forecast per such call instead of one per block."""
    from tiny_schedules import Tiny

    import dipgo
    from dipgo.cache.hooks import block, static_schedule
    from dipgo.cache.refine import interval_mask

    tiny, steps = Tiny.build("sd"), 6
    mask = interval_mask(steps, len(tiny.graph.names), 3)  # calls 0 and 3 compute, the rest reuse everything
    den = tiny.pipe.unet
    s = with_forecast(make_schedule(den, type(tiny.pipe.scheduler).__name__, steps, tiny.graph, tiny.profile, mask,
                                    cfg=2), order)
    assert s.output_block is not None and not s.steps[1]
    seen = []
    counted = block.forecast

    def counting(history, call, *args):
        seen.append(call)
        return counted(history, call, *args)

    monkeypatch.setattr(block, "forecast", counting)
    images = {}
    for shortcut in (True, False):
        seen.clear()
        if not shortcut:
            monkeypatch.setattr(static_schedule.ScheduleHook, "_unread", lambda self, call: False)
        dipgo.apply(tiny.pipe, s)
        try:
            images[shortcut] = tiny.images(steps)
        finally:
            dipgo.remove(tiny.pipe)
        calls = {c: seen.count(c) for c in set(seen)}
        reused = [1, 2, 4, 5]
        expected = 1 if shortcut else len(tiny.graph.names)
        assert calls == dict.fromkeys(reused, expected), calls
    assert torch.equal(images[True], images[False])
