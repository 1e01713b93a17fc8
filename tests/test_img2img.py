"""Image-to-image and inpainting run the last ``strength * T`` of T steps; a schedule made for T steps on the
text-to-image pipeline with the same UNet applies by timestep: a generation entering at step k follows the
schedule's rows from call k on (its first call computes every block: nothing is cached yet)."""

import pytest
import torch
from diffusers import EulerDiscreteScheduler, PNDMScheduler
from families import tiny_sd
from families_control import CALL_KWARGS, init_image, mask_image, tiny_img2img, tiny_inpaint
from helpers import make_schedule

import dipgo
from dipgo.cache.schedule import ScheduleError
from dipgo.cache.search import Search, SearchConfig
from dipgo.errors import DipgoError
from dipgo.models.adapters import block_graph, effective_keep, resolve_blocks
from dipgo.models.costs import ExecutionProbe, profile_denoiser
from dipgo.models.pipelines import capture_denoiser_call, default_calibration, generate

STEPS = 4
GUIDANCE = 2.0
# rows over (down_blocks.0, down_blocks.1, mid_block, up_blocks.0, up_blocks.1); every row differs from the
# previous, so numbering a part-way generation from call 0 instead of its entry shows in the probe
ROWS = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]
PLMS_ROWS = [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]


class Setup:
    """The text-to-image pipeline, image-to-image and inpainting on its components, and a schedule maker."""

    def __init__(self, scheduler=None, **scheduler_kw):
        self.t2i = tiny_sd()
        if scheduler is not None:
            self.t2i.scheduler = scheduler.from_config(self.t2i.scheduler.config, **scheduler_kw)
        self.img2img, self.inpaint = tiny_img2img(self.t2i), tiny_inpaint(self.t2i)
        self.cal = default_calibration(self.t2i, ["a red cube", "a boat"])
        self.unet = self.t2i.unet
        self.graph = block_graph(self.unet)
        self.blocks = resolve_blocks(self.unet, self.graph.names)
        self.args, self.kwargs = capture_denoiser_call(self.t2i, self.cal, **CALL_KWARGS)
        self.profile = profile_denoiser(self.unet, self.blocks, self.args, self.kwargs)

    def schedule(self, rows, steps: int = STEPS) -> dipgo.Schedule:
        mask = effective_keep(torch.tensor(rows, dtype=torch.float32), self.graph)
        return make_schedule(self.unet, type(self.t2i.scheduler).__name__, steps, self.graph, self.profile, mask)

    def extra(self, pipe, strength: float) -> dict:
        kw = dict(CALL_KWARGS, image=init_image(), strength=strength)
        return kw | {"mask_image": mask_image()} if pipe is self.inpaint else kw

    def run(self, pipe, strength: float = 0.5, steps: int = STEPS, **kw) -> torch.Tensor:
        extra = self.extra(pipe, strength) if pipe is not self.t2i else dict(CALL_KWARGS)
        return generate(pipe, self.cal, [1], seed=3, num_inference_steps=steps, guidance_scale=GUIDANCE,
                        **extra, **kw)

    def probed(self, pipe, schedule, strength: float) -> torch.Tensor:
        """The blocks that really ran in each UNet call of one generation under ``schedule``."""
        probe = ExecutionProbe(self.unet, self.blocks, self.args, self.kwargs)
        try:
            dipgo.apply(pipe, schedule)
            try:
                self.run(pipe, strength, steps=schedule.num_inference_steps)
            finally:
                dipgo.remove(pipe)
            return probe.mask()
        finally:
            probe.remove()


@pytest.fixture(scope="module")
def setup():
    return Setup()


def expected_rows(schedule: dipgo.Schedule, entry: int) -> torch.Tensor:
    """The schedule's rows from ``entry`` on, the first computing everything (nothing cached yet)."""
    rows = schedule.mask()[entry:].clone()
    rows[0] = 1.0
    return rows


