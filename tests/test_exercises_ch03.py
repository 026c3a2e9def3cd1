"""Chapter 03's GPTQ exercises: plausible wrong solutions fail with a hint that names their mistake, correct
variants of the solutions pass, the cases cover shapes, seeds and edge cases, and garbage never makes a check raise.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails.)
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from course_lib.exercises import ch03, load_solutions
from course_lib.gptq import gptq_quantize_weight, inverse_cholesky_upper
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch03")


@pytest.mark.parametrize("name, n_cases", [("damped_inverse_cholesky", 17), ("gptq_layer", 16)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    check = ch03.EXERCISES[name]
    ok, out = run(check, getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out

    def stub(*args):
        raise NotImplementedError

    ok, out = run(check, stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


def test_warm_ups_are_the_four_formulas():
    assert set(ch03.WARM_UPS) == {"obs_update_2d", "hessian_entry", "damp_value", "gptq_bits_per_weight"}
    assert set(ch03.EXERCISES) - set(ch03.WARM_UPS) == {"damped_inverse_cholesky", "gptq_layer"}


# --- 1. damped_inverse_cholesky: wrong solutions ----------------------------------------------------------------------

def _damped(H, percdamp):
    return H + percdamp * torch.diag(H).mean() * torch.eye(H.shape[0])


def chol_lower(H, percdamp):
    return torch.linalg.cholesky(torch.linalg.inv(_damped(H, percdamp)))            # the lower factor


def chol_of_H(H, percdamp):
    return torch.linalg.cholesky(_damped(H, percdamp), upper=True)                 # no inverse


def chol_inverse_of_lower(H, percdamp):
    return torch.linalg.inv(torch.linalg.cholesky(_damped(H, percdamp))).T         # U U^T = H^-1


def chol_no_damping(H, percdamp):
    return torch.linalg.cholesky(torch.linalg.inv(H), upper=True)


def chol_damp_absolute(H, percdamp):
    return torch.linalg.cholesky(torch.linalg.inv(H + percdamp * torch.eye(H.shape[0])), upper=True)


def chol_damp_trace(H, percdamp):
    return torch.linalg.cholesky(torch.linalg.inv(H + percdamp * torch.trace(H) * torch.eye(H.shape[0])), upper=True)


def chol_damp_max(H, percdamp):
    return torch.linalg.cholesky(torch.linalg.inv(H + percdamp * torch.diag(H).max() * torch.eye(H.shape[0])),
                                 upper=True)


def chol_damp_every_entry(H, percdamp):
    return torch.linalg.cholesky(torch.linalg.inv(H + percdamp * torch.diag(H).mean()), upper=True)


def chol_inverse_itself(H, percdamp):
    return torch.linalg.inv(_damped(H, percdamp))


def chol_triu_of_inverse(H, percdamp):
    return torch.triu(torch.linalg.inv(_damped(H, percdamp)))


def chol_negative_diagonal(H, percdamp):
    return -SOL.damped_inverse_cholesky(H, percdamp)                                # U^T U is still H^-1


CHOL_MISTAKES = [
    (chol_lower, "lower-triangular"),
    (chol_of_H, "not its inverse"),
    (chol_inverse_of_lower, "U @ U.T = H^-1"),
    (chol_no_damping, "didn't dampen"),
    (chol_damp_absolute, "percdamp itself"),
    (chol_damp_trace, "sum (trace)"),
    (chol_damp_max, "largest diagonal entry"),
    (chol_damp_every_entry, "every entry"),
    (chol_inverse_itself, "H^-1 itself"),
    (chol_triu_of_inverse, "upper triangle of H^-1"),
    (chol_negative_diagonal, "positive diagonal"),
]


# --- 2. gptq_layer: wrong solutions -----------------------------------------------------------------------------------

def _gptq(W, H, bits, group_size, act_order, **kw):
    return ch03._gptq_by_hand(W, H, bits, group_size, act_order, **kw)


def _wrong(**kw):
    def fn(W, H, bits, group_size, act_order):
        return _gptq(W, H, bits, group_size, act_order, **kw)
    fn.__name__ = "gptq_" + "_".join(f"{k}_{v}" for k, v in kw.items())
    return fn


def gptq_rtn(W, H, bits, group_size, act_order):
    # a learner who rounds each group to GPTQ's grid and stops there
    qmax = 2 ** (bits - 1) - 1
    blocks = W.reshape(W.shape[0], -1, group_size)
    s = blocks.abs().amax(-1, keepdim=True) / (qmax + 0.5)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (s * torch.clamp(torch.round(blocks / s), -qmax - 1, qmax)).reshape(W.shape)


def _with_factor(factor):
    """The solution's loop with U replaced by factor(Hd) (Hd the dampened, permuted H)."""
    def fn(W, H, bits, group_size, act_order):
        W, H = W.clone(), H.clone()
        dead = torch.diag(H) == 0
        H[dead, dead], W[:, dead] = 1.0, 0.0
        perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(W.shape[1])
        W, H = W[:, perm], H[perm][:, perm]
        U = factor(H + 0.01 * torch.diag(H).mean() * torch.eye(H.shape[0]))
        qmax = 2 ** (bits - 1) - 1
        Q = torch.zeros_like(W)
        for j in range(W.shape[1]):
            if j % group_size == 0:
                s = W[:, j:j + group_size].abs().amax(1) / (qmax + 0.5)
                s = torch.where(s > 0, s, torch.ones_like(s))
            w = W[:, j]
            Q[:, j] = s * torch.clamp(torch.round(w / s), -qmax - 1, qmax)
            err = (w - Q[:, j]) / U[j, j]
            W[:, j:] -= torch.outer(err, U[j, j:])
        return Q[:, torch.argsort(perm)]
    return fn


