"""Chapter 06's tensor exercises: plausible wrong solutions fail with a hint that names their mistake, and the
check's own optimum (a dynamic programme) equals brute force.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails.)
"""

from __future__ import annotations

import pytest
import torch

from course_lib.exercises import ch06, load_solutions
from exercise_helpers import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SOL = load_solutions("ch06")


@pytest.mark.parametrize("name, n_cases", [("decode_q8_0", 12), ("allocate_exact", 11)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    ok, out = run(ch06.EXERCISES[name], getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out

    def stub(*args):
        raise NotImplementedError

    ok, out = run(ch06.EXERCISES[name], stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out


@pytest.mark.parametrize("wrong, words", [
    (lambda b: b[:, :2].contiguous().view(torch.float16).float() * b[:, 2:].float(), "unsigned"),
    (lambda b: b[:, :2].flip(1).contiguous().view(torch.float16).float() * b[:, 2:].contiguous().view(torch.int8).float(),
     "swapped"),
    (lambda b: b[:, 2:].contiguous().view(torch.int8).float(), "without multiplying"),
    (lambda b: b[:, :2].contiguous().view(torch.float16).float() * b[:, 1:33].contiguous().view(torch.int8).float(),
     "wrong byte"),
    (lambda b: (b[:, :2].contiguous().view(torch.float16) * b[:, 2:].contiguous().view(torch.int8)).float(), None),
])
def test_wrong_q8_0_decoders_fail_with_their_hint(wrong, words, capsys):
    ok, out = run(ch06.check_decode_q8_0, wrong, capsys)
    assert ok is False and out.startswith("[x] decode_q8_0"), out
    if words:
        assert words in out, out


def greedy(errors, costs, budget):
    """Cheapest everywhere, then the best error drop per added cost while it fits: plausible, not exact."""
    L, K = errors.shape
    choice = [0] * L
    used = int(costs[:, 0].sum())
    while True:
        best, move = 0.0, None
        for i in range(L):
            for j in range(K):
                extra = int(costs[i, j] - costs[i, choice[i]])
                gain = float(errors[i, choice[i]] - errors[i, j])
                if extra > 0 and gain > 0 and used + extra <= budget and gain / extra > best:
                    best, move = gain / extra, (i, j)
        if move is None:
            return torch.tensor(choice)
        used += int(costs[move[0], move[1]] - costs[move[0], choice[move[0]]])
        choice[move[0]] = move[1]


def over_budget(errors, costs, budget):
    return errors.argmin(dim=1)                                  # the best option everywhere, budget ignored


@pytest.mark.parametrize("wrong, words", [(greedy, "greedy"), (over_budget, "costs more than the budget"),
                                          (lambda e, c, b: torch.zeros(e.shape[0]), "LongTensor")])
def test_wrong_allocators_fail_with_their_hint(wrong, words, capsys):
    ok, out = run(ch06.check_allocate_exact, wrong, capsys)
    assert ok is False and words in out, out


def test_the_checks_optimum_is_brute_force():
    small = [c for c in ch06.allocate_cases()[1] if c[0].shape[1] ** c[0].shape[0] <= 5000]
    assert len(small) == 8
    for errors, costs, budget in small:
        assert ch06.best_objective(errors, costs, budget) == pytest.approx(ch06.brute_objective(errors, costs, budget))


def test_q8_0_cases_include_the_edges():
    labels, cases = ch06.decode_q8_0_cases()
    assert any("-128" in label for label in labels) and any("negative scales" in label for label in labels)
    expected = ch06.reference_decode_q8_0(cases[-2][0])
    assert (expected[:, :4] < 0).all()                          # the -128 codes decode negative
