"""The runtime: schedules applied to real pipelines, exactness, state reset, errors."""

import pytest
import torch
from helpers import digits, generate_digits, make_schedule

import dipgo
from dipgo.cache.driver import PipelineSampler
from dipgo.cache.schedule import ScheduleError
from dipgo.cache.search import uniform_mask
from dipgo.errors import DipgoError
from dipgo.models.adapters import block_graph, resolve_blocks
from dipgo.models.costs import profile_denoiser
from dipgo.models.pipelines import capture_denoiser_call, num_calls, set_scheduler

STEPS = 8


def schedule_for(pipe, mask):
    den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    g = block_graph(den)
    prof = profile_denoiser(den, resolve_blocks(den, g.names), *capture_denoiser_call(pipe))
    return make_schedule(den, type(pipe.scheduler).__name__, STEPS, g, prof, mask)


def run(pipe, labels=(3, 7), seed=1, steps=STEPS):
    return generate_digits(pipe, labels, seed=seed, num_inference_steps=steps, guidance_scale=3.0)


@pytest.mark.parametrize("fixture", ["sd_pipe", "dit_pipe"])
def test_sampler_reproduces_the_pipeline(fixture, request):
    """The search's sampler runs the pipeline's own __call__ and stops at the decoded images: the same images."""
    pipe = request.getfixturevalue(fixture)
    ref = run(pipe)
    with torch.no_grad():
        mine = PipelineSampler(pipe, digits(pipe), STEPS, 3.0)([3, 7], [torch.Generator().manual_seed(1 + i)
                                                                         for i in range(2)])
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture", ["sd_pipe", "dit_pipe"])
def test_full_schedule_is_exact_and_remove_restores(fixture, request):
    pipe = request.getfixturevalue(fixture)
    ref = run(pipe)
    n_blocks = len(block_graph(pipe.unet if fixture == "sd_pipe" else pipe.transformer).names)
    schedule = schedule_for(pipe, torch.ones(STEPS, n_blocks))
    dipgo.apply(pipe, schedule)
    try:
        torch.testing.assert_close(run(pipe), ref, atol=1e-6, rtol=0)
        with pytest.raises(DipgoError, match="already applied"):
            dipgo.apply(pipe, schedule)
    finally:
        dipgo.remove(pipe)
    assert not dipgo.is_applied(pipe)
    torch.testing.assert_close(run(pipe), ref, atol=0, rtol=0)
    with pytest.raises(DipgoError, match="not applied"):
        dipgo.remove(pipe)


def test_reusing_whole_calls_equals_a_merged_ddim_update(sd_pipe):
    """METHOD.md's DDIM fact: reusing every block of a call reuses the noise prediction, and two DDIM
    updates with one prediction equal one update over both intervals. Checked against a hand DDIM."""
    mask = torch.zeros(STEPS, 9)
    kept_calls = [0, 3, 5]
    mask[kept_calls] = 1
    schedule = schedule_for(sd_pipe, mask)
    assert schedule.macs < schedule.macs_full * 0.4
    dipgo.apply(sd_pipe, schedule)
    try:
        pruned = run(sd_pipe, labels=(4,))
        assert "27 block calls computed, 45 reused" in dipgo.summary(sd_pipe)
    finally:
        dipgo.remove(sd_pipe)

    sched = type(sd_pipe.scheduler).from_config(sd_pipe.scheduler.config)
    sched.set_timesteps(STEPS)
    ts = sched.timesteps.tolist()
    ac = sched.alphas_cumprod
    pos, neg = sd_pipe.encode_prompt(["a handwritten digit 4"], torch.device("cpu"), 1, True)
    cond = torch.cat([neg, pos])
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for k, i in enumerate(kept_calls):
            t = ts[i]
            eps = sd_pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample
            u, c = eps.chunk(2)
            eps = u + 3.0 * (c - u)
            nxt = kept_calls[k + 1] if k + 1 < len(kept_calls) else STEPS
            t_end = ts[nxt - 1] - sched.config.num_train_timesteps // STEPS  # prev timestep of the last merged call
            a, a_end = ac[t], (ac[t_end] if t_end >= 0 else sched.final_alpha_cumprod)
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x = a_end.sqrt() * x0 + (1 - a_end).sqrt() * eps
        img = sd_pipe.vae.decode(x / sd_pipe.vae.config.scaling_factor).sample
    torch.testing.assert_close(pruned, (img / 2 + 0.5).clamp(0, 1), atol=1e-4, rtol=0)