# the lower factor of H^-1 where the upper one belongs: row j of L is zero right of the diagonal, nothing is spread
gptq_lower_factor_rows = _with_factor(lambda Hd: torch.linalg.cholesky(torch.linalg.inv(Hd)))
gptq_lower_factor_rows.__name__ = "gptq_lower_factor_rows"
gptq_uut_factor = _with_factor(lambda Hd: torch.linalg.inv(torch.linalg.cholesky(Hd)).T)
gptq_uut_factor.__name__ = "gptq_uut_factor"
gptq_factor_of_H = _with_factor(lambda Hd: torch.linalg.cholesky(Hd, upper=True))
gptq_factor_of_H.__name__ = "gptq_factor_of_H"


def gptq_zero_scale_nan(W, H, bits, group_size, act_order):
    # no guard for a scale of 0: a row of zeros gives 0 / 0
    W, H = W.clone(), H.clone()
    U = SOL.damped_inverse_cholesky(H, 0.01)
    qmax = 2 ** (bits - 1) - 1
    Q = torch.zeros_like(W)
    if act_order:
        return SOL.gptq_layer(W, H, bits, group_size, act_order)
    for j in range(W.shape[1]):
        if j % group_size == 0:
            s = W[:, j:j + group_size].abs().amax(1) / (qmax + 0.5)
        w = W[:, j]
        Q[:, j] = s * torch.clamp(torch.round(w / s), -qmax - 1, qmax)
        W[:, j:] -= torch.outer((w - Q[:, j]) / U[j, j], U[j, j:])
    return Q


GPTQ_MISTAKES = [
    (gptq_rtn, "plain rounding (RTN)"),
    (_wrong(update="none"), "plain rounding (RTN)"),
    (gptq_lower_factor_rows, "plain rounding (RTN)"),
    (_wrong(update="seed"), "seed 003's update"),
    (_wrong(update="nodiv"), "didn't divide the error by U[j, j]"),
    (_wrong(update="hinv"), "rows of the original H^-1"),
    (_wrong(update="uut"), "U U^T = H^-1"),
    (gptq_uut_factor, "U U^T = H^-1"),
    (_wrong(update="cholH"), "factor of H itself"),
    (gptq_factor_of_H, "factor of H itself"),
    (_wrong(update="group_only"), "only over the rest of its group"),
    (_wrong(scales="static"), "from the original weights"),
    (_wrong(scales="restricted"), "restricted one"),
    (_wrong(clamp=False), "didn't clamp"),
    (_wrong(dead=False), "dead input"),
    (_wrong(damp=False), "didn't dampen"),
    (_wrong(order="natural"), "act_order=True was ignored"),
    (_wrong(order="asc"), "increasing diag(H)"),
    (_wrong(unpermute=False), "processing order"),
    (_wrong(permute_H=False), "but not H"),
    (gptq_zero_scale_nan, "0 / 0"),
]


