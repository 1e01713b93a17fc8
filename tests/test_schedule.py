"""Schedule files: round trip, atomic writes, and clear refusals of corrupt or mismatched schedules."""

import json
import re

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


@pytest.mark.parametrize("change,field", [
    ({"steps": [["a", "b", "c"], ["a"]]}, "steps"),                 # 2 rows when num_inference_steps is 4
    ({"steps": [["a", "b", "c"], "a", [], []]}, "steps[1]"),         # a row given as a string
    ({"steps": [["a", "b", "c"], ["a", 3], [], []]}, "steps[1]"),    # a block name that is not a string
    ({"steps": [["a", "b", "c"], ["a", "a"], [], []]}, "steps"),     # a block twice in one row
    ({"steps": "abc"}, "steps"),
    ({"num_inference_steps": 2.5}, "num_inference_steps"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": True}, "num_inference_steps"),
    ({"branches": 0}, "branches"),
    ({"branches": 1.5}, "branches"),
    ({"branches": 2}, "branches"),                                   # 4 rows, but 2 calls per step need 8
    ({"cache_modes": {"zzz": "output"}}, "cache_modes"),            # a mode for a block that is not in blocks
    ({"cache_modes": ["a"]}, "cache_modes"),
    ({"macs": -1}, "macs"),
    ({"macs_full": -5}, "macs_full"),
    ({"macs": 10, "macs_full": 5}, "macs"),
    ({"macs": 1.5}, "macs"),
    ({"achieved_ratio": 1.0}, "achieved_ratio"),
    ({"achieved_ratio": -0.1}, "achieved_ratio"),
    ({"requested_ratio": 2}, "requested_ratio"),
    ({"requested_ratio": "0.5"}, "requested_ratio"),
    ({"requested_ratio": float("nan")}, "requested_ratio"),
    ({"blocks": ["a", 2, "c"]}, "blocks"),
    ({"blocks": "abc"}, "blocks"),
    ({"meta": []}, "meta"),
    ({"model_class": 3}, "model_class"),
    ({"scheduler": None}, "scheduler"),
    ({"output_block": "zzz"}, "output_block"),
])
def test_the_loader_names_each_bad_field(tmp_path, change, field):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({**make().to_dict(), **change}))
    with pytest.raises(ScheduleError, match=f"s.json: .*{re.escape(repr(field))}"):
        Schedule.load(path)


def test_the_loader_names_missing_and_unexpected_fields(tmp_path):
    path, good = tmp_path / "s.json", make().to_dict()
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "cache_modes"}))
    with pytest.raises(ScheduleError, match=r"missing: \['cache_modes'\]"):
        Schedule.load(path)
    path.write_text(json.dumps({**good, "stepz": []}))
    with pytest.raises(ScheduleError, match=r"unexpected: \['stepz'\]"):
        Schedule.load(path)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "forecast_order"}))
    assert Schedule.load(path) == make()  # written before forecasting: it means order 0


def test_calls_may_exceed_steps():
    """PLMS calls the model once more than its steps, and ``branches=2`` doubles the calls."""
    assert make(steps=[["a", "b", "c"], ["a"], [], ["a", "c"], ["a"]]).num_calls == 5
    assert make(branches=2, steps=[["a", "b", "c"]] * 2 + [["a"], []] * 3).num_calls == 8


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
