"""torch.compile with a schedule applied: ``dipgo.compile_blocks`` compiles the gated blocks' own forwards while
dipgo's hooks (compute or reuse) stay eager, so the images equal eager mode's and the number of compiled graphs
does not grow with the number of denoiser calls; the orders that cannot work are refused by name.

The compiling backend counts the graphs it is given and runs each as traced (no code generation): the same
torch ops in the same order as eager mode, so the images are compared bitwise."""

import os

import pytest
import torch
from tiny_schedules import Tiny

import dipgo
from dipgo.cache.hooks import BLOCK_HOOK, attachment_of
from dipgo.errors import DipgoError
from dipgo.models.pipelines import denoiser_of


class GraphCounter:
    """A torch.compile backend: counts the graphs dynamo hands it and runs them as traced."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return gm.forward


def _work(tiny: Tiny) -> tuple[int, int]:
    state = attachment_of(denoiser_of(tiny.pipe)).state
    return state.computed, state.reused


def _compiled_run(tiny: Tiny, steps: int, counter: GraphCounter) -> dict:
    """Eager images of the schedule, then compiled ones twice; graphs, frames and block work of each."""
    dipgo.apply(tiny.pipe, tiny.schedule(steps))
    try:
        eager = tiny.images(steps)
        eager_work = _work(tiny)
        names = dipgo.compile_blocks(tiny.pipe, backend=counter)
        compiled = tiny.images(steps)
        first_graphs = counter.graphs
        again = tiny.images(steps)
        work = _work(tiny)
    finally:
        dipgo.remove(tiny.pipe)
    return {"eager": eager, "compiled": compiled, "again": again, "names": names, "graphs": counter.graphs,
            "first_graphs": first_graphs, "frames": torch._dynamo.utils.counters["frames"]["total"],
            "eager_work": eager_work, "work": work}


@pytest.mark.parametrize("family", ["sd", "dit"])
def test_compiled_blocks_equal_eager_and_compile_once(family):
    """2 steps, then 6 steps (a schedule applied and compiled anew): the longer generation, with three times
    the denoiser calls, compiles no graph beyond the shorter one's."""
    tiny = Tiny.build(family)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    counter = GraphCounter()
    runs = {steps: _compiled_run(tiny, steps, counter) for steps in (2, 6)}
    for steps, r in runs.items():
        assert r["names"] == tiny.graph.names
        assert torch.equal(r["compiled"], r["eager"]) and torch.equal(r["again"], r["eager"]), steps
        computed, reused = r["eager_work"]
        assert reused > 0  # the schedule skips blocks...
        assert r["work"] == (3 * computed, 3 * reused)  # ...and compiled generations skip exactly the same ones
        assert r["graphs"] == r["first_graphs"]  # a second generation compiles nothing
        assert r["frames"] == r["graphs"]  # dynamo saw only the blocks' forwards, never a hook
    # the number of graphs does not grow with the number of denoiser calls (counts are cumulative)
    assert runs[2]["graphs"] == runs[6]["graphs"]
    assert 1 <= runs[2]["graphs"] <= len(tiny.graph.names)


def test_remove_restores_eager_blocks():
    tiny = Tiny.build("dit")
    stock = tiny.images(2)
    torch._dynamo.reset()
    dipgo.apply(tiny.pipe, tiny.schedule(2))
    att = attachment_of(denoiser_of(tiny.pipe))
    eager = {n: m._diffusers_hook.get_hook(BLOCK_HOOK).fn_ref.original_forward for n, m in att.blocks.items()}
    dipgo.compile_blocks(tiny.pipe, backend=GraphCounter())
    dipgo.compile_blocks(tiny.pipe, backend="eager")  # again, with other options: compiled from the eager forwards
    for name, module in att.blocks.items():
        assert module._diffusers_hook.get_hook(BLOCK_HOOK).fn_ref.original_forward.__wrapped__ == eager[name]
    tiny.images(2)
    dipgo.remove(tiny.pipe)
    for module in att.blocks.values():
        assert getattr(module.forward, "__func__", None) is type(module).forward  # not a compiled one
    assert torch.equal(tiny.images(2), stock)


