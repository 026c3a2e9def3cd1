"""Helpers of the exercise-check tests (tests/test_exercises_chNN.py): run a check and read what it printed."""

from __future__ import annotations


def run(check, fn, capsys) -> tuple[bool, str]:
    """check(fn)'s verdict and its printed lines."""
    ok = check(fn)
    return ok, capsys.readouterr().out


def hint_of(out: str) -> str:
    """The hint of a failed check's line."""
    return out.split("Hint: ", 1)[1]
