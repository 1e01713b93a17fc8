"""Checks of user settings that several methods share, each raising a :class:`DipgoError` that names the
setting, the allowed values and what was given."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import DipgoError


def check_ratio(value: float, what: str, name: str = "ratio") -> float:
    """``value`` as a float strictly between 0 and 1; ``what`` says what it is a share of, for the message."""
    try:
        ratio = float(value)
    except (TypeError, ValueError) as err:
        raise DipgoError(f"{name} must be a number in (0, 1) ({what}), got {value!r}") from err
    if not 0.0 < ratio < 1.0:
        raise DipgoError(f"{name} must be in (0, 1) ({what}), got {value}")
    return ratio


def check_choice(value: str, choices: Sequence[str], name: str) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise DipgoError(f"unknown {name} {value!r}; choose one of {tuple(choices)}")
    return value


def check_at_least(value: int, low: int, name: str) -> int:
    """``value`` if it is an integer of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DipgoError(f"{name} must be an integer >= {low}, got {value!r}")
    return value