def test_compile_in_an_order_that_cannot_work_names_the_one_that_does():
    tiny = Tiny.build("sd")
    schedule = tiny.schedule(2)
    with pytest.raises(DipgoError, match=r"call dipgo\.apply\(pipe, schedule\) first, then dipgo\.compile_blocks"):
        dipgo.compile_blocks(tiny.pipe)
    unet = tiny.pipe.unet
    tiny.pipe.unet = torch.compile(unet, backend="eager")
    fix = r"pipe\.unet = pipe\.unet\._orig_mod.*dipgo\.apply\(pipe, schedule\); dipgo\.compile_blocks\(pipe"
    with pytest.raises(DipgoError, match=r"dipgo\.apply needs the uncompiled denoiser.*OptimizedModule.*" + fix):
        dipgo.apply(tiny.pipe, schedule)
    assert not dipgo.is_applied(tiny.pipe)
    with pytest.raises(DipgoError, match=r"dipgo\.prune needs the uncompiled denoiser"):
        dipgo.prune(tiny.pipe, 0.5, 2, prompts=["a cat"], effort="quick")
    tiny.pipe.unet = unet
    dipgo.apply(tiny.pipe, schedule)
    try:
        unet.down_blocks[0].compile(backend="eager")  # in place, after apply: would run inside the eager hook
        with pytest.raises(DipgoError, match=r"DownBlock2D was compiled in place.*dipgo\.compile_blocks"):
            tiny.images(2)
    finally:
        dipgo.remove(tiny.pipe)
    with pytest.raises(DipgoError, match=r"pipe\.unet was compiled in place"):
        unet.compile(backend="eager")
        dipgo.apply(tiny.pipe, schedule)


def test_hooks_stay_out_of_a_compiled_denoiser():
    """Compiling the whole denoiser after apply gives no graph: dipgo's hooks, and the model inside them, run
    eagerly (the same images, nothing traced, nothing recompiled); compile_blocks is the way to compile it."""
    tiny = Tiny.build("dit")
    dipgo.apply(tiny.pipe, tiny.schedule(6))
    try:
        eager = tiny.images(6)
        torch._dynamo.reset()
        counter = GraphCounter()
        transformer = tiny.pipe.transformer
        tiny.pipe.transformer = torch.compile(transformer, backend=counter)
        images = tiny.images(6)
    finally:
        tiny.pipe.transformer = transformer
        dipgo.remove(tiny.pipe)
    assert torch.equal(images, eager)
    assert counter.graphs == 0


@pytest.mark.skipif(not os.environ.get("DIPGO_TEST_INDUCTOR"),
                    reason="inductor's first C++ compile takes minutes on 2 cores; set DIPGO_TEST_INDUCTOR=1")
def test_inductor_blocks_close_to_eager():
    """Inductor fuses and reorders float32 arithmetic: the images move by ~1e-7 (measured 3.6e-7 on 2 steps)."""
    tiny = Tiny.build("dit")
    torch._dynamo.reset()
    dipgo.apply(tiny.pipe, tiny.schedule(2))
    try:
        eager = tiny.images(2)
        dipgo.compile_blocks(tiny.pipe)  # torch.compile's defaults: inductor
        compiled = tiny.images(2)
    finally:
        dipgo.remove(tiny.pipe)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)


def test_wall_benchmark_compiles_the_blocks_of_every_method():
    """``benchmarks.wall_clock --compile``: full model, dipgo and fewer steps all run the same compiled blocks
    (one generation of each on the zoo's DiT; nothing timed)."""
    from benchmarks import harness as h
    from benchmarks import wall_clock as w

    torch._dynamo.reset()
    counter = GraphCounter()
    g = w.Generations("mnist-dit", batch=1, compile=counter)
    g.call("full")()
    graphs = counter.graphs
    with h.enabled(g.applied):
        g.call("dipgo")()
        state = attachment_of(denoiser_of(g.m.pipe)).state
        assert state.reused > 0 and state.computed > 0
    g.call("steps")()
    assert graphs > 0 and counter.graphs == graphs  # compiled once, for the full model, and reused by all
    for block in g.applied.pipe.transformer.transformer_blocks:
        assert hasattr(block.forward, "__wrapped__")  # still the compiled forward after dipgo was removed