def test_state_resets_between_generations_and_summary(dit_pipe):
    mask = uniform_mask(STEPS, 8, 0.5).clone()
    mask[2, :4] = 1
    dipgo.apply(dit_pipe, schedule_for(dit_pipe, mask))
    try:
        a = run(dit_pipe)
        b = run(dit_pipe)   # a second generation must not see the first one's caches
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        text = dipgo.summary(dit_pipe)
        assert "transformer_blocks.0" in text and "reused from cache" in text
        with pytest.raises(ScheduleError, match="num_inference_steps=8"):
            run(dit_pipe, steps=12)
    finally:
        dipgo.remove(dit_pipe)


@pytest.mark.parametrize("name,calls", [("pndm", STEPS + 1), ("dpm++", STEPS), ("euler", STEPS)])
def test_other_schedulers(sd_pipe, name, calls):
    original = sd_pipe.scheduler
    try:
        set_scheduler(sd_pipe, name)
        assert num_calls(sd_pipe, STEPS) == calls
        full = run(sd_pipe)
        mask = torch.ones(calls, 9)
        mask[2::2] = 0
        dipgo.apply(sd_pipe, schedule_for(sd_pipe, mask))
        try:
            pruned = run(sd_pipe)
        finally:
            dipgo.remove(sd_pipe)
        assert pruned.shape == full.shape and torch.isfinite(pruned).all()
        assert 0 < (pruned - full).abs().mean() < 0.2
        wrong = schedule_for(sd_pipe, mask)
        wrong.scheduler = "OtherScheduler"
        with pytest.raises(ScheduleError, match="scheduler: schedule is for OtherScheduler"):
            dipgo.apply(sd_pipe, wrong)
    finally:
        sd_pipe.scheduler = original


def test_custom_module_with_named_blocks():
    from dipgo.cache.runtime import attach, detach

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Linear(4, 4))

        def forward(self, x, timestep):
            return self.b(self.a(x))

    net = Net()
    blocks = resolve_blocks(net, ["a", "b"])
    calls = []
    net.b[0].register_forward_hook(lambda m, i, o: calls.append(1))  # runs only when b computes
    from dipgo.cache.schedule import Schedule, config_hash
    sched = Schedule("Net", config_hash(net), ["a", "b"], 3, "X", [["a", "b"], ["a"], ["a", "b"]])
    attach(net, blocks, {}, sched)
    x = torch.randn(2, 4)
    with torch.no_grad():
        out0 = net(x, 900)
        out1 = net(x * 0, 800)       # b reused: same output as call 0 although the input changed
        net(x, 700)
    detach(net)
    assert len(calls) == 2
    torch.testing.assert_close(out0, out1)


def test_fine_granularity_gates_inner_layers(sd_pipe):
    den = sd_pipe.unet
    g = block_graph(den, "fine")
    assert len(g.names) == 30 and "down_blocks.0.attentions.0" in g.names
    assert g.consumers["down_blocks.0.attentions.0"] == ["down_blocks.0.downsamplers.0", "up_blocks.3.resnets.0"]
    prof = profile_denoiser(den, resolve_blocks(den, g.names), *capture_denoiser_call(sd_pipe))
    assert all(m > 0 for m in prof.block_macs)
    ref = run(sd_pipe)
    full = make_schedule(den, "DDIMScheduler", STEPS, g, prof, torch.ones(STEPS, 30))
    dipgo.apply(sd_pipe, full)
    try:
        torch.testing.assert_close(run(sd_pipe), ref, atol=1e-6, rtol=0)
    finally:
        dipgo.remove(sd_pipe)
    mask = torch.ones(STEPS, 30)
    mask[1::2, g.names.index("up_blocks.2.attentions.1")] = 0   # a DeepCache-like shallow branch on odd calls
    from dipgo.models.adapters import effective_keep
    mask = effective_keep(mask, g)
    assert mask[1, g.names.index("mid_block.attentions.0")] == 0 and mask[1, g.names.index("up_blocks.3.resnets.0")]
    sched = make_schedule(den, "DDIMScheduler", STEPS, g, prof, mask)
    dipgo.apply(sd_pipe, sched)
    try:
        pruned = run(sd_pipe)
    finally:
        dipgo.remove(sd_pipe)
    assert sched.macs < 0.75 * sched.macs_full
    assert 0 < (pruned - ref).abs().mean() < 0.1


