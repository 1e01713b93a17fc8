"""Property-based tests of every file dipgo reads: schedules, pruned-folder records (layers and depth), search
and distillation checkpoints, and prompts files.

Each reader starts from a valid file that the real code wrote on a tiny model; hypothesis then applies one
random mutation (a field dropped, a value swapped for one of another type, a list or tensor made longer or
shorter, a number set out of range, the bytes truncated). The reader must either refuse the file with a
:class:`DipgoError` that names a field on the mutated path (or says the file is corrupt or truncated), or load
something equal to the original (a harmless mutation) or, for schedules, exactly what the file says. Any other
exception, or a load that silently differs, fails the test.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass

import pytest
import torch
from diffusers import DDPMScheduler
from families import tiny_dit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dipgo
from dipgo.cache.postprocess import schedule_at_ratio
from dipgo.cache.schedule import Schedule
from dipgo.cache.search import Search, SearchCheckpoint, SearchConfig
from dipgo.depth import prune_depth, save_depth
from dipgo.errors import DipgoError
from dipgo.models.calibration import read_prompts
from dipgo.models.data import TrainingSet
from dipgo.models.distill import DistillConfig, distill
from dipgo.models.folders import save_pruned
from dipgo.models.surgery import remove_layers
from dipgo.zoo.mnist import digit_prompts

FUZZ = settings(max_examples=50, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SWAPS = [None, True, -3, 2.5, "x", [], {}, [1, "a"], {"k": 1}]
INTS = [-1, 0, 10**12, -(10**12)]
FLOATS = [-1.0, float("nan"), float("inf"), 1e12]
CORRUPT = re.compile("corrupt or truncated|not UTF-8|is empty|not a dipgo|not a version-1")


# ------------------------------------------------------------------------------------------------ mutations
@dataclass(frozen=True)
class Mutation:
    op: str                 # drop | swap | range | length | dtype | truncate
    path: tuple = ()
    arg: object = None

    def keys(self) -> list[str]:
        return [k for k in self.path if isinstance(k, str)]


def paths(obj, depth: int, leaves: frozenset = frozenset(), path: tuple = ()) -> list[tuple]:
    """Every (path, value) under ``obj`` down to ``depth``; keys in ``leaves`` are mutated whole, never inside."""
    out = []
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for key, value in children:
        out.append((path + (key,), value))
        if depth > 1 and key not in leaves:
            out += paths(value, depth - 1, leaves, path + (key,))
    return out


def _ops(value) -> dict[str, list]:
    """The mutations that apply to ``value``, by kind."""
    ops = {"drop": [None], "swap": [s for s in SWAPS if type(s) is not type(value)]}
    if isinstance(value, int) and not isinstance(value, bool):
        ops["range"] = INTS
    if isinstance(value, float):
        ops["range"] = FLOATS
    if isinstance(value, list) and value:
        ops["length"] = ["longer", "shorter", "empty"]
    if isinstance(value, torch.Tensor):
        ops["length"] = ["shorter", "longer"]
        ops["dtype"] = [torch.int64, torch.float64]
    return ops


def mutations(candidates: list[tuple], undetectable=lambda path, op: False) -> st.SearchStrategy[Mutation]:
    """One mutation (or a truncation) of a field in ``candidates``: half the time a top-level field first,
    each as likely, then one of the paths under it, and half the time any path, each as likely (so nested
    structures, a schedule's rows, get their share); then a kind of mutation, each as likely; never one
    that ``undetectable(path, kind)``."""
    tops = sorted({path[0] for path, _ in candidates}, key=str)

    @st.composite
    def draw(draw_):
        if draw_(st.integers(0, 7)) == 0:
            return Mutation("truncate", arg=draw_(st.floats(0, 0.999)))
        pool = candidates
        if draw_(st.booleans()):
            top = draw_(st.sampled_from(tops))
            pool = [c for c in candidates if c[0][0] == top]
        path, value = draw_(st.sampled_from(pool))
        ops = {k: v for k, v in _ops(value).items() if not undetectable(path, k)}
        kind = draw_(st.sampled_from(sorted(ops)))
        return Mutation(kind, path, draw_(st.sampled_from(ops[kind])))

    return draw()


def _resized(value, how: str):
    if isinstance(value, torch.Tensor):
        flat = value.flatten()
        return flat[:-1].clone() if how == "shorter" else torch.cat([flat, flat[:1]])
    return {"longer": value + value[:1], "shorter": value[:-1], "empty": []}[how]


def mutate(obj, m: Mutation):
    """A mutated deep copy of ``obj`` (never the truncation, which acts on bytes)."""
    obj = copy.deepcopy(obj)
    parent = obj
    for key in m.path[:-1]:
        parent = parent[key]
    key = m.path[-1]
    if m.op == "drop":
        del parent[key]
    elif m.op in ("swap", "range"):
        parent[key] = m.arg
    elif m.op == "length":
        parent[key] = _resized(parent[key], m.arg)
    elif m.op == "dtype":
        parent[key] = parent[key].to(m.arg if parent[key].dtype != m.arg else torch.float32)
    return obj


def outcome(m: Mutation, load):
    """``load()``, or None when it raised a :class:`DipgoError` that names the mutated field (any other
    exception, or a DipgoError that does not say what is wrong, fails the test)."""
    try:
        return load()
    except DipgoError as err:
        msg = str(err)
        if m.op == "truncate":
            assert CORRUPT.search(msg), (m, msg)
        else:
            assert any(k in msg for k in m.keys()) or CORRUPT.search(msg) and not m.keys(), (m, msg)
        return None


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) or isinstance(b, dict):
        both = isinstance(a, dict) and isinstance(b, dict)
        return both and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------------------------------------ valid files
class Files(dict):
    """A fixture's files and states, shown short in hypothesis's reports."""

    def __repr__(self) -> str:
        return f"Files({sorted(self)})"


@pytest.fixture(scope="module")
def search_files(tmp_path_factory):
    """A search checkpoint and a schedule written by the real search on a tiny DiT, and the state a search
    resumed from that checkpoint holds."""
    root, pipe = tmp_path_factory.mktemp("search"), tiny_dit()
    cfg = SearchConfig(ratio=0.5, num_inference_steps=4, iterations=2, batch=1, checkpoint_every=1)
    result = Search(pipe, cfg, checkpoint_path=root / "search.pt").run(progress=False)
    schedule = schedule_at_ratio(result, 0.5)
    resumed = Search(pipe, cfg, checkpoint_path=root / "search.pt")
    return Files(root=root, checkpoint=torch.load(root / "search.pt", weights_only=True), search=resumed,
                 state=_search_state(resumed), schedule=schedule.to_dict())


def _search_state(search: Search) -> dict:
    """What a resumed search continues from. The optimizer's learning rate is left out: the search sets it
    from the iteration before every step, so the value in the file is never used."""
    opt = copy.deepcopy(search.opt.state_dict())
    for group in opt["param_groups"]:
        group.pop("lr")
    return copy.deepcopy({"pruner": search.pruner.state_dict(), "opt": opt, "rng": search.rng.get_state(),
                          "iteration": search.iteration, "history": search.history})


@pytest.fixture(scope="module")
def dit():
    return tiny_dit()


@pytest.fixture(scope="module")
def distill_files(dit, tmp_path_factory):
    """A distillation checkpoint after 2 of 3 steps (with a moving average), and the run resumed from it."""
    teacher = dit.transformer
    student = remove_layers(copy.deepcopy(teacher), ["transformer_blocks.1"])
    g = torch.Generator().manual_seed(1)
    c = teacher.config
    data = TrainingSet(torch.randn(8, c.in_channels, c.sample_size, c.sample_size, generator=g),
                       {"class_labels": torch.randint(0, 10, (8,), generator=g)}, {"return_dict": False},
                       sample_arg="hidden_states")
    noise = DDPMScheduler.from_config(dit.scheduler.config)
    path = tmp_path_factory.mktemp("distill") / "d.pt"
    kw = dict(batch=2, lr=1e-3, ema=0.9, checkpoint_every=1)
    distill(copy.deepcopy(student), teacher, data, noise, DistillConfig(steps=2, **kw), path, progress=False)
    checkpoint = torch.load(path, weights_only=True)

    def resume():
        s = copy.deepcopy(student)
        history = distill(s, teacher, data, noise, DistillConfig(steps=3, **kw), path, progress=False)
        return s.state_dict(), history

    reference = resume()
    return Files(path=path, checkpoint=checkpoint, resume=resume, reference=reference)


@pytest.fixture(scope="module")
def record_folders(dit, tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    removed = copy.deepcopy(dit)
    remove_layers(removed.transformer, ["transformer_blocks.0"])
    res = prune_depth(dit, 0.5, train_steps=0, n_images=2, num_inference_steps=3, progress=False)
    out = {}
    for name, folder in (("dipgo-layers.json", save_pruned(removed, root / "layers", {"ratio": 0.5})),
                         ("dipgo-depth.json", save_depth(res.pipe, root / "depth", res.info()))):
        out[name] = (folder, (folder / name).read_bytes(), dipgo.load_pruned(folder).transformer)
    return out


def _write(path, m: Mutation, original: bytes, mutated: bytes) -> None:
    path.write_bytes(original[:int(len(original) * m.arg)] if m.op == "truncate" else mutated)


# ------------------------------------------------------------------------------------------------ the readers
def _optimizer_state_dropped(path: tuple, op: str) -> bool:
    """An optimizer holds no state for a parameter that never had a gradient, so a file without one
    parameter's state is a valid checkpoint: dropping it is a mutation no reader can detect."""
    return op == "drop" and path[:2] == ("opt", "state") and len(path) == 3


def _checkpoint_candidates(state: dict) -> list[tuple]:
    """Every field down to 4 levels, but the rows of the history only as a whole (their values are a record)."""
    return paths(state, 4, leaves=frozenset({"history"})) + [(("history", i), row)
                                                            for i, row in enumerate(state["history"])]


def _truncated_or_mutated(path, original: dict, m: Mutation) -> None:
    torch.save(original if m.op == "truncate" else mutate(original, m), path)
    if m.op == "truncate":
        path.write_bytes(path.read_bytes()[:int(path.stat().st_size * m.arg)])


@settings(FUZZ, max_examples=60)  # the cheapest reader: a few more examples
@given(data=st.data())
def test_schedule_files(search_files, data):
    original = search_files["schedule"]
    m = data.draw(mutations(paths(original, 3, leaves=frozenset({"meta"}))))
    mutated = original if m.op == "truncate" else mutate(original, m)
    path = search_files["root"] / "s.json"
    _write(path, m, json.dumps(original).encode(), json.dumps(mutated).encode())
    loaded = outcome(m, lambda: Schedule.load(path))
    if loaded is not None:  # loaded exactly what the file says: nothing coerced, dropped or defaulted but
        says = json.loads(json.dumps(mutated))  # forecast_order, which older files lack
        assert _same(loaded.to_dict(), {"forecast_order": 0, **says}), m
        assert_schedule_invariants(loaded, m)


def _count(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def assert_schedule_invariants(s: Schedule, m: Mutation) -> None:
    """What every schedule the loader accepts must satisfy, whatever the file said."""
    assert all(isinstance(b, str) and b for b in s.blocks) and len(set(s.blocks)) == len(s.blocks) > 0, m
    assert _count(s.num_inference_steps, 1) and _count(s.branches, 1), m
    assert isinstance(s.steps, list) and len(s.steps) >= s.num_inference_steps * s.branches, m
    for row in s.steps:
        assert isinstance(row, list) and len(set(row)) == len(row) and set(row) <= set(s.blocks), m
    assert all(set(row) == set(s.blocks) for row in s.steps[:s.branches]), m
    assert isinstance(s.cache_modes, dict) and set(s.cache_modes) <= set(s.blocks), m
    assert s.output_block is None or s.output_block in s.blocks, m
    assert all(v is None or _count(v, 0) for v in (s.macs, s.macs_full)), m
    assert s.macs is None or s.macs_full is None or s.macs <= s.macs_full, m
    for ratio in (s.requested_ratio, s.achieved_ratio):
        assert ratio is None or isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 <= ratio < 1, m
    assert isinstance(s.meta, dict) and s.forecast_order in (0, 1, 2), m


@FUZZ
@given(data=st.data())
def test_search_checkpoints(search_files, data):
    original, search = search_files["checkpoint"], search_files["search"]
    m = data.draw(mutations(_checkpoint_candidates(original), _optimizer_state_dropped))
    path = search_files["root"] / "fuzz.pt"
    _truncated_or_mutated(path, original, m)
    if outcome(m, lambda: SearchCheckpoint(path).restore(search)) is not None:
        assert _same(_search_state(search), search_files["state"]), m


@FUZZ
@given(data=st.data())
def test_distillation_checkpoints(distill_files, data):
    original = distill_files["checkpoint"]
    m = data.draw(mutations(_checkpoint_candidates(original), _optimizer_state_dropped))
    _truncated_or_mutated(distill_files["path"], original, m)
    resumed = outcome(m, distill_files["resume"])
    if resumed is not None:  # the one step after the checkpoint is the same as from the untouched file
        assert _same(resumed, distill_files["reference"]), m


@pytest.mark.parametrize("name", ["dipgo-layers.json", "dipgo-depth.json"])
def test_pruned_folder_records(record_folders, name):
    folder, original, reference = record_folders[name]
    record = json.loads(original)

    @FUZZ
    @given(m=mutations(paths(record, 3)))
    def check(m):
        mutated = b"" if m.op == "truncate" else json.dumps(mutate(record, m)).encode()
        _write(folder / name, m, original, mutated)
        try:
            back = outcome(m, lambda: dipgo.load_pruned(folder))
        finally:
            (folder / name).write_bytes(original)
        if back is not None:
            assert [type(x).__name__ for x in back.transformer.modules()] == \
                   [type(x).__name__ for x in reference.modules()], m
            assert _same(back.transformer.state_dict(), reference.state_dict()), m

    check()


PROMPT_EDITS = ["truncate", "insert bytes", "drop line", "repeat line", "blank line", "comment", "replace line"]
HARMLESS = ("blank line", "comment")


@FUZZ
@given(edit=st.sampled_from(PROMPT_EDITS), where=st.floats(0, 0.999), junk=st.binary(min_size=1, max_size=4),
       text=st.text(max_size=12))
def test_prompts_files(tmp_path_factory, edit, where, junk, text):
    prompts = digit_prompts()
    original = ("\n".join(prompts) + "\n").encode()
    lines = original.decode().splitlines()
    at = int(len(lines) * where)
    if edit == "truncate":
        content = original[:int(len(original) * where)]
    elif edit == "insert bytes":
        cut = int(len(original) * where)
        content = original[:cut] + junk + original[cut:]
    else:
        new = {"drop line": [], "repeat line": [lines[at]] * 2, "blank line": ["   ", lines[at]],
               "comment": ["# " + text, lines[at]], "replace line": [text]}[edit]
        content = "\n".join(lines[:at] + new + lines[at + 1:]).encode()
    path = tmp_path_factory.getbasetemp() / "fuzz-prompts.txt"
    path.write_bytes(content)
    try:
        got = read_prompts(path)
    except DipgoError as err:
        assert re.search(r"line \d+ holds control characters|not UTF-8|is empty", str(err)), (edit, str(err))
        return
    if edit in HARMLESS:
        assert got == prompts
    decoded = content.decode("utf-8-sig")
    for p in got:  # every prompt is a stripped, non-comment line of the file, free of control characters
        assert p and p == p.strip() and not p.startswith("#") and p in decoded, (edit, p)
        assert all(c == "\t" or ord(c) >= 32 and not 0x7F <= ord(c) < 0xA0 for c in p), (edit, p)
