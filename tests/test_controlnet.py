"""Stable Diffusion with a ControlNet: the ControlNet's residuals are added to the UNet's skip tensors and mid
output inside the UNet's forward, outside its gated blocks. dipgo gates the UNet only: the search runs with the
control image among the call kwargs, a schedule searched with or without the ControlNet applies to the ControlNet
pipeline, and a reused down block's cached output still receives the running call's ControlNet residuals."""

import pytest
import torch
from families import tiny_sd
from families_control import CALL_KWARGS, control_image, tiny_controlnet
from helpers import make_schedule

import dipgo
from dipgo.cache.driver import PipelineSampler
from dipgo.cache.runtime import attach, detach
from dipgo.cache.search import Search, SearchConfig
from dipgo.models.adapters import block_graph, effective_keep, resolve_blocks
from dipgo.models.costs import ExecutionProbe, count_macs, profile_denoiser
from dipgo.models.pipelines import capture_denoiser_call, default_calibration, generate

STEPS = 4
GUIDANCE = 2.0
# down_blocks.0 reused at calls 1 and 3 while up_blocks.1, which reads its skip tensors, computes
ROWS = [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]


class Setup:
    def __init__(self):
        self.t2i = tiny_sd()
        self.pipe = tiny_controlnet(self.t2i)
        self.cal = default_calibration(self.pipe, ["a red cube", "a boat"])
        self.extra = dict(CALL_KWARGS, image=control_image())
        self.unet = self.pipe.unet
        self.graph = block_graph(self.unet)
        self.blocks = resolve_blocks(self.unet, self.graph.names)
        self.args, self.kwargs = capture_denoiser_call(self.pipe, self.cal, **self.extra)
        self.profile = profile_denoiser(self.unet, self.blocks, self.args, self.kwargs)

    def run(self, pipe=None, **kw) -> torch.Tensor:
        pipe = pipe or self.pipe
        extra = self.extra if pipe is self.pipe else dict(CALL_KWARGS)
        return generate(pipe, self.cal, [0, 1], seed=5, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                        **extra, **kw)

    def schedule(self, rows) -> dipgo.Schedule:
        mask = effective_keep(torch.tensor(rows, dtype=torch.float32), self.graph)
        return make_schedule(self.unet, type(self.pipe.scheduler).__name__, STEPS, self.graph, self.profile, mask)

    def probed(self, schedule) -> tuple[torch.Tensor, torch.Tensor]:
        """Images under ``schedule`` and the blocks that really ran in each UNet call."""
        probe = ExecutionProbe(self.unet, self.blocks, self.args, self.kwargs)
        try:
            dipgo.apply(self.pipe, schedule)
            try:
                images = self.run()
            finally:
                dipgo.remove(self.pipe)
            return images, probe.mask()
        finally:
            probe.remove()


@pytest.fixture(scope="module")
def setup():
    return Setup()


def test_the_control_image_conditions_the_unet(setup):
    """The fixture's ControlNet is not a no-op (``from_unet`` zero-initialises its residual projections)."""
    assert setup.kwargs["mid_block_additional_residual"].abs().max() > 0
    other = dict(setup.extra, image=1 - control_image())
    assert not torch.allclose(setup.run(), generate(setup.pipe, setup.cal, [0, 1], seed=5, num_inference_steps=STEPS,
                                                    guidance_scale=GUIDANCE, **other), atol=1e-4)


def test_every_gate_on_and_all_compute_schedule_give_stock_images(setup):
    stock = setup.run()
    sampler = PipelineSampler(setup.pipe, setup.cal, STEPS, GUIDANCE, setup.extra)
    att = attach(setup.unet, setup.blocks, setup.graph.modes)
    try:
        att.state.gates = torch.ones(STEPS, len(setup.graph.names), requires_grad=True)
        att.state.reset()
        att.state.new_generation = True
        gated = sampler([0, 1], [torch.Generator().manual_seed(5 + i) for i in range(2)])
        gated.mean().backward()
        assert att.state.gates.grad is not None and att.state.gates.grad.abs().sum() > 0
    finally:
        att.state.gates = None
        detach(setup.unet)
    torch.testing.assert_close(gated.detach(), stock, atol=2e-5, rtol=0)
    images, ran = setup.probed(setup.schedule([[1] * 5] * STEPS))
    torch.testing.assert_close(images, stock, atol=1e-6, rtol=0)
    assert bool((ran == 1).all())