MISTAKES = [(name, wrong, named) for name, mistakes in (("damped_inverse_cholesky", CHOL_MISTAKES),
                                                          ("gptq_layer", GPTQ_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch03.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and "Hint: " in out
    assert named in hint_of(out), out


def test_singular_H_without_dampening_gets_the_dampening_hint(capsys):
    def no_damping_cholesky(W, H, bits, group_size, act_order):  # fails on the dead input (H singular)
        torch.linalg.cholesky(H)
        return SOL.gptq_layer(W, H, bits, group_size, act_order)

    ok, out = run(ch03.check_gptq_layer, no_damping_cholesky, capsys)
    assert not ok and "edge case: a dead input" in out and "raised" in out and "only dampening makes it" in out, out

    def chol_plain(H, percdamp):  # no dampening where an input is dead: H has no inverse
        if bool((torch.diag(H) == 0).any()):
            return torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
        return SOL.damped_inverse_cholesky(H, percdamp)

    ok, out = run(ch03.check_damped_inverse_cholesky, chol_plain, capsys)
    assert not ok and "edge case: a dead input" in out and "only dampening makes it" in out, out


# --- correct variants pass ------------------------------------------------------------------------------------------

def _chol_float64(H, percdamp):
    H = H.double()
    Hd = H + percdamp * torch.diag(H).mean() * torch.eye(len(H), dtype=H.dtype)
    return torch.linalg.cholesky(torch.linalg.inv(Hd), upper=True)


def _chol_explicit_inverse(H, percdamp):
    return torch.linalg.cholesky(torch.linalg.inv(_damped(H, percdamp)), upper=True)


def _chol_by_elimination(H, percdamp):
    # GPTQ's walk: row j of U is row j of the current H^-1 over sqrt of its diagonal; then eliminate j
    Hinv = torch.linalg.inv(_damped(H, percdamp).double())
    U = torch.zeros_like(Hinv)
    for j in range(len(Hinv)):
        U[j, j:] = Hinv[j, j:] / Hinv[j, j].sqrt()
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return U


def _chol_lower_transposed(H, percdamp):
    return torch.linalg.cholesky(torch.linalg.inv(_damped(H, percdamp))).T  # L^T of H^-1 = L L^T is U


def _chol_course_lib(H, percdamp):
    return inverse_cholesky_upper(H, percdamp)[0]


def _gptq_solution_in(dtype):
    def fn(W, H, bits, group_size, act_order):
        W, H = W.clone().to(dtype), H.clone().to(dtype)
        dead = torch.diag(H) == 0
        H[dead, dead], W[:, dead] = 1.0, 0.0
        perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(W.shape[1])
        W, H = W[:, perm], H[perm][:, perm]
        Hinv = torch.linalg.inv(H + 0.01 * torch.diag(H).mean() * torch.eye(len(H), dtype=dtype))
        U = torch.linalg.cholesky(Hinv, upper=True)
        qmax = 2 ** (bits - 1) - 1
        Q = torch.zeros_like(W)
        for j in range(W.shape[1]):
            if j % group_size == 0:
                s = 2 * W[:, j:j + group_size].abs().amax(1) / (2 ** bits - 1)  # the same grid, written as in the paper
                s[s == 0] = 1.0
            q = s * torch.clamp(torch.round(W[:, j] / s), -qmax - 1, qmax)
            err = (W[:, j] - q) / U[j, j]
            W[:, j + 1:] -= err[:, None] @ U[j:j + 1, j + 1:]  # only the later columns; Q kept apart
            Q[:, j] = q
        return Q[:, torch.argsort(perm)]
    return fn


def _gptq_explicit_elimination(W, H, bits, group_size, act_order):
    # the walk of section 3 (H^-1 updated by Gaussian elimination, no Cholesky), in float64
    W, H = W.clone().double(), H.clone().double()
    dead = torch.diag(H) == 0
    H[dead, dead], W[:, dead] = 1.0, 0.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(W.shape[1])
    W, H = W[:, perm], H[perm][:, perm]
    Hinv = torch.linalg.inv(H + 0.01 * torch.diag(H).mean() * torch.eye(len(H), dtype=H.dtype))
    qmax = 2 ** (bits - 1) - 1
    Q = torch.zeros_like(W)
    for j in range(W.shape[1]):
        if j % group_size == 0:
            s = W[:, j:j + group_size].abs().amax(1) / (qmax + 0.5)
            s = torch.where(s > 0, s, torch.ones_like(s))
        Q[:, j] = s * torch.clamp(torch.round(W[:, j] / s), -qmax - 1, qmax)
        W[:, j + 1:] -= torch.outer((W[:, j] - Q[:, j]) / Hinv[j, j], Hinv[j, j + 1:])
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return Q[:, torch.argsort(perm)]


def _gptq_lazy_blocks(W, H, bits, group_size, act_order):
    # course_lib's default (lazy batches of 128 columns): the same arithmetic in another order
    return gptq_quantize_weight(W, H, bits, group_size=group_size, act_order=act_order).qweight_float


CORRECT = {"damped_inverse_cholesky": [SOL.damped_inverse_cholesky, _chol_float64, _chol_explicit_inverse,
                                       _chol_by_elimination, _chol_lower_transposed, _chol_course_lib],
           "gptq_layer": [SOL.gptq_layer, _gptq_solution_in(torch.float64), _gptq_solution_in(torch.float32),
                          _gptq_explicit_elimination, _gptq_lazy_blocks]}


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in CORRECT.items() for v in vs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch03.EXERCISES[name], variant, capsys)
    assert ok is True and out.startswith(f"[ok] {name}: correct"), out


def test_the_other_orders_of_the_arithmetic_stay_well_inside_the_cholesky_tolerance():
    worst = 0.0
    for H, p in ch03.damped_inverse_cholesky_cases()[1]:
        ref = ch03._chol_reference(H, p).double()
        for variant in CORRECT["damped_inverse_cholesky"][1:]:
            err = (variant(H, p).double() - ref).abs() / (ch03.CHOL_ATOL + ch03.CHOL_RTOL * ref.abs())
            worst = max(worst, float(err.max()))
    assert worst < 0.2, worst


def test_the_float_variants_of_gptq_differ_in_at_most_one_row_of_a_case():
    # the row allowance is for ties tipped by float rounding: it is used, but rarely
    rows_used = []
    for args in ch03.gptq_layer_cases()[1]:
        expected = ch03._gptq_reference(*args)
        for variant in CORRECT["gptq_layer"]:
            rows_used.append(int(ch03._rows_off(variant(*args), expected)[0].sum()))
    assert max(rows_used) <= 1 and sum(rows_used) <= len(rows_used) // 10, rows_used


def test_the_solution_is_on_the_reference_grid_points_in_every_row():
    for args in ch03.gptq_layer_cases()[1]:
        assert int(ch03._rows_off(SOL.gptq_layer(*args), ch03._gptq_reference(*args))[0].sum()) == 0


def test_walking_the_columns_of_the_lower_factor_is_correct():
    # L = U^T: column j of the lower factor of H^-1 is row j of the upper one, so this is no mistake
    ok = ch03.check_gptq_layer(_with_factor(lambda Hd: torch.linalg.cholesky(torch.linalg.inv(Hd)).T))
    assert ok is True


# --- the cases ------------------------------------------------------------------------------------------------------

def test_cholesky_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch03.damped_inverse_cholesky_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2} and {H.shape[0] for H, _ in cases} >= {1, 8, 16, 32, 48, 64, 128}
    assert {p for _, p in cases} == {0.01, 0.1}
    ranks = [int(torch.linalg.matrix_rank(H.double())) for H, _ in cases]
    assert any(r < H.shape[0] for r, (H, _) in zip(ranks, cases))                 # singular without dampening
    assert any(bool((torch.diag(H) == 0).any()) for H, _ in cases)               # a dead input
    assert any(torch.equal(H, torch.diag(torch.diag(H))) and H.shape[0] > 1 for H, _ in cases)
    for H, _ in cases:
        assert torch.equal(H, H.T) and (abs(float(torch.diag(H).mean()) - 4) < 1e-4 or H.shape[0] == 1)


def test_gptq_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch03.gptq_layer_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2}
    assert {b for *_, b, _, _ in cases} == {2, 3, 4}
    assert {ao for *_, ao in cases} == {True, False}
    assert any(g == W.shape[1] for W, _, _, g, _ in cases) and any(g < W.shape[1] for W, _, _, g, _ in cases)
    assert any(g == W.shape[1] and ao for W, _, _, g, ao in cases)
    assert any(bool((torch.diag(H) == 0).any()) and ao for _, H, _, _, ao in cases)
    assert any(bool((W == 0).all(1).any()) for W, *_ in cases)
    for W, H, bits, g, ao in cases:
        assert W.shape[1] % g == 0 and H.shape == (W.shape[1], W.shape[1])


