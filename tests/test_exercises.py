"""Every exercise check passes its reference solution and fails the empty stub."""

import importlib
import pkgutil

import pytest

import course_lib.exercises as exercises
from course_lib.exercises import load_solutions

CHAPTERS = [m.name for m in pkgutil.iter_modules(exercises.__path__) if m.name.startswith("ch")]
CASES = [
    (chapter, name)
    for chapter in CHAPTERS
    for name in importlib.import_module(f"course_lib.exercises.{chapter}").EXERCISES
]


def stub(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_has_exercises(chapter):
    """2-4 exercises per chapter, plus at most 4 warm-up formulas listed in the module's WARM_UPS."""
    module = importlib.import_module(f"course_lib.exercises.{chapter}")
    warm_ups = set(getattr(module, "WARM_UPS", ()))
    assert warm_ups <= set(module.EXERCISES) and len(warm_ups) <= 4
    assert 2 <= len(set(module.EXERCISES) - warm_ups) <= 4


@pytest.mark.parametrize("chapter, name", CASES)
def test_solution_passes_and_stub_fails(chapter, name, capsys):
    check = importlib.import_module(f"course_lib.exercises.{chapter}").EXERCISES[name]
    assert check(getattr(load_solutions(chapter), name)) is True
    assert check(stub) is False
    assert "not attempted yet" in capsys.readouterr().out


@pytest.mark.parametrize("chapter, name", CASES)
def test_wrong_answers_fail(chapter, name, capsys):
    check = importlib.import_module(f"course_lib.exercises.{chapter}").EXERCISES[name]
    solution = getattr(load_solutions(chapter), name)
    assert check(lambda *a: solution(*a) * 1.01) is False
    assert check(lambda *a: 1 / 0) is False
    out = capsys.readouterr().out
    assert "[x]" in out and "ZeroDivisionError" in out
