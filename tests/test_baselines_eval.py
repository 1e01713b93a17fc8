"""Baselines (fewer steps, DeepCache, first-block cache), the measured-MACs probe, `dipgo eval` and the
bench report, on the zoo models with few steps and few images."""

import json

import pytest
import torch
from helpers import digits, make_schedule

from dipgo.cli import main
from dipgo.errors import DipgoError
from dipgo.evaluate import evaluation
from dipgo.evaluate.baselines import (
    AppliedSchedule,
    DeepCache,
    FewerSteps,
    FirstBlockCache,
    Full,
    deepcache_units,
    diffusers_fbc_applies,
    nonuniform_full_steps,
    parse_method,
)
from dipgo.evaluate.bench import BenchConfig, at_macs, floor_table, markdown, target_check
from dipgo.evaluate.evaluation import KEYS, Evaluator
from dipgo.models.adapters import block_graph, resolve_blocks
from dipgo.models.costs import profile_denoiser
from dipgo.models.pipelines import call_kwargs, capture_denoiser_call, set_scheduler


def _images(pipe, steps=8, labels=(3, 7), guidance=4.0):
    gens = [torch.Generator().manual_seed(i) for i in range(len(labels))]
    return pipe(**call_kwargs(pipe, digits(pipe), list(labels), gens, steps, guidance, output_type="pt")).images


