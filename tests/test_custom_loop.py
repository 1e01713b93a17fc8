"""Pruning a research model with its own sampling loop (examples/research_unet.py), and the bad inputs
of the custom-loop and calibration paths."""

from __future__ import annotations

import pytest
import torch
from helpers import research_example

import dipgo
from dipgo.cli import main
from dipgo.models.calibration import parse_class_labels, read_prompts
from dipgo.models.costs import ExecutionProbe
from dipgo.models.similarity import psnr

BLOCKS = ["down.0", "down.1", "mid", "up.0", "up.1"]
STEPS = 6


@pytest.fixture(scope="module")
def ex():
    return research_example()


@pytest.fixture()
def model(ex):
    torch.manual_seed(0)
    net = ex.TinyUNet(in_channels=1, image_size=16, base_channels=8, channel_mult=(1, 2), norm_groups=4).eval()
    return net.requires_grad_(False)


def test_prune_a_custom_loop_then_apply_it_to_the_same_loop(ex, model, tmp_path):
    def sample_fn(gens):
        return ex.ddim_sample(model, gens, steps=STEPS, shape=(1, 16, 16))

    schedule = dipgo.prune(sample_fn, denoiser=model, blocks=BLOCKS, ratio=0.4, num_inference_steps=STEPS,
                           iterations=3, batch=2, progress=False, checkpoint=tmp_path / "s.pt",
                           evaluations=8, held_out=1, references=0)
    assert schedule.blocks == BLOCKS and schedule.num_calls == STEPS and schedule.scheduler == "custom"
    assert schedule.macs < schedule.macs_full
    path = schedule.save(tmp_path / "custom.json")
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    with torch.no_grad():
        full = sample_fn([torch.Generator().manual_seed(i) for i in range(2)])
        x = torch.randn(1, 1, 16, 16)
        probe = ExecutionProbe(model, {b: model.get_submodule(b) for b in BLOCKS}, (x, torch.tensor([10])), {})
        dipgo.apply(model, path)
        try:
            pruned = sample_fn(gens)
            assert "reused from cache" in dipgo.summary(model)
        finally:
            dipgo.remove(model)
        ran = probe.mask()
        probe.remove()
    torch.testing.assert_close(ran, schedule.mask())  # skipped stages did no work in the user's own loop
    assert not torch.equal(pruned, full) and float(psnr(pruned, full).mean()) > 10


def test_custom_loop_bad_inputs(ex, model):
    def never(gens):
        return torch.zeros(len(gens), 1, 16, 16)

    with pytest.raises(dipgo.DipgoError, match="never called the denoiser"):
        dipgo.prune(never, denoiser=model, blocks=BLOCKS, num_inference_steps=STEPS, iterations=1, progress=False)

    def too_many(gens):
        return ex.ddim_sample(model, gens, steps=STEPS + 2, shape=(1, 16, 16))

    with pytest.raises(dipgo.DipgoError, match=f"called the denoiser {STEPS + 2} times.*implies {STEPS}"):
        dipgo.prune(too_many, denoiser=model, blocks=BLOCKS, num_inference_steps=STEPS, iterations=1,
                    progress=False)
    with pytest.raises(dipgo.DipgoError, match="unknown block name"):
        dipgo.prune(too_many, denoiser=model, blocks=["down.0", "middle"], num_inference_steps=STEPS, iterations=1,
                    progress=False)
    with pytest.raises(dipgo.DipgoError, match="denoiser=module"):
        dipgo.prune(lambda gens: None, blocks=BLOCKS, progress=False)
    with pytest.raises(dipgo.DipgoError, match="bare module"):
        dipgo.prune(model, blocks=BLOCKS, progress=False)
    with pytest.raises(dipgo.DipgoError, match="no block adapter for TinyUNet.*blocks="):
        dipgo.prune(too_many, denoiser=model, num_inference_steps=STEPS, iterations=1, progress=False)


