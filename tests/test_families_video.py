"""The generic search on text-to-video pipelines (Wan 2.1, CogVideoX, HunyuanVideo), tiny random configs built
offline: the videos (N, F, C, H, W) flow through the search's sampler, its loss and the pipeline helpers; with all
gates on the search gives the pipeline's own videos, a 3-iteration search runs, its schedule applies to the stock
pipeline (the execution probe shows skipped blocks doing no work) and removing it gives the stock videos again."""

import pytest
import torch
from families_video import CALL_KWARGS, FRAMES, SIZE, VIDEO_FAMILIES

import dipgo
from dipgo.cache.driver import FunctionSampler, PipelineSampler
from dipgo.cache.runtime import attach, detach
from dipgo.cache.search import Search, SearchConfig, consistency
from dipgo.errors import DipgoError
from dipgo.models.adapters import HIDDEN_FIRST_MODE, block_graph, resolve_blocks
from dipgo.models.costs import ExecutionProbe, count_macs
from dipgo.models.pipelines import (
    as_images,
    capture_denoiser_call,
    conditioning_of,
    default_calibration,
    denoiser_of,
    generate,
    pipeline_images,
)
from dipgo.models.similarity import psnr, ssim

STEPS = 4
GUIDANCE = 2.0
PROMPTS = ["a red cube on a table", "a watercolor of a boat"]
# Wan calls its transformer twice per step under guidance (cond, then uncond); CogVideoX batches both into one
# call; HunyuanVideo embeds the guidance scale (one call).
CALLS_PER_STEP = {"wan": 2, "cogvideox": 1, "hunyuan_video": 1}
BLOCKS = {"wan": ["blocks.0", "blocks.1"], "cogvideox": ["transformer_blocks.0", "transformer_blocks.1"],
          "hunyuan_video": ["transformer_blocks.0", "single_transformer_blocks.0"]}
MODES = {"wan": "residual", "cogvideox": HIDDEN_FIRST_MODE, "hunyuan_video": HIDDEN_FIRST_MODE}


def _setup(family):
    pipe = VIDEO_FAMILIES[family]()
    return pipe, default_calibration(pipe, PROMPTS), dict(CALL_KWARGS[family])


def _videos(pipe, cal, extra):
    return generate(pipe, cal, [0, 1], seed=5, num_inference_steps=STEPS, guidance_scale=GUIDANCE, **extra)


@pytest.mark.parametrize("family", sorted(VIDEO_FAMILIES))
def test_video_family_outputs_and_adapter(family):
    pipe, cal, extra = _setup(family)
    assert conditioning_of(pipe) == "prompt"
    graph = block_graph(denoiser_of(pipe))
    assert graph.names == BLOCKS[family] and set(graph.modes.values()) == {MODES[family]}
    videos = _videos(pipe, cal, extra)
    assert videos.shape == (2, FRAMES[family], 3, SIZE[family], SIZE[family]) and torch.isfinite(videos).all()
    assert not torch.equal(videos[0], videos[1]) and not torch.equal(videos[:, 0], videos[:, -1])
    # numpy frames (N, F, H, W, C) and PIL frame lists read back in the "pt" layout
    for kind, atol in (("np", 1e-6), ("pil", 0.5 / 255 + 1e-6)):
        out = pipe(prompt=PROMPTS, num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type=kind,
                   generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **extra)
        torch.testing.assert_close(as_images(pipeline_images(out)), videos, atol=atol, rtol=0)
    # MACs are counted inside every block and outside them (the 3-D patch embedding, the projections)
    args, kwargs = capture_denoiser_call(pipe, cal, **extra)
    blocks = resolve_blocks(denoiser_of(pipe), graph.names)
    counter = count_macs(denoiser_of(pipe), args, kwargs, scopes=blocks)
    assert all(counter.by_scope[n] > 0 for n in graph.names) and counter.total > sum(counter.by_scope.values())


def test_video_similarity_is_per_video_over_frames():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 3, 16, 16, generator=g)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    per_frame = ssim(a.flatten(0, 1), b.flatten(0, 1)).view(2, 3)
    torch.testing.assert_close(ssim(a, b), per_frame.mean(1))
    mse = (a - b).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(a, b), -10 * torch.log10(mse))
    torch.testing.assert_close(consistency(a, b, "ssim"), (1 - per_frame).mean())


def test_own_loop_may_return_videos():
    module = torch.nn.Linear(2, 2)
    videos = FunctionSampler(lambda gens: torch.zeros(len(gens), 3, 3, 4, 4), module, 2)
    assert videos([0, 1], [torch.Generator()] * 2).shape == (2, 3, 3, 4, 4)
    with pytest.raises(DipgoError, match=r"videos \(N, F, C, H, W\)"):
        FunctionSampler(lambda gens: torch.zeros(len(gens), 1, 3, 3, 4, 4), module, 2)([0], [torch.Generator()])


@pytest.mark.parametrize("family", sorted(VIDEO_FAMILIES))
def test_generic_search_on_video_family(family):
    pipe, cal, extra = _setup(family)
    den = denoiser_of(pipe)
    graph = block_graph(den)
    reference = _videos(pipe, cal, extra)

    # all gates on, with gradients: exactly the pipeline's own videos, in its (N, F, C, H, W) layout
    sampler = PipelineSampler(pipe, cal, STEPS, GUIDANCE, extra)
    att = attach(den, resolve_blocks(den, graph.names), graph.modes)
    try:
        att.state.gates = torch.ones(64, len(graph.names), requires_grad=True)
        att.state.reset()
        att.state.new_generation = True
        videos = sampler([0, 1], [torch.Generator().manual_seed(5 + i) for i in range(2)])
        assert videos.requires_grad
        videos.mean().backward()  # gradients reach the gates through the pipeline's own code
        assert att.state.gates.grad is not None and att.state.gates.grad.abs().sum() > 0
    finally:
        att.state.gates = None
        detach(den)
    torch.testing.assert_close(videos.detach(), reference, atol=2e-5, rtol=0)

    # a 3-iteration search runs; its schedule applies to the stock pipeline and skips blocks for real
    cfg = SearchConfig(ratio=0.5, num_inference_steps=STEPS, guidance_scale=GUIDANCE, iterations=3, batch=1,
                       grad_checkpointing=family == "wan")  # both paths of the root hook
    result = Search(pipe, cfg, calibration=cal, call_kwargs=extra).run(progress=False)
    assert result.scores.shape == (STEPS * CALLS_PER_STEP[family], len(graph.names))
    assert all(0 < h["psnr"] <= 100 for h in result.history)
    schedule = dipgo.schedule_at_ratio(result, 0.5)
    assert schedule.macs < schedule.macs_full and schedule.mask().sum() < schedule.mask().numel()
    args, kwargs = capture_denoiser_call(pipe, cal, **extra)
    probe = ExecutionProbe(den, resolve_blocks(den, graph.names), args, kwargs)
    try:
        dipgo.apply(pipe, schedule)
        try:
            pruned = _videos(pipe, cal, extra)
        finally:
            dipgo.remove(pipe)
        ran = probe.mask()
    finally:
        probe.remove()
    torch.testing.assert_close(ran, schedule.mask())  # a skipped block ran no layer of its own
    assert torch.isfinite(pruned).all() and pruned.shape == reference.shape
    assert not torch.equal(pruned, reference)  # the reuse changed the videos...
    torch.testing.assert_close(_videos(pipe, cal, extra), reference, atol=0, rtol=0)  # ...and removing it undoes it