def test_clamping_matters_in_the_correlated_case():
    labels, cases = ch03.gptq_layer_cases()
    i = next(i for i, label in enumerate(labels) if "strongly correlated" in label)
    unclamped = ch03._gptq_by_hand(*cases[i], clamp=False)
    rows = ch03._rows_off(unclamped, ch03._gptq_reference(*cases[i]))[0]
    assert int(rows.sum()) > cases[i][0].shape[0] // 4


@pytest.mark.parametrize("kwargs, _", ch03._gptq_variants(True), ids=[str(k) for k, _ in ch03._gptq_variants(True)])
def test_every_diagnosed_gptq_mistake_is_visible_in_some_case(kwargs, _):
    visible = []
    for args in ch03.gptq_layer_cases()[1]:
        if not args[4] and ("order" in kwargs or "unpermute" in kwargs or "permute_H" in kwargs):
            continue
        mistake = ch03._gptq_by_hand(*args, **kwargs)
        visible.append(mistake is not None and not ch03._same_q(mistake, ch03._gptq_reference(*args)))
    assert any(visible)


@pytest.mark.parametrize("kwargs, _", ch03._chol_variants(), ids=[str(k) for k, _ in ch03._chol_variants()])
def test_every_diagnosed_cholesky_mistake_is_visible_in_the_first_case(kwargs, _):
    H, p = ch03.damped_inverse_cholesky_cases()[1][0]
    mistake = ch03._chol_by_hand(H, p, **kwargs)
    assert not torch.allclose(mistake, ch03._chol_reference(H, p).double(), atol=10 * ch03.CHOL_ATOL,
                              rtol=10 * ch03.CHOL_RTOL)