def test_prompt_files_and_label_lists(tmp_path):
    with pytest.raises(dipgo.DipgoError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n# only a comment\n")
    with pytest.raises(dipgo.DipgoError, match="is empty"):
        read_prompts(empty)
    good = tmp_path / "p.txt"
    good.write_text("a cat\n\n# skip\n  a dog  \n")
    assert read_prompts(good) == ["a cat", "a dog"]
    assert parse_class_labels("1,5,207") == [1, 5, 207] and parse_class_labels("0-3") == [0, 1, 2, 3]
    with pytest.raises(dipgo.DipgoError, match="integers"):
        parse_class_labels("one,two")


@pytest.mark.parametrize("argv,needle", [
    (["prune", "mnist-sd", "--prompts", "/nonexistent/prompts.txt"], "does not exist"),
    (["prune", "mnist-dit", "--class-labels", "3,1000"], "out of range: this model has classes 0..999"),
    (["prune", "mnist-dit", "--prompts", "EMPTY"], "give class labels, not prompts"),
])
def test_cli_calibration_errors(argv, needle, capsys, tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("a prompt\n")
    argv = [str(empty) if a == "EMPTY" else a for a in argv]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_schedule_records_its_calibration(sd_pipe, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a handwritten digit 3\na handwritten digit 8\n")
    out = tmp_path / "s.json"
    assert main(["prune", "mnist-sd", "--ratio", "0.5", "--steps", "3", "--iterations", "1", "--batch", "1",
                 "--effort", "quick", "--evaluations", "8", "--held-out", "1", "--prompts", str(prompts),
                 "--out", str(out)]) == 0
    assert "calibrating on 2 prompts" in capsys.readouterr().out
    cal = dipgo.Schedule.load(out).meta["calibration"]
    assert cal["kind"] == "prompt" and cal["count"] == 2 and len(cal["sha256"]) == 16


# ------------------------------------------------------------------ where a generation starts, either way time runs
TINY_BLOCKS = ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]


class TinyDenoiser(torch.nn.Module):
    """Four conv stages whose input depends on the time, so a reused stage changes the result."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 1, 3, padding=1)
        self.time = torch.nn.Linear(1, 4)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Tanh()) for _ in range(4))

    def forward(self, x, t):
        h = self.inp(x) + self.time(t.reshape(-1, 1).float())[:, :, None, None]
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def tiny_loop(model, gens, rising: bool, steps: int = STEPS):
    """A flow-matching-like loop: time rises from 0 to 1 (``rising``) or falls from 1 to 0."""
    x = torch.cat([torch.randn(1, 1, 16, 16, generator=g) for g in gens])
    times = torch.linspace(0, 1, steps + 1)[:-1] if rising else torch.linspace(1, 0, steps + 1)[1:]
    for t in times:
        x = x + model(x, t.expand(len(x))) / steps
    return x.sigmoid()


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return TinyDenoiser().eval().requires_grad_(False)


def tiny_schedule(model, steps=None):
    from dipgo.cache.schedule import Schedule, config_hash

    steps = steps or [TINY_BLOCKS, TINY_BLOCKS[:2], TINY_BLOCKS, ["blocks.0"], TINY_BLOCKS, TINY_BLOCKS[1:]]
    return Schedule("TinyDenoiser", config_hash(model), TINY_BLOCKS, len(steps), "custom", steps)


def emulated(model, schedule, gens, rising):
    """The schedule's reuse done by hand: a skipped block's output is replaced by its last computed one."""
    call, last = {"i": -1}, {}

    def replace(name):
        def hook(module, args, out):
            if schedule.computes(call["i"], name):
                last[name] = out
                return out
            return last[name]
        return hook

    handles = [model.get_submodule(n).register_forward_hook(replace(n)) for n in TINY_BLOCKS]
    handles.append(model.register_forward_pre_hook(lambda m, a: call.update(i=call["i"] + 1)))
    try:
        return tiny_loop(model, gens, rising)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("rising", [True, False], ids=["time-rises", "time-falls"])
def test_a_schedule_on_a_bare_module_wraps_after_its_last_call(tiny, rising):
    """Each loop is one generation whichever way its time runs: both reuse, both equal the hand emulation."""
    from dipgo.cache.hooks import attachment_of

    schedule = tiny_schedule(tiny)
    reused_per_run = sum(len(TINY_BLOCKS) - len(s) for s in schedule.steps)
    with torch.no_grad():
        expected = emulated(tiny, schedule, [torch.Generator().manual_seed(3)], rising)
        dipgo.apply(tiny, schedule)
        try:
            first = tiny_loop(tiny, [torch.Generator().manual_seed(3)], rising)
            second = tiny_loop(tiny, [torch.Generator().manual_seed(3)], rising)
            state = attachment_of(tiny).state
            assert (state.reused, state.computed) == (2 * reused_per_run, 2 * (24 - reused_per_run))
        finally:
            dipgo.remove(tiny)
        full = tiny_loop(tiny, [torch.Generator().manual_seed(3)], rising)
    torch.testing.assert_close(first, expected, atol=0, rtol=0)
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    assert not torch.equal(first, full)


def test_generation_context_for_loops_that_stop_early(tiny):
    from dipgo.cache.apply import generation
    from dipgo.cache.schedule import ScheduleError

    schedule = tiny_schedule(tiny)
    with torch.no_grad():
        expected = emulated(tiny, schedule, [torch.Generator().manual_seed(5)], True)
        dipgo.apply(tiny, schedule)
        try:
            with generation(tiny):
                tiny_loop(tiny, [torch.Generator().manual_seed(9)], True, steps=3)  # stopped halfway
            with generation(tiny) as state:
                again = tiny_loop(tiny, [torch.Generator().manual_seed(5)], True)
                assert state.call == STEPS - 1
                with pytest.raises(dipgo.DipgoError, match="do not nest"):
                    with generation(tiny):
                        pass
            with pytest.raises(ScheduleError, match="inside one dipgo.generation"):
                with generation(tiny):
                    tiny_loop(tiny, [torch.Generator().manual_seed(5)], True, steps=STEPS + 1)
            after = tiny_loop(tiny, [torch.Generator().manual_seed(5)], True)  # the block's end starts afresh
        finally:
            dipgo.remove(tiny)
    torch.testing.assert_close(again, expected, atol=0, rtol=0)
    torch.testing.assert_close(after, expected, atol=0, rtol=0)
    with pytest.raises(dipgo.DipgoError, match="not applied"):
        with generation(tiny):
            pass


class _Scheduler:
    def set_timesteps(self, num_inference_steps=None, device=None):
        self.num_inference_steps = num_inference_steps


def test_with_a_scheduler_set_timesteps_starts_each_generation(tiny):
    """A pipeline's scheduler marks generations: more calls than the schedule before the next
    ``set_timesteps`` raise, and so does another step count; removal restores the scheduler."""
    from dipgo.cache.hooks import apply_schedule
    from dipgo.cache.runtime import detach
    from dipgo.cache.schedule import ScheduleError
    from dipgo.models.adapters import resolve_blocks

    schedule, scheduler = tiny_schedule(tiny), _Scheduler()
    apply_schedule(tiny, resolve_blocks(tiny, TINY_BLOCKS), {}, schedule, scheduler=scheduler)
    x, t = torch.randn(1, 1, 16, 16), torch.zeros(1)
    try:
        with torch.no_grad():
            for _ in range(2):
                scheduler.set_timesteps(STEPS)
                for _ in range(STEPS):
                    tiny(x, t)
            with pytest.raises(ScheduleError, match=f"called {STEPS + 1} times.*more steps"):
                tiny(x, t)
            with pytest.raises(ScheduleError, match=f"num_inference_steps={STEPS}.*asks for 8"):
                scheduler.set_timesteps(8)
    finally:
        detach(tiny)
    assert "set_timesteps" not in vars(scheduler) and scheduler.set_timesteps.__self__ is scheduler


def test_a_policy_on_a_bare_module_uses_the_generation_context(tiny):
    from dipgo.cache.apply import generation
    from dipgo.cache.runtime import Policy, attach, detach
    from dipgo.models.adapters import resolve_blocks

    class OddCallsReuse(Policy):
        resets = 0

        def computes(self, call, block):
            return call % 2 == 0 or block == "blocks.0"

        def reset(self):
            self.resets += 1

    policy = OddCallsReuse()
    att = attach(tiny, resolve_blocks(tiny, TINY_BLOCKS), {}, policy=policy)
    try:
        with torch.no_grad():
            runs = []
            for _ in range(2):
                with generation(tiny):
                    runs.append(tiny_loop(tiny, [torch.Generator().manual_seed(2)], True))
    finally:
        detach(tiny)
    assert att.state.reused == 2 * 3 * 3 and policy.resets >= 2
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    with pytest.raises(dipgo.DipgoError, match="not a policy"):
        attach(tiny, resolve_blocks(tiny, TINY_BLOCKS), {}, policy=object())
    assert getattr(tiny, "_dipgo_attachment", None) is None


@pytest.mark.parametrize("rising", [True, False], ids=["time-rises", "time-falls"])
def test_search_counts_each_sampling_run_as_one_generation(tiny, rising):
    """The search marks every sampling run as a generation itself: a loop whose time rises is searchable."""
    from dipgo.cache.driver import FunctionSampler
    from dipgo.cache.search import Search, SearchConfig

    sampler = FunctionSampler(lambda gens: tiny_loop(tiny, gens, rising), tiny, STEPS)
    config = SearchConfig(ratio=0.5, num_inference_steps=STEPS, iterations=2, batch=2, loss="l2",
                          grad_checkpointing=rising)
    result = Search(sampler, config, blocks=TINY_BLOCKS).run(progress=False)
    assert len(result.history) == 2 and result.scores.shape == (STEPS, len(TINY_BLOCKS))
    assert getattr(tiny, "_dipgo_attachment", None) is None


def test_prune_a_loop_whose_time_rises(tiny):
    def sample_fn(gens):
        return tiny_loop(tiny, gens, rising=True)

    schedule = dipgo.prune(sample_fn, denoiser=tiny, blocks=TINY_BLOCKS, ratio=0.5, num_inference_steps=STEPS,
                           iterations=2, progress=False, evaluations=8, held_out=1, references=0)
    assert schedule.num_calls == STEPS and schedule.blocks == TINY_BLOCKS
