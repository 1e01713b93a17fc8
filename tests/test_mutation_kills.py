"""Behaviour of the schedule format, its postprocessing and the runtime hooks that a mutation run found untested.

Everything here runs on a three-block toy denoiser (no pipeline), so the file takes about a second.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from dipgo.cache.hooks.block import BlockHook, parse_mode
from dipgo.cache.hooks.counter import CallCounterHook
from dipgo.cache.hooks.forecast import _combine, forecast, push, weights
from dipgo.cache.hooks.state import RunState
from dipgo.cache.hooks.static_schedule import WHOLE_CALL_HOOK, ScheduleConfig, ScheduleHook
from dipgo.cache.postprocess import (
    mask_at,
    pruned_ratio,
    schedule_from_mask,
    threshold_for_ratio,
    with_forecast,
)
from dipgo.cache.runtime import BLOCK_HOOK, ROOT_HOOK, Policy, attach, detach
from dipgo.cache.schedule import Schedule, ScheduleError
from dipgo.errors import DipgoError
from dipgo.models.adapters import BlockGraph
from dipgo.models.costs import CostProfile

NAMES = ["b0", "b1", "b2"]


class Toy(nn.Module):
    """Three affine blocks in a row; each adds a distinct constant, so a reused block is visible."""

    def __init__(self):
        super().__init__()
        self.b0, self.b1, self.b2 = (nn.Linear(2, 2) for _ in range(3))
        for k, blk in enumerate((self.b0, self.b1, self.b2)):
            nn.init.eye_(blk.weight)
            nn.init.constant_(blk.bias, float(k + 1))

    def forward(self, x):
        return self.b2(self.b1(self.b0(x)))


def _blocks(model: Toy) -> dict[str, nn.Module]:
    return {n: getattr(model, n) for n in NAMES}


def _schedule(steps: list[list[str]], order: int = 0, output_block: str | None = None, **kw) -> Schedule:
    fields = dict(model_class="Toy", config_hash="h", blocks=list(NAMES), scheduler="DDIMScheduler", steps=steps,
                  num_inference_steps=len(steps) // kw.get("branches", 1), output_block=output_block,
                  forecast_order=order)
    return Schedule(**{**fields, **kw})


def _graph() -> BlockGraph:
    return BlockGraph(names=list(NAMES), consumers={"b0": ["b1"], "b1": ["b2"], "b2": []}, always_needed={"b2"},
                      output_block="b2")


PROFILE = CostProfile(blocks=list(NAMES), block_macs=[10, 20, 30], call_macs=100)


# ---------------------------------------------------------------------------------------------- runtime.attach
def test_attach_refuses_a_schedule_and_a_policy_together():
    model = Toy()
    with pytest.raises(DipgoError, match="a schedule or a policy, not both"):
        attach(model, _blocks(model), {}, schedule=_schedule([NAMES]), policy=Policy())
    assert getattr(model, "_dipgo_attachment", None) is None


@pytest.mark.parametrize("kind", ["schedule", "policy", "search"])
def test_attach_hands_the_scheduler_to_each_mode(kind):
    model, sched = Toy(), DDIMScheduler()
    extra = {"schedule": _schedule([NAMES, []])} if kind == "schedule" else (
        {"policy": Policy()} if kind == "policy" else {})
    att = attach(model, _blocks(model), {}, scheduler=sched, **extra)
    try:
        assert att.scheduler is sched and att.patch is not None
        assert (att.schedule is not None) == (kind == "schedule")
        assert ROOT_HOOK in att.root_hooks
        assert model.b0._diffusers_hook.get_hook(BLOCK_HOOK) is not None
    finally:
        detach(model)
    assert model._dipgo_attachment is None


def test_attach_passes_branches_to_the_schedule():
    model = Toy()
    att = attach(model, _blocks(model), {}, schedule=_schedule([NAMES, NAMES, [], []]), branches=2)
    try:
        assert att.config.branches == 2
        assert model.b0._diffusers_hook.get_hook(BLOCK_HOOK).branches == 2
    finally:
        detach(model)


# ---------------------------------------------------------------------------------------------- forecast
def test_push_keeps_the_newest_order_plus_one_values():
    h = None
    for call in range(5):
        h = push(h, call, float(call), 0)
    assert h == ((4, 4.0),)
    for order in (1, 2):
        h = None
        for call in range(5):
            h = push(h, call, float(call), order)
        assert [c for c, _ in h] == list(range(4 - order, 5))


def test_weights_and_forecast_extrapolate_exactly():
    assert weights([0, 1], 2) == pytest.approx([-1.0, 2.0])
    assert weights([0, 1, 2], 3) == pytest.approx([1.0, -3.0, 3.0])
    line = ((2, torch.tensor(4.0)), (3, torch.tensor(6.0)))
    assert forecast(line, 5, 1).item() == pytest.approx(10.0)
    assert forecast(line, 5, 0).item() == 6.0
    parabola = tuple((c, torch.tensor(float(c * c))) for c in (1, 2, 3))
    assert forecast(parabola, 5, 2, "polynomial").item() == pytest.approx(25.0)
    assert forecast(parabola, 5, 2).item() == pytest.approx(23.0)  # Taylor: 9 + 5 * 2 + 2 * 2 ** 2 / 2
    assert forecast(parabola, 5, 1).item() == pytest.approx(19.0)  # the line through calls 2 and 3


def test_forecast_falls_back_to_the_newest_value():
    single = ((4, torch.tensor(3.0)),)
    assert forecast(single, 9, 2).item() == 3.0
    rerun = ((4, torch.tensor(1.0)), (4, torch.tensor(2.0)))
    assert forecast(rerun, 9, 1).item() == 2.0


def test_combine_keeps_structure_and_none():
    ws = [-1.0, 2.0]
    assert _combine(ws, [None, None]) is None
    out = _combine(ws, [[torch.tensor(1.0), None], [torch.tensor(3.0), None]])
    assert isinstance(out, list) and out[1] is None and out[0].item() == 5.0
    out = _combine(ws, [(torch.tensor(1.0),), (torch.tensor(2.0),)])
    assert isinstance(out, tuple) and out[0].item() == 3.0


# ---------------------------------------------------------------------------------------------- block hooks
def test_parse_mode():
    assert parse_mode("output") == ("output", ())
    assert parse_mode("residual") == ("residual", ())
    assert parse_mode("residual:a,,b") == ("residual", ("a", "b"))
    for bad in ("output:a", "foo", "foo:a", ""):
        with pytest.raises(DipgoError, match="unknown cache mode"):
            parse_mode(bad)


def test_a_bare_block_hook_has_no_rule():
    hook = BlockHook("b0", 0, RunState())
    assert (hook.name, hook.index, hook.mode, hook.inputs, hook.residual) == ("b0", 0, "output", (), False)
    with pytest.raises(NotImplementedError):
        hook.computes(0)
    assert hook.reset_state("module") == "module"


class _Every(BlockHook):
    """Compute every ``period``-th call, reuse otherwise."""

    period = 2

    def computes(self, call: int) -> bool:
        return call % self.period == 0


def _hooked(mode: str, forward, state: RunState | None = None) -> _Every:
    hook = _Every("b", 0, state or RunState(), mode)
    hook.fn_ref = type("Ref", (), {"original_forward": staticmethod(forward)})()
    return hook


def test_block_hook_reuses_an_output_and_counts():
    calls = []
    hook = _hooked("output", lambda x: calls.append(1) or x * 10)
    s = hook.state
    assert s.call == -1
    assert hook.new_forward(None, torch.tensor(1.0)).item() == 10.0  # call -1 counts as call 0
    assert hook.key() == ("b", 0) and ("b", 0) in s.caches
    s.call = 1
    assert hook.new_forward(None, torch.tensor(2.0)).item() == 10.0  # reused
    assert (s.computed, s.reused, len(calls)) == (1, 1, 1)
    s.call = 2
    assert hook.new_forward(None, torch.tensor(3.0)).item() == 30.0
    assert (s.computed, s.reused) == (2, 1)


def test_block_hook_computes_while_nothing_is_cached():
    hook = _hooked("output", lambda x: x + 1)
    hook.state.call = 1  # a reusing call, but the cache is empty
    assert hook.new_forward(None, torch.tensor(1.0)).item() == 2.0
    assert hook.state.computed == 1 and hook.state.reused == 0


def test_residual_blocks_cache_the_difference_from_args_or_kwargs():
    hook = _hooked("residual", lambda hidden_states: hidden_states + 5)
    assert hook.residual
    hook.new_forward(None, torch.tensor(1.0))
    assert hook.state.caches[("b", 0)][-1][1].item() == 5.0
    hook.state.call = 1
    assert hook.new_forward(None, hidden_states=torch.tensor(10.0)).item() == 15.0


def test_residual_tuple_blocks_bind_inputs_by_name_and_keep_none():
    def fwd(hidden_states, encoder_hidden_states):
        return encoder_hidden_states + 1, hidden_states + 2, None

    hook = _hooked("residual:encoder_hidden_states,hidden_states,hidden_states", fwd)
    hook.new_forward(None, torch.tensor(0.0), encoder_hidden_states=torch.tensor(0.0))
    hook.state.call = 1
    out = hook.new_forward(None, torch.tensor(10.0), encoder_hidden_states=torch.tensor(20.0))
    assert out[0].item() == 21.0 and out[1].item() == 12.0 and out[2] is None


def test_residual_tuple_blocks_refuse_a_count_mismatch():
    hook = _hooked("residual:hidden_states", lambda hidden_states: (hidden_states, hidden_states))
    with pytest.raises(ValueError):
        hook.new_forward(None, torch.tensor(1.0))
    with pytest.raises(ValueError):
        hook._add((torch.tensor(1.0),), (torch.tensor(1.0), torch.tensor(2.0)))


def test_block_keys_follow_the_branch():
    hook = _Every("b", 0, RunState())
    hook.state.call = 5
    assert hook.key(2) == ("b", 1) and hook.key(1) == ("b", 0) and hook.key() == ("b", 0)
    hook.state.call = -1
    assert hook.key(2) == ("b", 0)


# ---------------------------------------------------------------------------------------------- call counter
def _counter(num_calls=None, wraps=False, state=None) -> CallCounterHook:
    hook = CallCounterHook(state or RunState(), num_calls, wraps=wraps)
    hook.fn_ref = type("Ref", (), {"original_forward": staticmethod(lambda *a, **k: a)})()
    return hook


def test_counter_numbers_calls_and_wraps_a_bare_module():
    hook = _counter(num_calls=3, wraps=True)
    s = hook.state
    s.caches[("x", 0)] = 1
    seen = []
    for _ in range(7):
        hook.new_forward(None, 1)
        seen.append(s.call)
        if s.call == 0:
            assert not s.caches and not s.new_generation
        s.caches[("x", 0)] = 1
    assert seen == [0, 1, 2, 0, 1, 2, 0]


def test_counter_raises_past_the_schedule_without_wrapping():
    hook = _counter(num_calls=2)
    hook.advance()
    hook.advance()
    with pytest.raises(ScheduleError, match="called 3 times in one generation but the schedule has 2 calls"):
        hook.advance()
    hook.state.new_generation = True
    hook.advance()
    assert hook.state.call == 0
    hook.state.in_generation = True
    hook.advance()
    with pytest.raises(ScheduleError, match="called 3 times inside one dipgo.generation"):
        hook.advance()


def test_counter_inside_a_generation_block_does_not_wrap():
    hook = _counter(num_calls=2, wraps=True)
    hook.state.in_generation = True
    hook.advance()
    hook.advance()
    with pytest.raises(ScheduleError):
        hook.advance()


def test_counter_without_a_limit_counts_on_and_reset_flags_a_generation():
    hook = _counter()
    for _ in range(5):
        hook.advance()
    assert hook.state.call == 4
    assert hook.reset_state("m") == "m"
    assert hook.state.new_generation and hook.state.call == -1
    hook.advance()
    assert hook.state.call == 0 and not hook.state.new_generation


# ---------------------------------------------------------------------------------------------- static schedule
def test_schedule_config_checks_its_inputs():
    with pytest.raises(DipgoError, match="must be a dipgo.Schedule, got dict"):
        ScheduleConfig({"steps": []})
    two = _schedule([NAMES, NAMES, [], []], branches=2)
    assert ScheduleConfig(two).branches == 2
    assert ScheduleConfig(two, branches=1).branches == 1
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(DipgoError, match="branches must be a positive integer"):
            ScheduleConfig(two, branches=bad)


def _run(model: Toy, schedule: Schedule, calls: int, **kw) -> tuple[list[torch.Tensor], object]:
    att = attach(model, _blocks(model), {}, schedule=schedule, **kw)
    x = torch.zeros(1, 2)
    outs = [model(x + i) for i in range(calls)]
    return outs, att


def test_a_reused_block_returns_the_last_computed_value():
    model = Toy()
    outs, att = _run(model, _schedule([NAMES, ["b1", "b2"], NAMES]), 3)
    try:
        # call 1 reuses b0's call-0 output (0 + 1), then adds 1 + 2 + 2 (b1, b2) to it
        assert outs[1].flatten().tolist() == [6.0, 6.0]
        assert outs[2].flatten().tolist() == [8.0, 8.0]
        assert (att.state.computed, att.state.reused) == (8, 1)
    finally:
        detach(model)


def test_only_values_a_later_call_reads_are_kept():
    model = Toy()
    _, att = _run(model, _schedule([NAMES, ["b1", "b2"], NAMES, NAMES]), 2)
    try:
        assert set(att.state.caches) == {("b0", 0)}  # read at call 1; b1 and b2 were never kept
        model(torch.zeros(1, 2))
        assert set(att.state.caches) == set()  # call 2's b0 is not read: call 3 computes it again
    finally:
        detach(model)
    model = Toy()
    _, att = _run(model, _schedule([NAMES, ["b1", "b2"], NAMES]), 1)
    try:
        assert set(att.state.caches) == {("b0", 0)}  # call 1 reuses b0
    finally:
        detach(model)


def test_a_forecast_keeps_every_computed_value():
    model = Toy()
    _, att = _run(model, _schedule([NAMES, NAMES, NAMES], order=1), 2)
    try:
        assert all(len(att.state.caches[(n, 0)]) == 2 for n in NAMES)
        assert WHOLE_CALL_HOOK not in att.root_hooks
    finally:
        detach(model)


def test_a_call_that_reuses_every_block_returns_the_previous_output():
    model = Toy()
    outs, att = _run(model, _schedule([NAMES, [], NAMES], output_block="b2"), 3)
    try:
        assert WHOLE_CALL_HOOK in att.root_hooks
        assert torch.equal(outs[1], outs[0]) and not torch.equal(outs[2], outs[0])
        assert (att.state.computed, att.state.reused) == (6, 3)
        assert att.state.call == 2
    finally:
        detach(model)


def test_two_branches_keep_their_own_whole_call_outputs():
    model = Toy()
    outs, att = _run(model, _schedule([NAMES, NAMES, [], []], output_block="b2", branches=2), 4,
                      branches=2)
    try:
        assert torch.equal(outs[2], outs[0]) and torch.equal(outs[3], outs[1])
        assert not torch.equal(outs[0], outs[1])
    finally:
        detach(model)


def test_two_branches_reuse_their_own_block_values():
    model = Toy()
    outs, _ = _run(model, _schedule([NAMES, NAMES, ["b1", "b2"], ["b1", "b2"]], branches=2), 4,
                     branches=2)
    try:
        assert outs[2].flatten().tolist() == [6.0, 6.0]  # b0 of branch 0 (input 0)
        assert outs[3].flatten().tolist() == [7.0, 7.0]  # b0 of branch 1 (input 1)
    finally:
        detach(model)


def test_a_bare_module_wraps_and_a_pipeline_scheduler_does_not():
    model = Toy()
    _, att = _run(model, _schedule([NAMES, ["b1", "b2"]]), 5)  # wraps: 5 calls over a 2-call schedule
    detach(model)
    model = Toy()
    att = attach(model, _blocks(model), {}, schedule=_schedule([NAMES, ["b1", "b2"]]), scheduler=DDIMScheduler())
    try:
        att.scheduler.set_timesteps(2)
        model(torch.zeros(1, 2))
        model(torch.zeros(1, 2))
        with pytest.raises(ScheduleError):
            model(torch.zeros(1, 2))
    finally:
        detach(model)


def test_schedule_hooks_take_the_cache_modes():
    model = Toy()
    att = attach(model, _blocks(model), {"b1": "residual"}, schedule=_schedule([NAMES, ["b0", "b2"]]))
    try:
        hooks = {n: m._diffusers_hook.get_hook(BLOCK_HOOK) for n, m in _blocks(model).items()}
        assert isinstance(hooks["b1"], ScheduleHook)
        assert hooks["b1"].residual and not hooks["b0"].residual
        assert [hooks[n].index for n in NAMES] == [0, 1, 2]
        assert hooks["b0"].start is None and hooks["b0"].order == 0
    finally:
        detach(model)
    assert att.state.caches == {}


# ---------------------------------------------------------------------------------------------- postprocess
def test_mask_at_keeps_call_zero_and_scores_at_the_threshold():
    scores = torch.tensor([[0.0, 0.0, 0.0], [0.49, 0.5, 0.7], [0.6, 0.1, 0.9], [0.9, 0.9, 0.1]])
    m = mask_at(scores, 0.5, _graph())
    assert m[0].tolist() == [1, 1, 1]  # call 0 always computes
    assert m[1].tolist() == [0, 1, 1]  # 0.5 >= 0.5 is kept
    assert m[2].tolist() == [0, 0, 1]  # b0 feeds only the pruned b1: cascaded away
    assert m[3].tolist() == [0, 0, 0]


def test_pruned_ratio_is_the_share_of_macs_not_computed():
    mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert pruned_ratio(mask, PROFILE) == pytest.approx(30 / 200)


def test_threshold_for_ratio_checks_the_ratio_and_reach():
    scores = torch.rand(6, 3)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(DipgoError, match="ratio must be in"):
            threshold_for_ratio(scores, bad, _graph(), PROFILE)
    with pytest.raises(DipgoError, match="out of reach.*at most 0.500"):
        threshold_for_ratio(scores, 0.6, _graph(), PROFILE)


def test_threshold_for_ratio_lands_within_tol_and_prunes_low_scores_first():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(12, 3, generator=g)
    for ratio in (0.1, 0.25, 0.4):
        mask, r = threshold_for_ratio(scores, ratio, _graph(), PROFILE)
        assert abs(r - ratio) <= 0.0125 and r == pytest.approx(pruned_ratio(mask, PROFILE))
        assert mask[0].tolist() == [1, 1, 1]
        kept, pruned = scores[1:][mask[1:] > 0.5], scores[1:][mask[1:] < 0.5]
        # the cascade may prune more, but every gate below the threshold is pruned
        assert pruned.numel() > 0 and kept.numel() > 0
    mask, r = threshold_for_ratio(scores, 0.25, _graph(), PROFILE, tol=0.0)
    assert abs(r - 0.25) < 0.05


def test_threshold_for_ratio_falls_back_to_ranking_tied_scores():
    scores = torch.full((9, 3), 0.5)  # all tied: a threshold prunes all or nothing
    scores[:, 2] = 0.9
    mask, r = threshold_for_ratio(scores, 0.1, _graph(), PROFILE)
    assert 0.05 < r < 0.2  # one gate at a time, not 0 or the maximum
    assert r == pytest.approx(pruned_ratio(mask, PROFILE))


def test_schedule_from_mask_accounts_macs_and_skipped_calls():
    mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    s = schedule_from_mask(mask, _graph(), PROFILE, model_class="Toy", config_hash="h", scheduler="DDIMScheduler",
                           num_inference_steps=3, cfg=2, requested_ratio=0.4, meta={"k": 1})
    assert s.steps == [NAMES, ["b1", "b2"], []]
    assert s.macs_full == 2 * 3 * 100
    assert s.macs == 2 * (100 + (40 + 50))  # the empty call costs nothing: the whole call is reused
    assert s.achieved_ratio == round(1 - s.macs / s.macs_full, 6)
    assert s.requested_ratio == 0.4 and s.meta["k"] == 1 and s.meta["cost_profile"] == PROFILE.to_dict()
    assert s.output_block == "b2" and s.cache_modes == {n: "output" for n in NAMES}
    assert s.model_class == "Toy" and s.config_hash == "h" and s.scheduler == "DDIMScheduler"
    assert s.num_inference_steps == 3 and s.forecast_order == 0 and s.blocks == NAMES
    f = schedule_from_mask(mask, _graph(), PROFILE, model_class="Toy", config_hash="h", scheduler="DDIMScheduler",
                           num_inference_steps=3, cfg=2, forecast_order=1)
    assert f.forecast_order == 1 and f.macs == s.macs + 2 * 40  # a forecast runs the outside work
    assert f.meta == {"cost_profile": PROFILE.to_dict()}


def test_with_forecast_recounts_the_macs_both_ways():
    mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    s = schedule_from_mask(mask, _graph(), PROFILE, model_class="Toy", config_hash="h", scheduler="DDIMScheduler",
                           num_inference_steps=3, cfg=2)
    assert with_forecast(s, 0) is s
    f = with_forecast(s, 2)
    assert f.forecast_order == 2 and f.macs == s.macs + 2 * 40
    assert f.achieved_ratio == round(1 - f.macs / s.macs_full, 6)
    back = with_forecast(f, 0)
    assert back.macs == s.macs and back.achieved_ratio == s.achieved_ratio and s.forecast_order == 0
    bare = _schedule([NAMES, []], macs_full=400, macs=300)  # no cost profile: the figures stay
    assert with_forecast(bare, 1).macs == 300


# ---------------------------------------------------------------------------------------------- schedule format
PIPELINE_RECORD = {"candidates": {"spread": 20.0, "search": 21.5}, "winner": "search", "effort": "quick",
                   "held_out": {"n": 8, "seed": 100}, "psnr": 22.25,
                   "compared": {"label": "fewer steps", "macs_speedup": 2.0, "psnr": 19.5}}


def test_summary_draws_each_block_and_the_macs_and_the_pipeline_record():
    s = _schedule([NAMES, ["b2"], [], NAMES], macs_full=4000, macs=2000, meta={"pipeline": PIPELINE_RECORD})
    lines = s.summary().splitlines()
    assert lines[0] == "Toy, DDIMScheduler 4 steps, 4 calls; # computed, . reused from cache"
    assert lines[1:4] == ["b0 #..#", "b1 #..#", "b2 ##.#"]
    assert lines[4] == "2 full calls, 1 calls reuse every block"
    assert lines[5] == "MACs per image: 0.000 G of 0.000 G (2.00x fewer, pruned ratio 0.500)"
    assert lines[6] == ("chosen on 8 held-out images (seeds from 100), quick effort; candidates after reaching "
                        "the budget (PSNR vs the full model):")
    assert lines[7] == "  spread  20.00 dB"
    assert lines[8] == "  search  21.50 dB  <- best start, then refined"
    assert lines[9] == "result: 22.25 dB; fewer steps at 2.00x fewer MACs: 19.50 dB"
    assert len(lines) == 10


def test_summary_without_costs_or_record_and_with_a_forecast():
    s = _schedule([NAMES, ["b2"]], order=2, meta={"pipeline": {"candidates": "not a dict"}})
    lines = s.summary().splitlines()
    assert lines[0].endswith("reused from cache (forecast through the last 3 computed values, taylor form)")
    assert lines[-1] == "1 full calls, 0 calls reuse every block"
    rec = {"candidates": {"a": 1.0}}
    tail = _schedule([NAMES], meta={"pipeline": rec}).summary().splitlines()[-3:]
    assert tail == ["chosen on None held-out images (seeds from None), None effort; candidates after reaching the "
                    "budget (PSNR vs the full model):", "  a   1.00 dB", "result: nan dB"]


def test_long_bad_values_are_cut_in_messages():
    long = ["x" * 50, "y" * 50]
    with pytest.raises(ScheduleError) as err:
        _schedule([NAMES], meta=long)
    assert f"got {repr(long)[:77]}...; re-run" in str(err.value)
    short = [1, 2]
    with pytest.raises(ScheduleError, match=r"must be a dict, got \[1, 2\];"):
        _schedule([NAMES], meta=short)
    exactly = "m" * 78  # repr adds two quotes: 80 characters are shown whole
    with pytest.raises(ScheduleError, match=f"got '{exactly}';"):
        _schedule([NAMES], meta=exactly)


def test_mask_and_computes_follow_the_steps():
    s = _schedule([NAMES, ["b2"], ["b0", "b2"]])
    assert s.mask().tolist() == [[1, 1, 1], [0, 0, 1], [1, 0, 1]]
    assert s.computes(2, "b0") and not s.computes(1, "b0") and s.computes(1, "b2")
    s.steps = [NAMES, NAMES, [], NAMES]  # edited in place: the lookup follows
    assert s.computes(1, "b0") and not s.computes(2, "b2")


def test_the_saved_file_is_the_dict_indented_by_one(tmp_path):
    s = _schedule([NAMES, ["b2"]], order=1)
    path = s.save(tmp_path / "s.json")
    assert path.read_text() == __import__("json").dumps(s.to_dict(), indent=1)
    assert s.to_dict()["version"] == 2 and _schedule([NAMES]).to_dict()["version"] == 1
    loaded = Schedule.load(path)
    assert (loaded.steps, loaded.forecast_order, loaded.version) == (s.steps, 1, 2)


def test_schedule_at_ratio_records_the_search():
    from types import SimpleNamespace

    from dipgo.cache.postprocess import schedule_at_ratio

    g = torch.Generator().manual_seed(1)
    config = SimpleNamespace(iterations=3, ratio=0.3, loss="l2", init="ones", batch=2, guidance_scale=2.0,
                             num_inference_steps=10, forecast_order=1)
    result = SimpleNamespace(scores=torch.rand(10, 3, generator=g), graph=_graph(), profile=PROFILE, config=config,
                             seconds=12.34, meta={"model_class": "Toy", "config_hash": "h", "scheduler": "DDIM",
                                                  "cfg": 2, "calibration": {"n": 2}})
    s = schedule_at_ratio(result, 0.3)
    assert s.meta["search"] == {"iterations": 3, "seconds": 12.3, "target_ratio": 0.3, "loss": "l2", "init": "ones",
                                "batch": 2}
    assert s.meta["guidance_scale"] == 2.0 and s.meta["calibration"] == {"n": 2}
    assert (s.model_class, s.config_hash, s.scheduler, s.num_inference_steps) == ("Toy", "h", "DDIM", 10)
    assert s.requested_ratio == 0.3 and s.forecast_order == 1 and s.macs_full == 2 * 10 * 100
    assert abs(s.achieved_ratio - 0.3) < 0.03
    loose = schedule_at_ratio(result, 0.3, tol=0.2)
    assert abs(loose.achieved_ratio - 0.3) <= 0.2


def test_validation_messages_show_the_bad_value_and_edges_pass():
    with pytest.raises(ScheduleError, match=r"'num_inference_steps' must be an integer >= 1, got 0;"):
        _schedule([NAMES], num_inference_steps=0)
    with pytest.raises(ScheduleError, match=r"'scheduler' must be a string, got 3;"):
        _schedule([NAMES], scheduler=3)
    with pytest.raises(ScheduleError, match=r"'blocks' must be a list of block names \(non-empty strings\), got"):
        Schedule(model_class="T", config_hash="h", blocks=["a", ""], num_inference_steps=1, scheduler="S",
                 steps=[["a"]])
    with pytest.raises(ScheduleError, match=r"'macs' must be null or an integer >= 0, got -1;"):
        _schedule([NAMES], macs=-1)
    with pytest.raises(ScheduleError, match=r"'achieved_ratio' must be null or a number in \[0, 1\), got 1.5;"):
        _schedule([NAMES], achieved_ratio=1.5)
    with pytest.raises(ScheduleError, match="lists a block twice in field 'blocks'"):
        Schedule(model_class="T", config_hash="h", blocks=["a", "a"], num_inference_steps=1, scheduler="S",
                 steps=[["a"]])
    with pytest.raises(ScheduleError, match="has no blocks"):
        Schedule(model_class="T", config_hash="h", blocks=[], num_inference_steps=1, scheduler="S", steps=[[]])
    edge = _schedule([NAMES], macs=0, macs_full=0, achieved_ratio=0.0)  # one step, zero MACs: allowed
    assert edge.num_inference_steps == 1 and edge.macs == 0


def test_forecast_reads_only_the_newest_points():
    three = tuple((c, torch.tensor(float(v))) for c, v in ((0, 100.0), (1, 1.0), (2, 2.0)))
    assert forecast(three, 3, 1).item() == pytest.approx(3.0)  # the line through calls 1 and 2 only
    dup = ((1, torch.tensor(5.0)), (2, torch.tensor(1.0)), (2, torch.tensor(2.0)))
    assert forecast(dup, 4, 2).item() == 2.0
    out = _combine([1.0, -3.0, 3.0], [(torch.tensor(1.0),), (torch.tensor(4.0),), (torch.tensor(9.0),)])
    assert isinstance(out, tuple) and out[0].item() == pytest.approx(16.0)


def test_attach_takes_the_schedules_branches_when_none_are_given():
    model = Toy()
    att = attach(model, _blocks(model), {}, schedule=_schedule([NAMES, NAMES, [], []], branches=2))
    try:
        assert att.config.branches == 2
    finally:
        detach(model)
