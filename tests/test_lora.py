"""LoRA and skip schedules: a schedule made on the base model applies with a LoRA loaded (fused or not,
loaded before or after ``dipgo.apply``), one searched with a LoRA loaded applies without it, and the LoRA
really acts inside the computed blocks only. A LoRA changes weights, not the architecture, so the
schedule's architecture hash accepts it."""

from collections import Counter

import pytest
import torch
from families_adapters import GUIDANCE, STEPS, Family, lora_layers, random_lora

import dipgo
from dipgo.cache.search import Search, SearchConfig
from dipgo.models.adapters import resolve_blocks
from dipgo.models.costs import ExecutionProbe
from dipgo.models.identity import config_hash
from dipgo.models.pipelines import capture_denoiser_call

FAMILIES = ["sd", "flux"]  # a UNet (LoRA in its cross-attention blocks) and an MMDiT transformer


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) > 1e-3


def _lora_calls(f: Family, schedule) -> tuple[dict[str, int], dict[str, int]]:
    """Per block, the LoRA layer calls one generation made, and the calls the schedule allows:
    its LoRA layers times the calls where the block computes."""
    blocks = resolve_blocks(f.den, schedule.blocks)
    counts: Counter = Counter()
    handles = [layer.register_forward_pre_hook(lambda m, a, name=name: counts.update([name]))
               for name, block in blocks.items() for layer in lora_layers(block)]
    try:
        f.run()
    finally:
        for h in handles:
            h.remove()
    computed = schedule.mask().sum(0)
    expected = {name: len(lora_layers(block)) * int(computed[j]) for j, (name, block) in enumerate(blocks.items())}
    return {name: counts[name] for name in blocks}, expected


@pytest.mark.parametrize("family", FAMILIES)
def test_base_schedule_with_lora_loaded_before_apply(family):
    f = Family(family)
    schedule, every_block = f.schedule(), f.schedule(reused=())
    stock = f.run()
    dipgo.apply(f.pipe, schedule)
    base = f.run()
    dipgo.remove(f.pipe)
    arch = config_hash(f.den)

    f.pipe.load_lora_weights(random_lora(f.pipe))
    assert config_hash(f.den) == arch  # a LoRA is weights, not architecture: the schedule's check accepts it
    stock_lora = f.run()
    assert _differ(stock_lora, stock)  # the LoRA acts
    dipgo.apply(f.pipe, every_block)
    torch.testing.assert_close(f.run(), stock_lora, atol=1e-6, rtol=0)
    dipgo.remove(f.pipe)

    dipgo.apply(f.pipe, schedule)
    unfused = f.run()
    assert _differ(unfused, base) and _differ(unfused, stock_lora)  # the LoRA acts, and the schedule reuses
    f.pipe.fuse_lora()
    assert config_hash(f.den) == arch
    torch.testing.assert_close(f.run(), unfused, atol=1e-5, rtol=0)
    f.pipe.unfuse_lora()
    torch.testing.assert_close(f.run(), unfused, atol=1e-5, rtol=0)
    dipgo.remove(f.pipe)
    torch.testing.assert_close(f.run(), stock_lora, atol=1e-5, rtol=0)  # fuse + unfuse leave float noise


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_loaded_after_apply_acts_in_computed_blocks_only(family):
    f = Family(family)
    schedule = f.schedule()
    lora = random_lora(f.pipe)
    f.pipe.load_lora_weights(lora)
    dipgo.apply(f.pipe, schedule)
    loaded_first = f.run()
    dipgo.remove(f.pipe)
    f.pipe.unload_lora_weights()
    dipgo.apply(f.pipe, schedule)
    base = f.run()

    f.pipe.load_lora_weights(lora)  # PEFT wraps the Linear layers inside the hooked blocks
    torch.testing.assert_close(f.run(), loaded_first, atol=0, rtol=0)
    ran, allowed = _lora_calls(f, schedule)
    assert ran == allowed and sum(ran.values()) > 0  # reused blocks run no LoRA layer, computed ones all
    f.pipe.fuse_lora()
    torch.testing.assert_close(f.run(), loaded_first, atol=1e-5, rtol=0)
    f.pipe.unfuse_lora()
    f.pipe.unload_lora_weights()  # PEFT puts the plain Linear layers back; the block hooks stay
    torch.testing.assert_close(f.run(), base, atol=1e-5, rtol=0)
    assert dipgo.is_applied(f.pipe)
    dipgo.remove(f.pipe)


@pytest.mark.parametrize("family", FAMILIES)
def test_schedule_searched_with_lora_applies_without(family):
    f = Family(family)
    f.pipe.load_lora_weights(random_lora(f.pipe))
    trainable = {n: p.requires_grad for n, p in f.den.named_parameters()}
    cfg = SearchConfig(ratio=0.5, num_inference_steps=STEPS, guidance_scale=GUIDANCE, iterations=2, batch=1)
    result = Search(f.pipe, cfg, calibration=f.cal, call_kwargs=f.kwargs).run(progress=False)
    assert {n: p.requires_grad for n, p in f.den.named_parameters()} == trainable  # the LoRA's are restored
    schedule = dipgo.schedule_at_ratio(result, 0.5)
    assert schedule.macs < schedule.macs_full
    f.pipe.fuse_lora()
    dipgo.apply(f.pipe, schedule)
    with_lora = f.run()
    dipgo.remove(f.pipe)
    f.pipe.unfuse_lora()
    f.pipe.unload_lora_weights()

    blocks = resolve_blocks(f.den, schedule.blocks)
    probe = ExecutionProbe(f.den, blocks, *capture_denoiser_call(f.pipe, f.cal, **f.kwargs))
    try:
        dipgo.apply(f.pipe, schedule)
        without = f.run()
        dipgo.remove(f.pipe)
        ran = probe.mask()
    finally:
        probe.remove()
    torch.testing.assert_close(ran, schedule.mask())  # it skips on the base model what it skipped with the LoRA
    assert _differ(with_lora, without) and torch.isfinite(without).all()