def test_the_reference_factor_is_the_definition():
    for H, p in ch03.damped_inverse_cholesky_cases()[1]:
        U = ch03._chol_reference(H, p).double()
        Hd = H.double() + p * torch.diag(H.double()).mean() * torch.eye(len(H), dtype=torch.float64)
        assert torch.equal(U, torch.triu(U)) and bool((torch.diag(U) > 0).all())
        assert torch.allclose(U.T @ U @ Hd, torch.eye(len(H), dtype=torch.float64), atol=1e-3)


# --- garbage never makes a check raise --------------------------------------------------------------------------------

def _garbage(kind):
    def fn(*args):
        d = args[0].shape
        return {
            "list": lambda: torch.zeros(d).tolist(),
            "none": lambda: None,
            "numpy": lambda: np.zeros(d, dtype=np.float32),
            "float": lambda: 0.5,
            "bool tensor": lambda: torch.zeros(d, dtype=torch.bool),
            "complex tensor": lambda: torch.zeros(d, dtype=torch.complex64),
            "nan": lambda: torch.full(d, float("nan")),
            "inf": lambda: torch.full(d, float("inf")),
            "0-d tensor": lambda: torch.tensor(1.0),
            "transposed": lambda: torch.zeros(d[::-1]) if d[0] != d[-1] else torch.zeros(d[0] + 1, d[0]),
        }[kind]()
    return fn


GARBAGE = ["list", "none", "numpy", "float", "bool tensor", "complex tensor", "nan", "inf", "0-d tensor", "transposed"]


@pytest.mark.parametrize("name", ["damped_inverse_cholesky", "gptq_layer"])
@pytest.mark.parametrize("kind", GARBAGE)
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch03.EXERCISES[name], _garbage(kind), capsys)
    assert ok is False and out.startswith(f"[x] {name}: for seed 0,"), out


def test_checks_are_fast(capsys):
    for name in ("damped_inverse_cholesky", "gptq_layer"):
        check = ch03.EXERCISES[name]
        start = time.perf_counter()
        check(getattr(SOL, name))
        check(lambda *a, name=name: getattr(SOL, name)(*a) * 1.01)  # a wrong answer runs the diagnosis too
        assert time.perf_counter() - start < 2.0, name
    capsys.readouterr()
