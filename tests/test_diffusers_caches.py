"""diffusers' own caches as baselines (TaylorSeer, MagCache, SeaCache, FasterCache, PAB) on tiny random SD-UNet and
DiT pipelines: specs, a setting that skips nothing equals the full model, a skipping setting costs fewer measured
MACs, state is reset between generations, ``disable()`` restores the pipeline exactly, and what does not apply
to a UNet says why."""

import logging

import pytest
import torch
from families import tiny_dit, tiny_sd

from dipgo.errors import DipgoError
from dipgo.evaluate.baselines import METHODS, FewerSteps, Full, applies, parse_method
from dipgo.evaluate.diffusers_caches import PAB, FasterCache, MagCache, SeaCache, TaylorSeer, flow_sigma
from dipgo.evaluate.evaluation import Evaluator
from dipgo.models.adapters import resolve_blocks
from dipgo.models.costs import ExecutionProbe
from dipgo.models.pipelines import call_kwargs, default_calibration, num_calls

STEPS, GUIDANCE = 10, 4.0

# (family, a spec that skips, the same method skipping nothing)
CASES = [
    ("dit", "taylorseer:3", "taylorseer:1"),
    ("dit", "taylorseer:3,order=2", "taylorseer:1,order=2"),
    ("dit", "taylorseer:3,scope=blocks", "taylorseer:1,scope=blocks"),
    ("dit", "magcache:0.5", "magcache:0"),
    ("dit", "seacache:1.0", "seacache:0"),
    ("dit", "fastercache:2", "fastercache:1,uncond=1"),
    ("dit", "pab:2", "pab:1"),
    ("sd", "taylorseer:3", "taylorseer:1"),
    ("sd", "taylorseer:3,order=2", "taylorseer:1,order=2"),
    ("sd", "pab:2,cross=2", "pab:1"),
]


@pytest.fixture(scope="module")
def setups():
    """Per family: the pipeline, an evaluator on it and the full model's run."""
    out = {}
    for family, make in (("dit", tiny_dit), ("sd", tiny_sd)):
        pipe = make()
        ev = Evaluator(pipe, n=2, guidance_scale=GUIDANCE, batch=2)
        out[family] = pipe, ev, ev.run(Full().bind(pipe, STEPS, GUIDANCE), progress=False)
    yield out
    for _, ev, _ in out.values():
        ev.close()


def _images(pipe) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    kw = call_kwargs(pipe, default_calibration(pipe), [0, 1], gens, STEPS, GUIDANCE, output_type="pt")
    return pipe(**kw).images


@pytest.mark.parametrize("family,skipping,nothing", CASES)
def test_skipping_nothing_is_the_full_model_and_skipping_costs_less(setups, family, skipping, nothing):
    pipe, ev, full = setups[family]
    same = ev.run(parse_method(nothing).bind(pipe, STEPS, GUIDANCE), progress=False)
    torch.testing.assert_close(same.images, full.images, atol=1e-5, rtol=0)
    assert same.macs == pytest.approx(full.macs)
    fast = ev.run(parse_method(skipping).bind(pipe, STEPS, GUIDANCE), progress=False)
    assert fast.macs < 0.99 * full.macs  # measured by the probe: the skipped modules did not run
    assert (fast.images - full.images).abs().max() > 1e-6


@pytest.mark.parametrize("family,skipping", [(f, s) for f, s, _ in CASES])
def test_state_is_reset_and_disable_restores_the_pipeline(setups, family, skipping):
    pipe = setups[family][0]
    before = _images(pipe)
    applied = parse_method(skipping).bind(pipe, STEPS, GUIDANCE)
    applied.enable()
    try:
        applied.before_generation()
        first = _images(pipe)
        applied.before_generation()
        second = _images(pipe)
    finally:
        applied.disable()
    assert torch.equal(first, second)  # the second generation starts from a clean state
    assert not torch.equal(first, before)
    assert torch.equal(_images(pipe), before)  # bitwise: as if never applied


def test_probe_watches_the_modules_a_method_skips(setups):
    dit = setups["dit"][0].transformer
    ts = parse_method("taylorseer:3").bind(setups["dit"][0], STEPS, GUIDANCE)
    assert ts.probe_units == [f"transformer_blocks.{i}.{m}" for i in range(len(dit.transformer_blocks))
                              for m in ("attn1", "ff")]
    pab = parse_method("pab:2,cross=2").bind(setups["sd"][0], STEPS, GUIDANCE)
    assert pab.probe_units and all(u.endswith((".attn1", ".attn2")) for u in pab.probe_units)
    blocks = parse_method("taylorseer:3").bind(setups["sd"][0], STEPS, GUIDANCE).probe_units
    assert "down_blocks.1.attentions.0.transformer_blocks.0" in blocks and "down_blocks.0.resnets.0" in blocks
    assert not any(u.endswith("attentions.0") for u in blocks)  # a UNet attention module stands in by its blocks