@pytest.mark.parametrize("interval,branch", [(3, 0), (2, 1), (4, 3)])
def test_deepcache_matches_the_deepcache_package(sd_pipe, interval, branch):
    DeepCacheSDHelper = pytest.importorskip("DeepCache").DeepCacheSDHelper
    set_scheduler(sd_pipe, "ddim")
    helper = DeepCacheSDHelper(pipe=sd_pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        theirs = _images(sd_pipe)
    finally:
        helper.disable()
    applied = DeepCache(interval, branch).bind(sd_pipe, 8, 4.0)
    applied.enable()
    try:
        ours = _images(sd_pipe)
    finally:
        applied.disable()
    full = _images(sd_pipe)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert (ours - full).abs().max() > 1e-3  # it really skipped something
    assert applied.schedule.macs < applied.schedule.macs_full


def test_deepcache_branch_units_follow_the_package_rule(sd_pipe):
    unet = sd_pipe.unet
    graph = block_graph(unet, "fine")
    # branch 0: nothing of the down path, only the last up layer (which reads conv_in's skip)
    assert deepcache_units(graph, unet, 0) == {"up_blocks.3.resnets.1", "up_blocks.3.attentions.1"}
    b1 = deepcache_units(graph, unet, 1)
    assert {"down_blocks.0.resnets.0", "down_blocks.0.attentions.0"} <= b1
    assert "down_blocks.0.downsamplers.0" not in b1 and "mid_block.resnets.0" not in b1
    assert deepcache_units(graph, unet, 0) < b1 < deepcache_units(graph, unet, 3)


def test_nonuniform_full_steps_are_dense_around_the_centre():
    idx = nonuniform_full_steps(50, 10, center=15, power=1.4)
    assert len(idx) == 10 and idx[0] == 0 and idx == sorted(set(idx)) and max(idx) < 50
    gaps = [b - a for a, b in zip(idx[:-1], idx[1:], strict=True)]
    near = min(range(len(idx)), key=lambda i: abs(idx[i] - 15))
    assert min(gaps) == min(gaps[max(0, near - 1):near + 1])  # smallest gaps next to the centre
    assert max(gaps) == gaps[-1]  # the far end is sparsest
    with pytest.raises(DipgoError, match="center"):
        nonuniform_full_steps(50, 10, center=60)


def test_own_first_block_cache_equals_diffusers_on_dit(dit_pipe):
    set_scheduler(dit_pipe, "ddim")
    assert diffusers_fbc_applies(dit_pipe.transformer)
    assert not diffusers_fbc_applies(torch.nn.Linear(2, 2))
    outs = {}
    # FBCache both ways, and a static schedule (DeepCache's, every block reused between full calls), whose calls
    # are counted: a call count or cache left over from the first generation would change the second one
    for impl, method in (("diffusers", FirstBlockCache(0.3, "diffusers")), ("dipgo", FirstBlockCache(0.3, "dipgo")),
                         ("static", DeepCache(3, 0))):
        applied = method.bind(dit_pipe, 8, 2.0)
        applied.enable()
        runs = []
        try:
            for _ in range(2):  # the second generation must start from a clean state
                applied.before_generation()
                runs.append(_images(dit_pipe, guidance=2.0))
        finally:
            applied.disable()
        assert torch.equal(runs[0], runs[1]), f"{impl}: the second generation differs from the first (same seeds)"
        outs[impl] = runs[1]
    full = _images(dit_pipe, guidance=2.0)
    torch.testing.assert_close(outs["dipgo"], outs["diffusers"], atol=1e-4, rtol=0)
    assert (outs["dipgo"] - full).abs().max() > 1e-3
    with pytest.raises(DipgoError, match="does not apply"):
        FirstBlockCache(0.1, "diffusers").bind(_FakePipe(), 8)


class _FakePipe:
    transformer = torch.nn.Linear(2, 2)


def test_probe_measures_what_ran(sd_pipe):
    """Measured MACs equal the schedule's own accounting (static), the step ratio (fewer steps), and
    fall with the first-block-cache threshold (dynamic)."""
    set_scheduler(sd_pipe, "ddim")
    ev = Evaluator(sd_pipe, n=2, guidance_scale=4.0, batch=2, calibration=digits(sd_pipe))
    try:
        full = ev.run(Full().bind(sd_pipe, 8, 4.0), progress=False)
        assert full.macs == pytest.approx(8 * 2 * ev.profile.call_macs)
        half = ev.run(FewerSteps(4).bind(sd_pipe, 8, 4.0), progress=False)
        assert half.macs == pytest.approx(full.macs / 2)
        dc = DeepCache(3, 0).bind(sd_pipe, 8, 4.0)
        assert ev.run(dc, progress=False).macs == pytest.approx(dc.schedule.macs, rel=1e-9)
        graph = block_graph(sd_pipe.unet, "coarse")
        mask = torch.ones(8, len(graph.names))
        mask[[2, 3, 5, 6, 7], :] = 0
        mask[4, graph.names.index("up_blocks.0")] = 0
        args, kwargs = capture_denoiser_call(sd_pipe)
        profile = profile_denoiser(sd_pipe.unet, resolve_blocks(sd_pipe.unet, graph.names), args, kwargs)
        schedule = make_schedule(sd_pipe.unet, "DDIMScheduler", 8, graph, profile, mask, cfg=2)
        pruned = ev.run(AppliedSchedule(sd_pipe, schedule, "mask"), progress=False)
        assert pruned.macs == pytest.approx(schedule.macs, rel=1e-9)  # whole-call reuse costs nothing
        loose = ev.run(FirstBlockCache(10.0).bind(sd_pipe, 8, 4.0), progress=False)
        tight = ev.run(FirstBlockCache(0.0).bind(sd_pipe, 8, 4.0), progress=False)
        assert tight.macs == pytest.approx(full.macs)
        torch.testing.assert_close(tight.images, full.images)
        assert loose.macs < full.macs / 3
    finally:
        ev.close()


def test_eval_record_has_every_key(sd_pipe, monkeypatch, tmp_path):
    judge = evaluation.Judge(classify=lambda images: torch.zeros(len(images), dtype=torch.long))
    monkeypatch.setattr(judge, "fid", lambda images, progress=False: float(images.mean()))
    set_scheduler(sd_pipe, "ddim")
    rec = evaluation.evaluate(sd_pipe, parse_method("steps:3"), 6, n=4, batch=2, progress=False,
                              calibration=digits(sd_pipe), judge=judge)
    assert set(KEYS) <= set(rec)
    assert rec["macs_speedup"] == pytest.approx(2.0)
    assert rec["n"] == 4 and rec["seed"] == 0 and rec["num_inference_steps"] == 3
    assert 0 < rec["psnr_vs_full"] < 100 and 0 < rec["ssim_vs_full"] < 1
    json.dumps(rec)


def test_parse_method_and_bad_specs():
    assert parse_method("steps:10") == FewerSteps(10)
    assert parse_method("deepcache:5,branch=1,mode=nonuniform") == DeepCache(5, 1, "nonuniform")
    assert parse_method("fbcache:0.2,impl=dipgo") == FirstBlockCache(0.2, "dipgo")
    for bad, msg in [("magic:3", "unknown method"), ("deepcache:0", "interval"), ("steps:1,2", "positional"),
                     ("deepcache:3,mode=sideways", "mode"), ("fbcache:0.1,colour=red", "bad arguments")]:
        with pytest.raises(DipgoError, match=msg):
            parse_method(bad)


def test_cli_eval_rejects_bad_input(capsys):
    assert main(["eval", "mnist-sd", "--method", "magic:1"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["eval", "mnist-sd", "--method", "full", "--schedule", "x.json"]) == 2
    assert main(["bench", "nope-model"]) == 2


def test_bench_config_validation():
    with pytest.raises(DipgoError, match="budgets"):
        BenchConfig(budgets=[0.5])
    with pytest.raises(DipgoError, match="families"):
        BenchConfig(families=["magic"])
    assert BenchConfig.quick().n < BenchConfig().n
    with pytest.raises(DipgoError, match="unknown scheduler 'heun'"):
        BenchConfig(scheduler="heun")
    with pytest.raises(DipgoError, match="unknown dtype"):
        BenchConfig(dtype="fp8")
    from dipgo.evaluate.bench import scheduler_label, scheduler_tag

    assert [scheduler_tag(s) for s in ("ddim", "plms", "dpm++", "euler")] == ["ddim", "pndm", "dpmpp", "euler"]
    assert [scheduler_label(s) for s in (None, "pndm", "dpm", "euler")] == ["DDIM", "PLMS", "DPM++", "Euler"]


def _rec(family, budget, psnr, fid, speed=2.0):
    return {"model": "m", "base": 20, "family": family, "budget": budget, "method": family, "macs_speedup": speed,
            "wall_speedup": speed, "latency_ms": 1.0, "latency_spread_ms": [0.9, 1.1], "fid": fid, "cond_acc": 0.99,
            "psnr_vs_full": psnr, "ssim_vs_full": 0.9}


def test_target_check_and_markdown():
    recs = [_rec("full", 1.0, 100, 10, 1.0), _rec("dipgo", 2.0, 30, 10.4), _rec("fewer steps", 2.0, 28, 10.0),
            _rec("DeepCache", 2.0, 31, 12.0)]
    checks = {c["versus"]: c for c in target_check(recs)}
    assert checks["fewer steps"]["met"]  # better PSNR, FID within 5 %
    assert not checks["DeepCache"]["met"] and checks["DeepCache"]["fid_ok"]  # worse PSNR
    recs[1]["fid"] = 11.0
    assert not {c["versus"]: c for c in target_check(recs)}["fewer steps"]["fid_ok"]
    report = {"config": {"tag": "t", "n": 8, "seed": 0, "batch": 4}, "seconds": 60, "searches": {},
              "machine": {"cpu": "cpu", "cores": 2, "threads": 2, "torch": "x", "date": "today"}, "records": recs}
    text = markdown(report)
    assert "## m, DDIM-20" in text and "Met in 0 of 2" in text
    curve = [_rec("DeepCache", 2.0, 40.0, 10.0, 1.5), _rec("DeepCache", 3.0, 30.0, 20.0, 3.0)]
    value, inside = at_macs(curve, 4.5 ** 0.5, "psnr_vs_full")  # halfway in log speedup
    assert inside and value == pytest.approx(35.0)
    assert at_macs(curve, 4.0, "fid") == (20.0, False)  # beyond the curve: the nearest point, flagged
    floor = {f["family"]: f for f in floor_table(recs, 30.0)}
    assert floor["dipgo"]["wall_speedup"] == 2.0 and floor["fewer steps"]["wall_speedup"] is None
    assert "none reaches the floor" in text


def test_bracket_points_measure_the_far_side_of_each_dipgo_point(dit_pipe):
    """A dipgo point beyond a baseline's measured MACs gets that baseline's nearest setting on the far side,
    so the target check interpolates instead of comparing with a point that spends other MACs."""
    from dipgo.evaluate.bench import _options, bracket_points

    fora = {round(s, 3): a for s, a in _options("DeepCache", dit_pipe, 20, 1.0)}
    n4 = min(fora, key=lambda s: abs(s - 4.0))
    recs = [_rec("dipgo", 4.4, 27.0, 48.0, 4.19), _rec("fewer steps", 4.4, 26.8, 47.8, 4.0),
            _rec("DeepCache", 4.4, 27.3, 49.7, n4)]
    todo = {family: (budget, a) for family, budget, a in bracket_points(dit_pipe, 20, 1.0, recs)}
    assert set(todo) == {"fewer steps", "DeepCache"}
    assert todo["fewer steps"][1].label == "4 steps" and todo["fewer steps"][0] == 4.4
    far = todo["DeepCache"][1]
    speed = far.schedule.macs_full / far.schedule.macs
    assert speed > 4.19 and not [s for s in fora if 4.19 <= s < speed - 1e-3]  # the nearest beyond, N=5
    # bracketed already: nothing to add; below every DeepCache setting (N=2 is its cheapest): nothing either
    recs += [_rec("fewer steps", 4.4, 24.0, 50.0, 5.0), _rec("DeepCache", 4.4, 25.0, 51.0, speed)]
    assert bracket_points(dit_pipe, 20, 1.0, recs) == []
    low = [_rec("dipgo", 2.0, 36.0, 47.0, 1.9), _rec("DeepCache", 2.0, 36.1, 47.9, min(fora))]
    assert bracket_points(dit_pipe, 20, 1.0, low) == []


def test_bench_prunes_each_budget_with_the_users_pipeline_and_reuses_it(sd_pipe, tmp_path, monkeypatch):
    """The bench's dipgo point is what `dipgo prune --effort E` writes: the same pipeline, nothing more."""
    from dipgo.cache import pipeline
    from dipgo.evaluate import bench

    set_scheduler(sd_pipe, "ddim")
    seen = []
    real = bench.prune_schedules

    def spy(pipe, config, **kw):
        seen.append(config)
        config.iterations, config.evaluations, config.held_out = 2, pipeline.MIN_EVALUATIONS, 2
        return real(pipe, config, **kw)

    monkeypatch.setattr(bench, "prune_schedules", spy)
    cfg = bench.BenchConfig(models=["mnist-sd"], bases=[4], budgets=[2.0], out=str(tmp_path), effort="quick")
    schedule = bench.dipgo_for_budget(sd_pipe, "mnist-sd", 4, 4.0, 2.0, cfg, digits(sd_pipe), progress=False)
    assert [c.effort for c in seen] == ["quick"] and seen[0].ratios == (0.5,)
    assert sorted(p.name for p in (tmp_path / "schedules").iterdir()) == ["mnist-sd-ddim4-x2-quick.json"]
    assert schedule.meta["pipeline"]["effort"] == "quick"

    monkeypatch.setattr(bench, "prune_schedules", lambda *a, **k: pytest.fail("pruned again"))
    again = bench.dipgo_for_budget(sd_pipe, "mnist-sd", 4, 4.0, 2.0, cfg, digits(sd_pipe), progress=False)
    assert again.steps == schedule.steps


def test_probe_on_dit_counts_only_blocks_that_ran(dit_pipe):
    """DiT's final layer calls ``transformer_blocks[0].norm1.emb`` from outside the block, and a call
    that reuses every block still runs the embeddings and the final layer: the probe must count
    neither as the block running, and must count the outside work (regression: both were wrong)."""
    set_scheduler(dit_pipe, "ddim")
    den = dit_pipe.transformer
    graph = block_graph(den)
    args, kwargs = capture_denoiser_call(dit_pipe)
    profile = profile_denoiser(den, resolve_blocks(den, graph.names), args, kwargs)
    mask = torch.ones(6, len(graph.names))
    mask[2:, 0] = 0      # block 0 reused from call 2 on
    mask[3] = 0          # call 3 reuses every block
    schedule = make_schedule(den, "DDIMScheduler", 6, graph, profile, mask, cfg=2)
    ev = Evaluator(dit_pipe, n=2, guidance_scale=2.0, batch=2, calibration=digits(dit_pipe))
    try:
        run = ev.run(AppliedSchedule(dit_pipe, schedule, "mask"), progress=False)
        torch.testing.assert_close(ev.probe.mask(), mask)
        assert run.macs == pytest.approx(schedule.macs, rel=1e-9)
        fora = DeepCache(3, 0).bind(dit_pipe, 6, 2.0)  # every block reused between full calls
        assert ev.run(fora, progress=False).macs == pytest.approx(fora.schedule.macs, rel=1e-9)
    finally:
        ev.close()


def test_eval_counts_a_fine_transformer_schedule_at_its_modules(dit_pipe):
    """A schedule at fine granularity skips attention and feed-forward modules inside DiT's blocks: the
    evaluation probes those modules, so its MACs are the schedule's own (not the full model's, which a probe on
    the blocks alone would see, as every block still runs its norms)."""
    set_scheduler(dit_pipe, "ddim")
    den = dit_pipe.transformer
    graph = block_graph(den, "fine")
    args, kwargs = capture_denoiser_call(dit_pipe)
    profile = profile_denoiser(den, resolve_blocks(den, graph.names), args, kwargs)
    mask = torch.ones(6, len(graph.names))
    mask[1::2] = 0                     # every other call reuses every module
    mask[2, graph.names.index("transformer_blocks.3.ff")] = 0
    schedule = make_schedule(den, "DDIMScheduler", 6, graph, profile, mask, cfg=2)
    assert schedule.macs_full / schedule.macs > 1.9
    ev = Evaluator(dit_pipe, n=2, guidance_scale=2.0, batch=2, calibration=digits(dit_pipe))
    try:
        run = ev.run(AppliedSchedule(dit_pipe, schedule, "fine"), progress=False)
        assert run.macs == pytest.approx(schedule.macs, rel=1e-9)
        assert ev.full_macs(6) / run.macs > 1.9
    finally:
        ev.close()