def test_search_with_the_control_image_and_apply(setup):
    cfg = SearchConfig(ratio=0.5, num_inference_steps=STEPS, guidance_scale=GUIDANCE, iterations=2, batch=1)
    result = Search(setup.pipe, cfg, calibration=setup.cal, call_kwargs=setup.extra).run(progress=False)
    assert setup.pipe.controlnet.controlnet_mid_block.weight.requires_grad  # the search unfroze what it froze
    schedule = dipgo.schedule_at_ratio(result, 0.5)
    assert schedule.macs < schedule.macs_full
    images, ran = setup.probed(schedule)
    torch.testing.assert_close(ran, schedule.mask())
    assert torch.isfinite(images).all()


def test_a_schedule_searched_without_the_controlnet_applies(setup):
    """Same UNet, same scheduler: a text-to-image schedule passes the checks and runs its rows."""
    cfg = SearchConfig(ratio=0.5, num_inference_steps=STEPS, guidance_scale=GUIDANCE, iterations=1, batch=1)
    result = Search(setup.t2i, cfg, calibration=setup.cal, call_kwargs=dict(CALL_KWARGS)).run(progress=False)
    schedule = dipgo.schedule_at_ratio(result, 0.5)
    stock = setup.run()
    images, ran = setup.probed(schedule)
    torch.testing.assert_close(ran, schedule.mask())
    assert not torch.allclose(images, stock, atol=1e-4)
    torch.testing.assert_close(setup.run(), stock, atol=0, rtol=0)  # removed: the stock pipeline again


def test_a_reused_down_block_gets_the_running_calls_controlnet_residuals(setup):
    """up_blocks.1 reads the skip tensors of conv_in and down_blocks.0; where down_blocks.0 is reused, its skip
    is the cached output of the last call that computed it (untouched) plus this call's ControlNet residual."""
    seen = {"down": [], "skips": [], "control": []}
    hooks = [
        setup.unet.down_blocks[0].register_forward_hook(lambda m, a, out: seen["down"].append(out[1][0])),
        setup.unet.up_blocks[1].register_forward_pre_hook(
            lambda m, a, kw: seen["skips"].append(kw["res_hidden_states_tuple"]), with_kwargs=True),
        setup.pipe.controlnet.register_forward_hook(lambda m, a, out: seen["control"].append(out[0])),
    ]
    dipgo.apply(setup.pipe, setup.schedule(ROWS))
    try:
        setup.run()
    finally:
        dipgo.remove(setup.pipe)
        for h in hooks:
            h.remove()
    for call, last_computed in [(1, 0), (3, 2)]:
        cached = seen["down"][call]
        torch.testing.assert_close(cached, seen["down"][last_computed], atol=0, rtol=0)
        residual = seen["control"][call][1]  # the ControlNet's residual for down_blocks.0's first skip
        assert not torch.allclose(residual, seen["control"][last_computed][1], atol=1e-4)
        torch.testing.assert_close(seen["skips"][call][1], cached + residual, atol=1e-6, rtol=0)


def test_the_controlnet_runs_at_every_call(setup):
    """The ControlNet is not gated: it runs once per UNet call, also where the schedule reuses the whole call
    (its residuals are then unread). Its share of the work per call is what a schedule does not save."""
    calls = []
    hook = setup.pipe.controlnet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        _, ran = setup.probed(setup.schedule([[1] * 5, [0] * 5, [1] * 5, [0] * 5]))
    finally:
        hook.remove()
    assert ran.sum(1).tolist() == [5, 0, 5, 0] and len(calls) == STEPS
    control = count_macs(setup.pipe.controlnet, (setup.args[0], setup.args[1]),
                         {"encoder_hidden_states": setup.kwargs["encoder_hidden_states"],
                          "controlnet_cond": torch.zeros(1, 3, 16, 16)}).total
    assert 0 < control < setup.profile.call_macs
