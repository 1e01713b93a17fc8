"""Schedule files: round trip, atomic writes, and clear refusals of corrupt or mismatched schedules."""

import json

import pytest
import torch

from dipgo.cache.schedule import Schedule, ScheduleError, config_hash


def make(**kw) -> Schedule:
    blocks = ["a", "b", "c"]
    base = dict(model_class="Linear", config_hash=config_hash(torch.nn.Linear(2, 2)), blocks=blocks,
                num_inference_steps=4, scheduler="DDIMScheduler",
                steps=[blocks, ["a"], [], ["a", "c"]], requested_ratio=0.5, achieved_ratio=0.49)
    base.update(kw)
    return Schedule(**base)


def test_round_trip_and_atomic_write(tmp_path):
    s = make()
    path = s.save(tmp_path / "s.json")
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temp file left behind
    loaded = Schedule.load(path)
    assert loaded.steps == s.steps and loaded.blocks == s.blocks
    assert loaded.mask().tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 0, 1]]
    assert json.loads(path.read_text())["format"] == "dipgo-schedule"
    assert "a ##.#" in s.summary() and "c #..#" in s.summary()


@pytest.mark.parametrize("content,needle", [
    ('{"format": "dipgo-schedule", "version": 1, "blocks": ["a"', "corrupt or truncated"),
    ("\x00\x01binary", "corrupt or truncated"),
    ('{"hello": 1}', "not a dipgo schedule"),
    ('{"format": "dipgo-schedule", "version": 99}', "version 99"),
    ('{"format": "dipgo-schedule", "version": 1, "blocks": ["a"]}', "missing or unexpected fields"),
])
def test_corrupt_files_are_refused(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ScheduleError, match=needle):
        Schedule.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ScheduleError, match="does not exist"):
        Schedule.load(tmp_path / "nope.json")


def test_invalid_contents():
    with pytest.raises(ScheduleError, match="unknown block"):
        make(steps=[["a", "b", "c"], ["zzz"], [], []])
    with pytest.raises(ScheduleError, match="call 0 must compute every block"):
        make(steps=[["a"], [], [], []])
    with pytest.raises(ScheduleError, match="cache mode"):
        make(cache_modes={"a": "sometimes"})


def test_check_names_every_difference():
    s = make()
    other = torch.nn.Conv2d(1, 1, 1)
    with pytest.raises(ScheduleError, match="model class: schedule is for Linear, pipeline has Conv2d"):
        s.check(other)

    class Sched:
        pass

    model = torch.nn.Linear(2, 2)
    s2 = make(blocks=["weight_is_not_a_module"], steps=[["weight_is_not_a_module"]] * 4)
    with pytest.raises(ScheduleError) as err:
        s2.check(model, Sched(), num_inference_steps=7)
    msg = str(err.value)
    assert "blocks missing" in msg and "scheduler: schedule is for DDIMScheduler, pipeline has Sched" in msg
    assert "num_inference_steps: schedule is for 4, pipeline called with 7" in msg
    with pytest.raises(ScheduleError, match="different architecture"):
        make(config_hash="0" * 16).check(model)
