"""The benchmark harness: paired timing, the Markdown table writer and atomic JSON writing (fast, no model)."""

import json
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from benchmarks import harness as h


def test_paired_timing_ratio_near_truth():
    t = h.paired_timing(lambda: time.sleep(0.040), lambda: time.sleep(0.020), passes=3, chunks=3, calls=2)
    assert len(t.ratios) == 3 and t.ratio_range[0] <= t.ratio <= t.ratio_range[1]
    # Truth is 2.0. A sleep overshoots by the scheduler's wake-up latency, added to both sides, which pulls the
    # ratio towards 1 (little when idle, several ms on a loaded machine, so the sleeps are long enough for
    # that to stay small): 20 % either way allows it and still catches a ratio inverted, halved or unpaired.
    assert 1.6 < t.ratio < 2.4
    assert 0.039 < t.base_median_s < 0.055


def test_paired_timing_exact_on_a_fake_clock(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(h, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))

    def costs(seconds):
        return lambda: clock.__setitem__("now", clock["now"] + seconds)

    t = h.paired_timing(costs(3.0), costs(1.0), passes=2, chunks=2, calls=3)
    assert t.base_s == [3.0, 3.0] and t.other_s == [1.0, 1.0] and t.ratio == 3.0 and t.ratio_range == (3.0, 3.0)


def test_alternate_order_warmup_and_around():
    log = []

    @contextmanager
    def around():
        log.append("enter")
        yield
        log.append("exit")

    times = h.alternate((lambda: log.append("a"), lambda: log.append("b")), chunks=2, calls=2, warmup=1,
                        around=(None, around))
    assert [len(x) for x in times] == [4, 4]  # warm-up calls are not timed
    assert log == ["a", "enter", "b", "exit",                # warm-up, one call each
                   "a", "a", "enter", "b", "b", "exit",      # chunk 1
                   "a", "a", "enter", "b", "b", "exit"]      # chunk 2
    with pytest.raises(ValueError, match="around"):
        h.alternate((lambda: None,), chunks=1, around=(None, None))


def test_table():
    lines = h.table(("model", "speedup", "note"), [["mnist-sd", f"{2.0:.2f}x", ""], ["mnist-dit", "1.50x", "b"]])
    assert lines == ["| model | speedup | note |",
                     "|---|---|---|",
                     "| mnist-sd | 2.00x |  |",
                     "| mnist-dit | 1.50x | b |"]


def test_write_markdown(tmp_path):
    path = h.write_markdown(tmp_path / "page.md", ["# Title", "", *h.table(("a",), [[1]])], echo=False)
    assert path.read_text() == "# Title\n\n| a |\n|---|\n| 1 |\n"


def test_write_json_atomic(tmp_path):
    path = tmp_path / "sub" / "report.json"
    h.write_json(path, {"rows": [1, 2]})
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    assert path.read_text() == json.dumps({"rows": [1, 2]}, indent=1)

    class Unserialisable:
        pass

    with pytest.raises(TypeError):  # a failed write leaves the previous file whole, and no temporary file
        h.write_json(path, {"rows": [Unserialisable()]})
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
    assert h.read_json(tmp_path / "missing.json", []) == []


def test_row_report_resumes_matching_settings(tmp_path):
    path = tmp_path / "r.json"
    first = h.RowReport(path, {"n": 8, "rows": []}, settings=("n",))
    first.add({"label": "x", "ratio": 0.5, "macs_speedup": 2.0})
    assert h.RowReport(path, {"n": 8, "rows": []}, ("n",)).find(label="x", ratio=0.5) is not None
    assert h.RowReport(path, {"n": 16, "rows": []}, ("n",)).rows == []  # other settings: start over


def test_two_processes_adding_rows_to_one_report_keep_both(tmp_path):
    path = tmp_path / "r.json"
    a = h.RowReport(path, {"n": 8, "rows": []}, ("n",))
    b = h.RowReport(path, {"n": 8, "rows": []}, ("n",))  # opened before either saved, like a second process
    a.add({"label": "sd", "ratio": 0.5, "macs_speedup": 2.0})
    b.add({"label": "dit", "ratio": 0.5, "macs_speedup": 2.0})
    a.add({"label": "sd", "ratio": 0.6, "macs_speedup": 2.5})
    rows = h.read_json(path)["rows"]
    assert sorted((r["label"], r["ratio"]) for r in rows) == [("dit", 0.5), ("sd", 0.5), ("sd", 0.6)]
    other = h.RowReport(tmp_path / "o.json", {"n": 16, "rows": []}, ("n",))
    other.path = path  # a report of other settings saved over it takes in none of its rows
    other.add({"label": "x", "ratio": 0.1, "macs_speedup": 1.1})
    assert [r["label"] for r in h.read_json(path)["rows"]] == ["x"]


def test_a_row_completed_in_place_replaces_its_older_copy_from_another_process(tmp_path):
    path, key = tmp_path / "r.json", ("label", "ratio")
    a = h.RowReport(path, {"n": 8, "rows": []}, ("n",), key=key)
    a.add({"label": "sd", "ratio": 0.5, "macs_speedup": 2.0})
    a.add({"label": "dit", "ratio": 0.5, "macs_speedup": 2.0})
    b = h.RowReport(path, {"n": 8, "rows": []}, ("n",), key=key)  # the second process holds both rows
    a.find(label="sd")["extra"] = 1.0  # a new column on one row, in the first process
    a.save()
    b.find(label="dit")["extra"] = 2.0  # and on the other, in the second, which still holds the old sd row
    b.save()
    rows = {r["label"]: r for r in h.read_json(path)["rows"]}
    assert len(h.read_json(path)["rows"]) == 2
    assert rows["sd"]["extra"] == 1.0 and rows["dit"]["extra"] == 2.0


def test_every_benchmark_runs_as_a_module_of_the_package():
    scripts = [f for f in (h.ROOT / "benchmarks").glob("*.py")
               if f.stem not in ("__init__", "harness", "results_page")]
    assert len(scripts) >= 10
    for f in scripts:
        text = f.read_text()
        assert "sys.path" not in text, f"{f.name}: import dipgo as installed, not by editing sys.path"
        assert "from benchmarks import harness as h" in text, f"{f.name}: use the shared harness"
        assert 'if __name__ == "__main__":' in text, f"{f.name}: runs as python -m benchmarks.{f.stem}"