def test_probe_counts_the_half_batch_of_fastercache_calls(setups):
    pipe, ev, _ = setups["dit"]
    applied = parse_method("fastercache:2").bind(pipe, STEPS, GUIDANCE)
    denoiser = pipe.transformer
    probe = ExecutionProbe(denoiser, resolve_blocks(denoiser, applied.probe_units), *ev._call)
    applied.enable()
    try:
        applied.before_generation()
        _images(pipe)
    finally:
        applied.disable()
        probe.remove()
    shares = probe.shares().tolist()
    assert len(shares) == STEPS and shares[0] == 1.0 and 0.5 in shares  # some calls ran the conditional half only
    assert set(shares) == {0.5, 1.0}


def test_magcache_is_calibrated_on_the_model_quietly(setups, capsys):
    pipe = setups["dit"][0]
    applied = MagCache(0.1, calib=2).bind(pipe, STEPS, GUIDANCE)
    assert len(applied.mag_ratios) == num_calls(pipe, STEPS) and applied.mag_ratios[0] == 1.0
    assert all(r > 0 for r in applied.mag_ratios)
    assert "MagCache" not in capsys.readouterr().out  # diffusers' print is kept from the console
    assert not any(hasattr(m, "_diffusers_hook") and m._diffusers_hook.hooks for m in pipe.transformer.modules())
    assert logging.getLogger("diffusers.hooks.mag_cache").propagate


@pytest.mark.parametrize("spec", ["magcache:0.1", "seacache:0.2", "fastercache:2"])
def test_what_does_not_apply_to_a_unet_says_why(setups, spec):
    pipe = setups["sd"][0]
    ok, why = applies(parse_method(spec), pipe)
    assert not ok and "does not apply to UNet2DConditionModel" in why
    with pytest.raises(DipgoError, match="does not apply to UNet2DConditionModel"):
        parse_method(spec).bind(pipe, STEPS, GUIDANCE)
    assert applies(parse_method(spec), setups["dit"][0]) == (True, "")
    assert applies(FewerSteps(3), pipe) == (True, "")


def test_specs_parse_and_bad_specs_name_the_field():
    assert parse_method("taylorseer:3,order=2") == TaylorSeer(3, 2)
    assert parse_method("taylorseer:interval=4,warmup=2,scope=blocks") == TaylorSeer(4, warmup=2, scope="blocks")
    assert parse_method("magcache:0.06,max_skip=2") == MagCache(0.06, max_skip=2)
    assert parse_method("seacache:0.25,order=0,end=2") == SeaCache(0.25, order=0, end=2)
    assert parse_method("fastercache:3,uncond=4") == FasterCache(3, 4)
    assert parse_method("pab:2,cross=4,tmax=700") == PAB(2, 4, tmax=700)
    assert {"taylorseer", "magcache", "seacache", "fastercache", "pab"} <= set(METHODS)
    for bad, field in [("taylorseer:0", "interval"), ("taylorseer:2,order=-1", "order"),
                       ("taylorseer:2,order=x", "order"), ("taylorseer:2,scope=layers", "scope"),
                       ("taylorseer:2,speed=3", "speed"), ("magcache:-1", "threshold"),
                       ("magcache:0.1,retention=2", "retention"), ("magcache:0.1,calib=0", "calib"),
                       ("seacache:0.1,order=2", "order"), ("seacache:0.1,power=0", "power"),
                       ("seacache:0.1,max_skip=-1", "max_skip"), ("fastercache:0", "interval"),
                       ("fastercache:2,uncond=0", "uncond"), ("pab:0", "interval"), ("pab:2,cross=0", "cross"),
                       ("pab:2,tmin=900", "tmin < tmax")]:
        with pytest.raises(DipgoError, match=field):
            parse_method(bad)


def test_flow_sigma_of_a_vp_scheduler(setups):
    scheduler = setups["dit"][0].scheduler
    sigmas = [flow_sigma(scheduler, t) for t in (0, 250, 500, 999)]
    assert all(0 < s < 1 for s in sigmas) and sigmas == sorted(sigmas)
    a = float(scheduler.alphas_cumprod[500])
    assert sigmas[2] == pytest.approx((1 - a) ** 0.5 / (a ** 0.5 + (1 - a) ** 0.5))
    with pytest.raises(DipgoError, match="noise level"):
        flow_sigma(object(), 10.0)