def test_two_branches_keep_cond_and_uncond_caches_apart(sd_pipe):
    """A loop that calls the denoiser separately for cond and uncond (``branches=2``) must give
    exactly what two separate runs, one per branch, give: the two caches never mix."""
    from dataclasses import replace

    unet = sd_pipe.unet
    args, kwargs = capture_denoiser_call(sd_pipe)
    g = block_graph(unet)
    prof = profile_denoiser(unet, resolve_blocks(unet, g.names), args, kwargs)
    per_step = torch.ones(4, len(g.names))
    per_step[1:, [g.names.index("mid_block"), g.names.index("up_blocks.0"), g.names.index("down_blocks.3")]] = 0
    single = make_schedule(unet, "DDIMScheduler", 4, g, prof, per_step, cfg=1)
    double = replace(single, steps=[s for s in single.steps for _ in range(2)], branches=2)
    gen = torch.Generator().manual_seed(0)
    xs = {b: [torch.randn(args[0].shape, generator=gen) for _ in range(4)] for b in ("c", "u")}
    emb = {"c": kwargs["encoder_hidden_states"], "u": torch.randn(kwargs["encoder_hidden_states"].shape, generator=gen)}
    ts = [900, 600, 300, 100]

    def call(branch, i):
        return unet(xs[branch][i], ts[i], encoder_hidden_states=emb[branch]).sample

    with torch.no_grad():
        dipgo.apply(unet, double)
        try:
            inter = {"c": [], "u": []}
            for i in range(4):
                for b in ("c", "u"):
                    inter[b].append(call(b, i))
        finally:
            dipgo.remove(unet)
        for b in ("c", "u"):
            dipgo.apply(unet, single)
            try:
                alone = [call(b, i) for i in range(4)]
            finally:
                dipgo.remove(unet)
            for x, y in zip(inter[b], alone, strict=True):
                torch.testing.assert_close(x, y, atol=1e-6, rtol=0)
        full = [call("u", i) for i in range(4)]
    assert (full[3] - inter["u"][3]).abs().max() > 1e-4  # blocks really were reused


@pytest.mark.parametrize("fixture", ["sd_pipe", "dit_pipe"])
def test_values_never_read_are_not_cached(fixture, request, monkeypatch):
    """A block whose next call computes it again caches nothing (no residual to subtract, no memory held),
    and the images are exactly those of a run that caches every computed value."""
    from dipgo.cache.hooks import ScheduleHook

    pipe = request.getfixturevalue(fixture)
    n_blocks = len(block_graph(pipe.unet if fixture == "sd_pipe" else pipe.transformer).names)
    mask = (torch.rand(STEPS, n_blocks, generator=torch.Generator().manual_seed(4)) < 0.5).float()
    mask[0], mask[:, 0] = 1, 1  # the first call computes everything; the first block always: never read
    stored = []
    real_residual = ScheduleHook._residual
    monkeypatch.setattr(ScheduleHook, "_residual", lambda self, out, inp: stored.append(self.name) or
                        real_residual(self, out, inp))
    dipgo.apply(pipe, schedule_for(pipe, mask))
    try:
        lean, lean_stored = run(pipe), list(stored)
        stored.clear()
        monkeypatch.setattr(ScheduleHook, "_read_later", lambda self, call: True)
        every = run(pipe)
    finally:
        dipgo.remove(pipe)
    torch.testing.assert_close(lean, every, atol=0, rtol=0)
    if fixture == "dit_pipe":  # residual blocks subtract only what a later call reads
        first = block_graph(pipe.transformer).names[0]
        assert first not in lean_stored and first in stored
        assert len(lean_stored) < len(stored)
