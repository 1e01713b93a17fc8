"""The generic search on every pipeline family, each a tiny random config built here (no hub):
the search runs the pipeline's own ``__call__``, with all gates on it gives the pipeline's own images,
a 3-iteration search runs, its schedule applies to the stock pipeline, and the execution probe shows
that skipped blocks do no work."""

import dataclasses

import pytest
import torch
from families import CALL_KWARGS, FAMILIES

import dipgo
from dipgo.cache.driver import PipelineSampler
from dipgo.cache.runtime import attach, detach
from dipgo.cache.search import Search, SearchConfig
from dipgo.errors import DipgoError
from dipgo.models.adapters import SUBLAYER, block_graph, resolve_blocks
from dipgo.models.costs import ExecutionProbe
from dipgo.models.pipelines import capture_denoiser_call, default_calibration, denoiser_of, generate

STEPS = 4
GUIDANCE = 2.0


def _setup(family):
    pipe = FAMILIES[family]()
    prompts = ["a red cube on a table", "a watercolor of a boat"] if family not in ("dit", "ddpm", "ddim") else None
    labels = [3, 17] if family == "dit" else None
    return pipe, default_calibration(pipe, prompts, labels), dict(CALL_KWARGS[family])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generic_search_on_family(family):
    pipe, cal, extra = _setup(family)
    den = denoiser_of(pipe)
    graph = block_graph(den)
    reference = generate(pipe, cal, [0, 1], seed=5, num_inference_steps=STEPS, guidance_scale=GUIDANCE, **extra)

    # all gates on, with gradients: exactly the pipeline's own images
    sampler = PipelineSampler(pipe, cal, STEPS, GUIDANCE, extra)
    att = attach(den, resolve_blocks(den, graph.names), graph.modes)
    try:
        att.state.gates = torch.ones(64, len(graph.names), requires_grad=True)
        att.state.reset()
        att.state.new_generation = True
        images = sampler([0, 1], [torch.Generator().manual_seed(5 + i) for i in range(2)])
        assert images.requires_grad
        images.mean().backward()  # gradients reach the gates through the pipeline's own code
        assert att.state.gates.grad is not None and att.state.gates.grad.abs().sum() > 0
    finally:
        att.state.gates = None
        detach(den)
    torch.testing.assert_close(images.detach(), reference, atol=2e-5, rtol=0)

    # a 3-iteration search runs and its schedule applies to the stock pipeline
    cfg = SearchConfig(ratio=0.5, num_inference_steps=STEPS, guidance_scale=GUIDANCE, iterations=3, batch=1,
                       grad_checkpointing=family in ("sd", "flux"))  # both paths of the root hook
    result = Search(pipe, cfg, calibration=cal, call_kwargs=extra).run(progress=False)
    calls = result.scores.shape[0]
    assert result.meta["calibration"]["count"] == len(cal.items)
    schedule = dipgo.schedule_at_ratio(result, 0.5)
    assert schedule.macs < schedule.macs_full
    args, kwargs = capture_denoiser_call(pipe, cal, **extra)
    probe = ExecutionProbe(den, resolve_blocks(den, graph.names), args, kwargs)
    try:
        dipgo.apply(pipe, schedule)
        try:
            pruned = generate(pipe, cal, [0, 1], seed=5, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                              **extra)
        finally:
            dipgo.remove(pipe)
        ran = probe.mask()
    finally:
        probe.remove()
    assert ran.shape == (calls, len(graph.names))
    torch.testing.assert_close(ran, schedule.mask())  # a skipped block ran no layer of its own
    assert torch.isfinite(pruned).all() and pruned.shape == reference.shape


