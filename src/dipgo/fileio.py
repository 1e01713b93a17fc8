"""Atomic file writes (every file dipgo writes appears whole or not at all) and safe checkpoint reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block finishes.

    The temporary name keeps the suffix, so writers that infer the format from it (numpy, PIL) work.
    An interrupted write leaves the previous file untouched and removes the partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """A data file inside an installed package (weights we read without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; install it with: {install_hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {install_hint}")
    return path



_UNSAFE = "Weights only load failed"


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def read_checkpoint(path: str | Path, what: str, fields: dict[str, type | tuple[type, ...]]) -> dict:
    """A checkpoint read with ``torch.load(weights_only=True)``: tensors and plain values only, so a file from
    someone else can never run code here. ``fields`` maps each top-level key the checkpoint must hold to
    its type(s); any other file, or a field missing or of another type, raises a :class:`DipgoError`
    naming the file and the field."""
    import pickle
    import re

    import torch

    from .errors import DipgoError

    fix = "delete it to start over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if _UNSAFE not in str(err):
            raise DipgoError(f"{what} {path} is corrupt or truncated ({err}); {fix}") from err
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        holds = f" ({found.group(1)})" if found else ""
        raise DipgoError(f"{what} {path} is not a dipgo checkpoint or is unsafe to load: it holds objects other "
                         f"than tensors and plain values{holds}, which could run code; {fix}") from err
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DipgoError(f"{what} {path} is corrupt or truncated ({why}); {fix}") from err
    if not isinstance(state, dict):
        raise DipgoError(f"{what} {path} is not a dipgo checkpoint (it holds a {type(state).__name__}, not a "
                         f"dict of fields); {fix}")
    for name, kind in fields.items():
        if name not in state:
            raise DipgoError(f"{what} {path} has no field {name!r}; {fix}")
        value, kinds = state[name], _kinds(kind)
        # True is an int to isinstance, never to a checkpoint field
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = "/".join(k.__name__ for k in kinds)
            raise DipgoError(f"{what} {path}: field {name!r} must be a {names}, got {type(value).__name__}; {fix}")
    return state


def check_tensors(mine: dict, saved, where: str, field: str) -> None:
    """Refuse a saved state dict (checkpoint field ``field``; ``where`` names the checkpoint) that does not
    hold exactly the tensors of ``mine``, with their shapes and dtypes: ``load_state_dict`` would silently
    cast a tensor of another dtype."""
    import torch

    from .errors import DipgoError

    fix = "delete it to start over"
    if not isinstance(saved, dict) or set(saved) != set(mine):
        theirs = set(saved) if isinstance(saved, dict) else set()
        missing, unexpected = sorted(set(mine) - theirs, key=str)[:4], sorted(theirs - set(mine), key=str)[:4]
        raise DipgoError(f"{where}: field {field!r} does not hold this model's tensors (missing {missing}, "
                         f"unexpected {unexpected}); {fix}")
    for key, tensor in mine.items():
        value = saved[key]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape or value.dtype != tensor.dtype:
            got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise DipgoError(f"{where}: field {field!r} holds {key!r} as {got}, not {tuple(tensor.shape)} "
                             f"{tensor.dtype}; {fix}")


def _same(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        both = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        return both and a.shape == b.shape and bool((a == b).all())
    return type(a) is type(b) and a == b


def load_optimizer(opt, saved, where: str, field: str = "opt") -> None:
    """``opt.load_state_dict(saved)`` once ``saved`` (checkpoint field ``field``) is known to fit ``opt``: the
    same groups of the same parameters with the same settings (all but the learning rate, which is set at
    every step), and state tensors of each parameter's shape and dtype."""
    import torch

    from .errors import DipgoError

    params = [p for group in opt.param_groups for p in group["params"]]

    def refuse(why: str) -> None:
        raise DipgoError(f"{where}: field {field!r} does not fit this optimizer ({why}); delete it to start over")

    groups, state = (saved.get("param_groups"), saved.get("state")) if isinstance(saved, dict) else (None, None)
    if not isinstance(groups, list) or len(groups) != len(opt.param_groups) or not isinstance(state, dict):
        refuse("it needs 'param_groups', one per group, and 'state'")
    first = 0
    for mine, theirs in zip(opt.param_groups, groups, strict=True):
        if not isinstance(theirs, dict) or theirs.get("params") != list(range(first, first + len(mine["params"]))):
            refuse("its groups hold other parameters")
        first += len(mine["params"])
        if set(theirs) != set(mine):
            refuse(f"its settings are {sorted(theirs)}, not {sorted(mine)}: another optimizer or torch version")
        lr = theirs["lr"]  # its value is set again before every step, but it must be one
        if not isinstance(lr, (int, float, torch.Tensor)) or isinstance(lr, bool):
            refuse(f"its learning rate is {lr!r}")
        differs = sorted(k for k in set(mine) - {"params", "lr"} if not _same(theirs[k], mine[k]))
        if differs:
            refuse(f"settings {differs} differ")
    kinds = {tuple(sorted((str(k), type(v).__name__) for k, v in entry.items())) if isinstance(entry, dict)
             else None for entry in state.values()}
    if len(kinds) > 1:  # one optimizer keeps the same entries, of the same types, for every parameter it stepped
        refuse(f"its parameters' states hold different entries {sorted(map(str, kinds))}")
    for index, entry in state.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            refuse(f"state of an unknown parameter {index!r}")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and (
                    value.shape != params[index].shape or value.dtype != params[index].dtype):
                refuse(f"state {key!r} of parameter {index} is {tuple(value.shape)} {value.dtype}")
    try:
        opt.load_state_dict(saved)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        refuse(str(err))


def check_progress(path, what: str, counter: str, count: int, history: list, fix: str) -> None:
    """A checkpoint's progress fields: ``count`` (field ``counter``) equals the number of ``history`` rows,
    each a dict numbered by ``counter`` in order; otherwise a :class:`DipgoError` naming the field and ``fix``."""
    from .errors import DipgoError

    if count < 0 or count != len(history):
        raise DipgoError(f"{what} {path}: field '{counter}' ({count}) must equal the length of field 'history' "
                         f"({len(history)}); {fix}")
    if not all(isinstance(row, dict) and row.get(counter) == i for i, row in enumerate(history)):
        raise DipgoError(f"{what} {path}: field 'history' must hold one dict per {counter}, in order; {fix}")