@pytest.mark.parametrize("kind", ["img2img", "inpaint"])
def test_all_compute_schedule_gives_stock_images(setup, kind):
    pipe = getattr(setup, kind)
    stock = setup.run(pipe, 0.75)
    dipgo.apply(pipe, setup.schedule([[1] * 5] * STEPS))
    try:
        ours = setup.run(pipe, 0.75)
    finally:
        dipgo.remove(pipe)
    torch.testing.assert_close(ours, stock, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind,strength,entry", [("img2img", 0.25, 3), ("img2img", 0.5, 2), ("img2img", 0.75, 1),
                                                  ("inpaint", 0.5, 2)])
def test_part_way_generation_follows_rows_from_its_entry(setup, kind, strength, entry):
    schedule = setup.schedule(ROWS)
    ran = setup.probed(getattr(setup, kind), schedule, strength)
    torch.testing.assert_close(ran, expected_rows(schedule, entry))


def test_strength_one_uses_the_rows_as_text_to_image_does(setup):
    schedule = setup.schedule(ROWS)
    t2i = setup.probed(setup.t2i, schedule, 1.0)
    torch.testing.assert_close(setup.probed(setup.img2img, schedule, 1.0), t2i)
    torch.testing.assert_close(t2i, schedule.mask())


def test_apply_then_remove_restores_stock_images(setup):
    stock = setup.run(setup.img2img, 0.75)
    schedule = setup.schedule(ROWS)
    assert dipgo.apply(setup.img2img, schedule) is schedule  # the checks pass on the shared UNet and scheduler
    try:
        pruned = setup.run(setup.img2img, 0.75)
    finally:
        dipgo.remove(setup.img2img)
    assert not torch.allclose(pruned, stock, atol=1e-4)  # the schedule really reuses
    torch.testing.assert_close(setup.run(setup.img2img, 0.75), stock, atol=0, rtol=0)


def test_plms_entry_at_its_repeated_timestep():
    """PLMS runs its second timestep twice: entering at step 1 or 2 starts at the same timestep, and the
    second call's timestep tells which."""
    s = Setup(PNDMScheduler, skip_prk_steps=True)
    schedule = s.schedule(PLMS_ROWS)
    assert schedule.num_calls == STEPS + 1
    for strength, entry in [(0.75, 1), (0.5, 2), (0.25, 3)]:
        torch.testing.assert_close(s.probed(s.img2img, schedule, strength), expected_rows(schedule, entry))


def test_step_counts_that_cannot_be_mapped_name_both(setup):
    schedule = setup.schedule(ROWS)
    dipgo.apply(setup.img2img, schedule)
    try:
        with pytest.raises(ScheduleError, match=r"num_inference_steps=4, but the pipeline asks for 8.*strength"):
            setup.run(setup.img2img, 0.5, steps=8)
    finally:
        dipgo.remove(setup.img2img)
    euler = Setup(EulerDiscreteScheduler)  # takes custom timesteps, which bypass the step-count check
    dipgo.apply(euler.img2img, euler.schedule(ROWS))
    try:
        with pytest.raises(ScheduleError, match=r"step 4 of the scheduler's 8 timesteps.*4 denoiser calls for "
                                                r"num_inference_steps=4"):
            euler.run(euler.img2img, 0.5, timesteps=[900, 800, 700, 600, 500, 400, 300, 200])
    finally:
        dipgo.remove(euler.img2img)


def test_search_on_img2img_needs_whole_generations(setup):
    cfg = SearchConfig(ratio=0.5, num_inference_steps=STEPS, guidance_scale=GUIDANCE, iterations=2, batch=1)
    with pytest.raises(DipgoError, match=r"part-way.*step 2 of 4.*strength=1\.0"):
        Search(setup.img2img, cfg, calibration=setup.cal, call_kwargs=setup.extra(setup.img2img, 0.5))
    result = Search(setup.img2img, cfg, calibration=setup.cal,
                    call_kwargs=setup.extra(setup.img2img, 1.0)).run(progress=False)
    schedule = dipgo.schedule_at_ratio(result, 0.5)
    assert schedule.num_calls == STEPS and schedule.macs < schedule.macs_full
    torch.testing.assert_close(setup.probed(setup.img2img, schedule, 0.5), expected_rows(schedule, 2))
