"""The pruning pipeline every entry point runs: search, held-out selection, refinement, comparison."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from families import tiny_dit

import dipgo
from dipgo.cache.heldout import HELD_OUT_SEED, held_out_images, held_out_psnr
from dipgo.cache.pipeline import EFFORTS, MIN_EVALUATIONS, PruneConfig, make_sampler, prune_schedules
from dipgo.errors import DipgoError
from dipgo.models.pipelines import default_calibration

SMALL = dict(iterations=2, evaluations=MIN_EVALUATIONS + 4, held_out=2)


@functools.cache
def _dit_outcome():
    pipe = tiny_dit()
    config = PruneConfig(ratio=0.5, num_inference_steps=6, effort="quick", **SMALL)
    return pipe, config, prune_schedules(pipe, config, calibration=default_calibration(pipe), progress=False)[0]


def test_pipeline_records_every_candidate_and_keeps_the_best_on_held_out_images():
    pipe, config, out = _dit_outcome()
    rec = out.schedule.meta["pipeline"]
    assert "search" in rec["candidates"]
    assert any(k.startswith("uniform ") for k in rec["candidates"])
    assert any(k.startswith("every ") for k in rec["candidates"])
    # a transformer's simple starts are measured in its module units too, at every order
    fine = [k for k in rec["candidates"] if "(fine units)" in k]
    assert fine and any(k.endswith("(fine units)") for k in fine) and any(k.endswith("order 2") for k in fine)
    assert rec["winner"] == max(out.candidates, key=out.candidates.get)
    assert out.psnr >= max(out.candidates.values()) - 1e-9  # refinement only accepts improvements
    assert rec["held_out"] == {"n": 2, "seed": HELD_OUT_SEED}
    assert set(rec["seconds"]) == {"search", "select_refine", "compare"}
    # within the budget: at most the post-processing's window below the requested ratio
    assert out.schedule.achieved_ratio >= 0.5 - 0.0125 - 1e-6
    # The recorded figure is what the schedule really gives on those held-out generations.
    sampler = make_sampler(pipe, config, calibration=default_calibration(pipe))
    full = held_out_images(sampler, 2)
    assert abs(held_out_psnr(sampler, out.schedule, full) - out.psnr) < 1e-3


def test_pipeline_compares_with_fewer_steps_at_the_same_macs():
    pipe, _, out = _dit_outcome()
    c = out.comparison
    assert c.label.endswith(" steps")
    k = int(c.label.split()[0])
    assert 1 <= k < 6
    mine = out.schedule.macs_full / out.schedule.macs
    # the step count whose MACs are closest to the schedule's (whole calls: k/6 of the full cost)
    assert abs(c.speedup - 6 / k) < 1e-9
    assert all(abs(math.log(mine * k / 6)) <= abs(math.log(mine * j / 6)) + 1e-9 for j in range(1, 6))
    line = out.line()
    assert line.startswith(f"dipgo {mine:.2f}x: ") and f"| {c.label} ({c.speedup:.2f}x): " in line
    assert out.schedule.meta["pipeline"]["compared"]["label"] == c.label


def _loop_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 16))

    class Denoiser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = net

        def forward(self, x, t):
            return torch.tanh(self.blocks(x)) * (1 + t)

    return Denoiser()


def _loop(model, steps: int = 6, rising: bool = False, seeded: bool = True):
    def sample_fn(generators):
        x = torch.cat([torch.randn(1, 16, generator=g if seeded else None) for g in generators])
        times = torch.linspace(0, 1, steps) if rising else torch.linspace(1, 0, steps)
        for t in times:
            x = x - 0.1 * model(x, t)
        return (x.view(-1, 1, 4, 4) / 4 + 0.5).clamp(0, 1)

    return sample_fn


@pytest.mark.parametrize("rising", [False, True])
def test_custom_loop_runs_the_whole_pipeline(rising):
    model = _loop_model()
    schedule = dipgo.prune(_loop(model, rising=rising), denoiser=model, blocks=["blocks.0", "blocks.1", "blocks.2"],
                           ratio=0.5, num_inference_steps=6, effort="quick", progress=False, **SMALL)
    rec = schedule.meta["pipeline"]
    assert rec["compared"]["label"].startswith("evenly spread full calls")
    assert rec["winner"] in rec["candidates"]


def test_a_sample_fn_that_ignores_its_generators_is_refused_before_searching():
    model = _loop_model()
    with pytest.raises(DipgoError, match="different images for the same generators"):
        dipgo.prune(_loop(model, seeded=False), denoiser=model, blocks=["blocks.0", "blocks.1"], ratio=0.5,
                    num_inference_steps=6, progress=False, **SMALL)


def test_config_errors_name_the_problem():
    with pytest.raises(DipgoError, match=f"at least {MIN_EVALUATIONS}"):
        PruneConfig(evaluations=MIN_EVALUATIONS - 1)
    with pytest.raises(DipgoError, match="unknown effort"):
        PruneConfig(effort="fast")
    with pytest.raises(DipgoError, match="ratio must be in"):
        PruneConfig(ratio=1.5)
    with pytest.raises(DipgoError, match="ratio must be in"):
        PruneConfig(ratio="0.5")
    with pytest.raises(DipgoError, match="unknown search setting"):
        PruneConfig(search={"lrr": 0.1})
    with pytest.raises(DipgoError, match="held_out"):
        PruneConfig(held_out=0)
    with pytest.raises(DipgoError, match="iterations"):
        PruneConfig(iterations=-1)


def test_effort_levels_grow_in_cost():
    q, d, t = EFFORTS["quick"], EFFORTS["default"], EFFORTS["thorough"]
    for field in ("evaluations", "held_out"):
        assert getattr(q, field) < getattr(d, field) < getattr(t, field)
    # the gradient search runs at thorough only; quick and default spend its time on held-out runs
    assert q.iterations == d.iterations == 0 < t.iterations
    c = PruneConfig(effort="quick")
    assert c.search_config().iterations == q.iterations and c.refine_config().evaluations == q.evaluations
    assert PruneConfig(effort="quick", iterations=7).search_config().iterations == 7


def test_without_search_iterations_the_pipeline_selects_among_the_simple_schedules_only():
    pipe = tiny_dit()
    config = PruneConfig(ratio=0.5, num_inference_steps=6, effort="quick", iterations=0,
                         evaluations=MIN_EVALUATIONS + 4, held_out=2)
    out = prune_schedules(pipe, config, calibration=default_calibration(pipe), progress=False)[0]
    rec = out.schedule.meta["pipeline"]
    assert "search" not in rec["candidates"] and rec["candidates"]
    assert all(k.startswith(("uniform ", "every ", "warm-up ")) for k in rec["candidates"]), rec["candidates"]
    assert rec["search"]["iterations"] == 0 and out.schedule.meta["search"]["iterations"] == 0
    assert out.schedule.achieved_ratio >= 0.5 - 0.0125 - 1e-6


def test_the_search_alone_does_not_collapse_on_a_trained_model():
    """A trained model (the zoo's mnist-sd, 8 DDIM steps, 3x fewer MACs): the search's own schedule, cut at the
    budget without any selection or refinement, stays close to the full model. A collapse (gates flipping
    together, the output unrelated to the full model's) gives images near 10-12 dB, and a search that wanders
    off its evenly spread start ends several dB below it; at 3 of 8 calls the evenly spread schedule itself is
    near 17 dB, so the floor sits between the two."""
    from dipgo import zoo
    from dipgo.cache.pipeline import uniform_schedule
    from dipgo.cache.postprocess import schedule_at_ratio
    from dipgo.cache.search import Search
    from dipgo.models.pipelines import set_scheduler

    pipe, source = zoo.load("mnist-sd")
    set_scheduler(pipe, "ddim")
    config = PruneConfig(ratio=0.667, num_inference_steps=8, guidance_scale=source.guidance_scale, effort="quick",
                         iterations=12)
    sampler = make_sampler(pipe, config, calibration=default_calibration(pipe, defaults=source.defaults))
    result = Search(sampler, config.search_config()).run(progress=False)
    full = held_out_images(sampler, 4)
    cut = schedule_at_ratio(result, 0.667)
    alone = held_out_psnr(sampler, cut, full)
    even = held_out_psnr(sampler, uniform_schedule(result, cut.achieved_ratio), full)
    assert alone > 18.0 and alone > even - 3.0, (alone, even)


def test_an_interrupted_selection_resumes_from_its_held_out_record(tmp_path, monkeypatch):
    """Stopped after 5 held-out runs and started again with the same checkpoint, the pipeline samples only the
    runs it had not measured and ends with the schedule an uninterrupted run gives."""
    import json

    import dipgo.cache.refine as refine_module
    from dipgo.cache.pipeline import record_path

    pipe = tiny_dit()
    cal = default_calibration(pipe)
    config = PruneConfig(ratio=0.5, num_inference_steps=6, effort="quick", iterations=0,
                         evaluations=MIN_EVALUATIONS + 6, held_out=2)
    real, runs, stop = refine_module.held_out_psnr, [], {"after": None}

    def counted(*args, **kwargs):
        if stop["after"] is not None and len(runs) >= stop["after"]:
            raise KeyboardInterrupt
        runs.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(refine_module, "held_out_psnr", counted)
    whole = prune_schedules(pipe, config, calibration=cal, progress=False)[0]
    total, ckpt = len(runs), tmp_path / "s.search.pt"
    runs.clear()
    stop["after"] = 5
    with pytest.raises(KeyboardInterrupt):
        prune_schedules(pipe, config, calibration=cal, checkpoint=ckpt, progress=False)
    assert len(json.loads(record_path(ckpt).read_text())["values"]) == 5
    runs.clear()
    stop["after"] = None
    resumed = prune_schedules(pipe, config, calibration=cal, checkpoint=ckpt, progress=False)[0]
    assert total > 5 and len(runs) == total - 5
    assert resumed.schedule.steps == whole.schedule.steps and resumed.psnr == whole.psnr
    assert resumed.candidates == whole.candidates


def test_a_held_out_record_of_another_setting_is_not_trusted(tmp_path):
    from dipgo.cache.heldout import HeldOutRecord

    path = tmp_path / "r.heldout.json"
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    first = HeldOutRecord(path, {"n": 2})
    first.put(HeldOutRecord.key(1, mask), 31.5)
    assert HeldOutRecord(path, {"n": 2}).get(HeldOutRecord.key(1, mask)) == 31.5
    assert HeldOutRecord(path, {"n": 2}).get(HeldOutRecord.key(0, mask)) is None  # another forecast order
    assert HeldOutRecord(path, {"n": 4}).values == {}  # other held-out images: started over
    path.write_text("not json")
    with pytest.raises(DipgoError, match="delete it"):
        HeldOutRecord(path, {"n": 2})
