"""The notebooks' exercise cells are wired right: with the reference solutions filled in
(``course_lib.exercises.solved``), every check in every notebook prints "correct"; and the tool itself."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from course_lib.core.env import REPO_ROOT
from course_lib.exercises import load_solutions
from course_lib.exercises.solved import chapter_of, solve_source, solved_notebook, stubs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_stub_detection():
    src = "def f(x):\n    raise NotImplementedError  # your code here\n\ndef g(x):\n    return x\n\npassed = check(f)\n"
    assert [n.name for n in stubs(src)] == ["f"]
    assert stubs("def f(x):\n    raise ValueError\n") == [] and stubs("not python(") == []


def test_solve_source_puts_the_solution_in_place():
    sol = load_solutions("ch13")
    src = "def admit(waiting, free_blocks, block_size, token_budget, max_seqs, running):\n    raise NotImplementedError\n\npassed = 1\n"
    out, names = solve_source(src, sol)
    assert names == ["admit"] and "raise NotImplementedError" not in out and out.rstrip().endswith("passed = 1")
    assert "from course_lib.serving.blocks import ROOT, block_hash" in out  # the solutions file's own imports
    with pytest.raises(LookupError, match="no function 'nope'"):
        solve_source("def nope():\n    raise NotImplementedError\n", sol)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_exercise_check_passes_with_the_solution(path):
    """Run the notebook's exercise import cell and its solved exercise cells (nothing else): each prints correct."""
    original = json.loads(path.read_text())["cells"]
    chapter = chapter_of(original)
    if chapter is None:
        pytest.skip(f"{path.name} has no exercises")
    nb, names = solved_notebook(path)
    assert names, f"{path.name} imports the checks of {chapter} but has no exercise stub"
    assert set(names) <= set(__import__(f"course_lib.exercises.{chapter}", fromlist=["x"]).EXERCISES)
    namespace: dict = {}
    out = io.StringIO()
    for cell in nb["cells"]:
        src = "".join(cell["source"]) if cell["cell_type"] == "code" else ""
        if f"from course_lib.exercises import {chapter}" in src or any(f"def {n}(" in src for n in names):
            with contextlib.redirect_stdout(out):
                exec(compile(src, f"{path.name} cell", "exec"), namespace)
    printed = out.getvalue()
    assert printed.count("[ok]") == len(names), printed
    assert "[x]" not in printed and "not attempted" not in printed
