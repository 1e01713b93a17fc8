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
