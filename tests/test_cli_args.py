"""The command line checks every number up front: each subcommand's numeric options, found by introspecting the
parser (so a new option is covered as soon as it gets a range type), are given 0, -1 and an absurd value;
each one out of range is refused by argparse, before any model is loaded, with exit status 2 and one line
naming the option. A bug is reported as an internal error (exit status 1), never as a user error."""

from __future__ import annotations

import argparse

import pytest

from dipgo import cli
from dipgo.argtypes import Number
from dipgo.cli import build_parser, main
from dipgo.errors import DipgoError

PROBES = ("0", "-1", "1e12")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _required(parser: argparse.ArgumentParser) -> list[str]:
    """A value for each positional argument the subcommand needs before its options are parsed (a model name
    or a file; argparse refuses the bad option before anything is loaded or read)."""
    return ["mnist-sd" for a in parser._actions if not a.option_strings and a.nargs not in ("*", "?")]


def _outside(number: Number, text: str) -> bool:
    """Whether ``text`` is out of ``number``'s range, worked out from its bounds (not by calling it)."""
    try:
        value = number.kind(text)
    except ValueError:
        return True  # "1e12" is not an integer at all
    low = value <= number.low if number.low_open else value < number.low
    high = value >= number.high if number.high_open else value > number.high
    return low or high


def _cases() -> list[tuple[str, list[str], str]]:
    cases = []
    for name, parser in _subcommands().items():
        for action in parser._actions:
            if isinstance(action.type, Number):
                cases += [(name, [name, *_required(parser), action.option_strings[0], probe], action.option_strings[0])
                          for probe in PROBES if _outside(action.type, probe)]
    return cases


CASES = _cases()


def test_every_numeric_option_has_a_range():
    numeric = []
    for name, parser in _subcommands().items():
        for action in parser._actions:
            assert action.type not in (int, float), f"dipgo {name} {action.option_strings}: use a dipgo.argtypes type"
            if isinstance(action.type, Number):
                numeric.append(f"{name} {action.option_strings[0]}")
    assert {"sample --steps", "info --runs", "prune --ratio", "eval --n", "bench --budgets", "layers --ema",
            "depth --ramp", "prune --seed", "prune --evaluations", "prune --held-out"} <= set(numeric)
    assert len(CASES) > 2 * len(numeric)  # every option is probed at least twice out of range


@pytest.mark.parametrize("command,argv,option", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_out_of_range_numbers_are_refused_up_front(monkeypatch, capsys, command, argv, option):
    def never(*_a, **_k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("dipgo.zoo.load", never)
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"dipgo {command}: error: argument {option}") and "must be" in lines[0], lines


@pytest.mark.parametrize("argv", [
    ["sample", "mnist-dit", "--steps", "0"], ["info", "mnist-sd", "--runs", "0"],  # both ended in a traceback
    ["prune", "mnist-sd", "--ratio", "0.5,,0.6"], ["eval", "mnist-sd", "--guidance", "nan"],
    ["bench", "--bases", "20,x"], ["sample", "mnist-dit", "--seed", "4294967296"]])
def test_values_that_used_to_crash_are_refused(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error: argument" in err and "Traceback" not in err


def test_ranges_accept_their_bounds():
    from dipgo import argtypes as t

    assert t.STEPS("1") == 1 and t.STEPS("1000") == 1000 and t.SEED("0") == 0 and t.SEED(str(2**32 - 1)) == 2**32 - 1
    assert t.RATIOS("0.4,0.6") == [0.4, 0.6] and t.SHARE("0") == 0.0 and t.RAMP("1") == 1.0
    assert t.BUDGETS("2,3,4.4") == [2.0, 3.0, 4.4] and t.BASES("50, 20") == [50, 20]
    assert build_parser().parse_args(["prune", "m"]).ratio == [0.8]  # the default goes through the type too


def _boom(error: BaseException):
    def command(args):
        raise error

    return command


def test_a_bug_is_an_internal_error_not_a_user_error(monkeypatch, capsys):
    monkeypatch.delenv("DIPGO_DEBUG", raising=False)
    for error, said in ((RuntimeError("boom\nsecond line"), "RuntimeError: boom; second line"),
                        (KeyError("missing"), "KeyError: 'missing'")):  # a KeyError is a bug, not a user error
        monkeypatch.setattr(cli, "cmd_show", _boom(error))
        assert main(["show", "s.json"]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[0] == f"dipgo: internal error: {said}"
        assert len(lines) == 2 and "report it" in lines[1] and "DIPGO_DEBUG=1" in lines[1]
    monkeypatch.setenv("DIPGO_DEBUG", "1")
    assert main(["show", "s.json"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "internal error: KeyError" in err


def test_a_user_error_is_one_line_with_status_2(monkeypatch, capsys):
    monkeypatch.setattr(cli, "cmd_show", _boom(DipgoError("schedule does not fit this pipeline:\n  - scheduler: x")))
    assert main(["show", "s.json"]) == 2
    assert capsys.readouterr().err == "dipgo show: error: schedule does not fit this pipeline: scheduler: x\n"