@pytest.mark.parametrize("family", ["dit", "pixart", "sd3", "flux"])
def test_fine_granularity_gates_a_transformers_attention_and_feed_forward(family):
    """granularity="fine" on a transformer: one gate per attention / feed-forward module, output caching. A
    schedule that computes everything gives the pipeline's own images; a searched one skips only its units
    (the probe sees them not run)."""
    pipe, cal, extra = _setup(family)
    den = denoiser_of(pipe)
    graph = block_graph(den, "fine")
    coarse = block_graph(den, "coarse")
    assert len(graph.names) > len(coarse.names)
    assert all(SUBLAYER.fullmatch(n.rsplit(".", 1)[1]) for n in graph.names)
    assert all(any(n.startswith(b + ".") for b in coarse.names) for n in graph.names)
    assert set(graph.modes.values()) == {"output"}
    kw = dict(num_inference_steps=STEPS, guidance_scale=GUIDANCE, **extra)
    reference = generate(pipe, cal, [0, 1], seed=5, **kw)
    cfg = SearchConfig(ratio=0.5, num_inference_steps=STEPS, guidance_scale=GUIDANCE, iterations=3, batch=1,
                       granularity="fine")
    result = Search(pipe, cfg, calibration=cal, call_kwargs=extra).run(progress=False)
    schedule = dipgo.schedule_at_ratio(result, 0.5)
    assert schedule.blocks == graph.names and schedule.macs < schedule.macs_full
    everything = dataclasses.replace(schedule, steps=[list(graph.names)] * len(schedule.steps))
    out = {}
    for name, sched in (("everything", everything), ("pruned", schedule)):
        args, kwargs = capture_denoiser_call(pipe, cal, **extra)
        probe = ExecutionProbe(den, resolve_blocks(den, graph.names), args, kwargs)
        dipgo.apply(pipe, sched)
        try:
            out[name] = generate(pipe, cal, [0, 1], seed=5, **kw)
        finally:
            dipgo.remove(pipe)
            ran = probe.mask()
            probe.remove()
    torch.testing.assert_close(out["everything"], reference, atol=2e-5, rtol=0)
    torch.testing.assert_close(ran, schedule.mask())
    assert torch.isfinite(out["pruned"]).all() and not torch.equal(out["pruned"], reference)


def test_search_psnr_in_history_and_bad_calibration():
    pipe, cal, extra = _setup("ddim")
    # The history's PSNR is the gated images' against the full model's: gates that keep everything give the
    # full model's images (PSNR at its 100 dB cap, consistency 0); gates that reuse every block after call 0
    # give images far from them.
    psnr = {}
    for keep_bias in (20.0, -20.0):
        cfg = SearchConfig(ratio=0.5, num_inference_steps=STEPS, iterations=2, batch=1, keep_bias=keep_bias)
        history = Search(pipe, cfg, calibration=cal, call_kwargs=extra).run(progress=False).history
        assert [h["iteration"] for h in history] == [0, 1]
        psnr[keep_bias] = [h["psnr"] for h in history]
        if keep_bias > 0:
            assert all(h["consistency"] == pytest.approx(0.0, abs=1e-6) for h in history)
    assert psnr[20.0] == [100.0, 100.0]
    assert all(0.0 < p < 20.0 for p in psnr[-20.0]), psnr
    with pytest.raises(DipgoError, match="unconditional"):
        default_calibration(pipe, prompts=["a cat"])
    sd = FAMILIES["sd"]()
    with pytest.raises(DipgoError, match="give prompts, not class labels"):
        default_calibration(sd, class_labels=[1])
    generic = default_calibration(sd)
    assert generic.generic and len(generic.items) >= 30
    dit = FAMILIES["dit"]()
    with pytest.raises(DipgoError, match=r"out of range: this model has classes 0\.\.999"):
        default_calibration(dit, class_labels=[5, 1000])


def test_pipeline_without_adapter_names_the_fix():
    pipe = FAMILIES["ddim"]()

    class Plain(torch.nn.Module):
        pass

    with pytest.raises(DipgoError, match="blocks="):
        block_graph(Plain())
    with pytest.raises(DipgoError, match="unknown block name"):
        Search(pipe, SearchConfig(ratio=0.5, num_inference_steps=STEPS, iterations=1, batch=1),
               blocks=["down_blocks.0", "nope"])
