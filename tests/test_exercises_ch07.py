"""Chapter 07's exercises that implement (Wanda's keep-mask, one SparseGPT block): plausible wrong solutions fail
with a hint that names their mistake, correct variants pass, garbage never makes a check raise, the cases cover what
they claim, and the references are the course's algorithms (one block looped gives sparsegpt_prune_weight).

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails; the warm-up formulas need nothing more.)
"""

from __future__ import annotations

import functools
import re
import time

import numpy as np
import pytest
import torch

from course_lib.exercises import ch07, load_solutions
from course_lib.gptq.hessian import fix_dead_columns, inverse_cholesky_upper
from course_lib.prune.sparsegpt import sparsegpt_block, sparsegpt_prune_weight
from course_lib.prune.unstructured import wanda_mask
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch07")


# --- the solutions and the stub ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n_cases", [("wanda_keep_mask", 22), ("sparsegpt_block", 21)])
def test_solution_passes_without_a_hint_and_stub_is_not_attempted(name, n_cases, capsys):
    check = ch07.EXERCISES[name]
    ok, out = run(check, getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out

    def stub(*args):
        raise NotImplementedError

    ok, out = run(check, stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


def test_warm_ups_are_listed_apart():
    assert set(ch07.WARM_UPS) == {"wanda_first", "sparse24_bytes", "kv_group_params"}
    assert set(ch07.EXERCISES) - set(ch07.WARM_UPS) == {"wanda_keep_mask", "sparsegpt_block"}


# --- 4. wanda_keep_mask: wrong solutions ------------------------------------------------------------------------------

def _keep_lowest_pruned(scores, k):
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, scores.argsort(dim=1, stable=True)[:, :k], False)
    return keep


def _rowwise(scores, W, sparsity, nm):
    if nm is None:
        return _keep_lowest_pruned(scores, int(W.shape[1] * sparsity))
    n, m = nm
    return _keep_lowest_pruned(scores.reshape(-1, m), m - n).reshape(W.shape)


def wk_magnitude(W, X, sparsity, nm):
    return _rowwise(W.abs(), W, sparsity, nm)                       # no activations


def wk_squared_norm(W, X, sparsity, nm):
    return _rowwise(W.abs() * (X ** 2).sum(dim=0), W, sparsity, nm)  # forgot the square root


def wk_mean_abs(W, X, sparsity, nm):
    return _rowwise(W.abs() * X.abs().mean(dim=0), W, sparsity, nm)  # AWQ's statistic


def wk_layer_threshold(W, X, sparsity, nm):
    scores = W.abs() * X.norm(dim=0)
    if nm is not None:
        return _rowwise(scores, W, sparsity, nm)
    k = int(scores.numel() * sparsity)                               # one threshold for the whole layer
    thresh = scores.reshape(-1).kthvalue(k).values if k else -1.0
    return scores > thresh


def wk_round(W, X, sparsity, nm):
    scores = W.abs() * X.norm(dim=0)
    if nm is not None:
        return _rowwise(scores, W, sparsity, nm)
    return _keep_lowest_pruned(scores, round(W.shape[1] * sparsity))


def wk_prunes_highest(W, X, sparsity, nm):
    scores = W.abs() * X.norm(dim=0)
    return _rowwise(-scores, W, sparsity, nm)                        # descending order: the largest go


def wk_returns_pruned_mask(W, X, sparsity, nm):
    return ~SOL.wanda_keep_mask(W, X, sparsity, nm)                  # True = pruned


def wk_topk_keeps_first_of_ties(W, X, sparsity, nm):
    scores = W.abs() * X.norm(dim=0)
    if nm is not None:
        n, m = nm
        groups = scores.reshape(-1, m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, groups.argsort(dim=1, descending=True, stable=True)[:, :n], True)
        return keep.reshape(W.shape)
    keep = torch.zeros_like(scores, dtype=torch.bool)                # keep the in - k largest, ties: earlier kept
    n_keep = W.shape[1] - int(W.shape[1] * sparsity)
    keep.scatter_(1, scores.argsort(dim=1, descending=True, stable=True)[:, :n_keep], True)
    return keep


def wk_nm_strided(W, X, sparsity, nm):
    scores = W.abs() * X.norm(dim=0)
    if nm is None:
        return _rowwise(scores, W, sparsity, nm)
    n, m = nm
    out_f, in_f = W.shape
    groups = scores.reshape(out_f, m, in_f // m).transpose(1, 2)     # group g: inputs g, g + in/m, ...
    keep = _keep_lowest_pruned(groups.reshape(-1, m), m - n).reshape(out_f, in_f // m, m)
    return keep.transpose(1, 2).reshape(out_f, in_f)


def wk_nm_prunes_n(W, X, sparsity, nm):
    scores = W.abs() * X.norm(dim=0)
    if nm is None:
        return _rowwise(scores, W, sparsity, nm)
    n, m = nm
    return _keep_lowest_pruned(scores.reshape(-1, m), n).reshape(W.shape)  # prunes N instead of M - N


def wk_nm_ignored(W, X, sparsity, nm):
    return _keep_lowest_pruned(W.abs() * X.norm(dim=0), int(W.shape[1] * sparsity))


def wk_pruned_weights(W, X, sparsity, nm):
    return W * SOL.wanda_keep_mask(W, X, sparsity, nm)              # the pruned weights, not the mask


WANDA_MISTAKES = [
    (wk_magnitude, "magnitude pruning's"),
    (wk_squared_norm, "sum of squares"),
    (wk_mean_abs, "AWQ's statistic"),
    (wk_layer_threshold, "over the whole layer"),
    (wk_round, "rounded down"),
    (wk_prunes_highest, "pruned the highest"),
    (wk_returns_pruned_mask, "True = pruned"),
    (wk_topk_keeps_first_of_ties, "earlier input first"),
    (wk_nm_strided, "not M consecutive"),
    (wk_nm_prunes_n, "pruned N of every M"),
    (wk_nm_ignored, "must hold the pattern"),
]


# --- 5. sparsegpt_block: wrong solutions ------------------------------------------------------------------------------

def _block(W, U, i1, i2, sparsity, nm, *, lazy=True, inner=True, divide=True, sign=-1.0, saliency="obs",
           per_row=False, upfront=False, relative_U=False, prune=True):
    """The block as a learner might write it (float32), one choice swapped."""
    W = W.clone()
    b = i2 - i1
    W1 = W[:, i1:i2].clone()
    U1 = U[:b, :b] if relative_U else U[i1:i2, i1:i2]
    d = torch.diag(U1)

    def score(w, dd):
        return {"obs": (w / dd) ** 2, "magnitude": w.abs(), "hdiag": w ** 2 / dd}[saliency]

    keep = torch.ones_like(W1, dtype=torch.bool)
    if prune and nm is None:
        s = score(W1, d)
        if per_row:
            keep = _keep_lowest_pruned(s, int(b * sparsity))
        else:
            keep.view(-1)[s.reshape(-1).argsort(stable=True)[:int(s.numel() * sparsity)]] = False
    if prune and nm is not None and upfront:
        n, m = nm
        keep = _keep_lowest_pruned(score(W1, d).reshape(-1, m), m - n).reshape(W1.shape)
    errs = torch.zeros_like(W1)
    for j in range(b):
        if prune and nm is not None and not upfront and j % nm[1] == 0:
            n, m = nm
            keep[:, j:j + m] = _keep_lowest_pruned(score(W1[:, j:j + m], d[j:j + m]), m - n)
        w = W1[:, j].clone()
        q = w * keep[:, j]
        err = (w - q) / d[j] if divide else w - q
        if inner:
            W1[:, j:] += sign * torch.outer(err, U1[j, j:])
        W1[:, j] = q
        errs[:, j] = err
    W[:, i1:i2] = W1
    if lazy:
        W[:, i2:] += sign * errs @ U[i1:i2, i2:]
    return W


def _named(name, **kwargs):
    fn = functools.partial(_block, **kwargs)
    fn.__name__ = name
    return fn


BLOCK_MISTAKES = [
    (_named("sb_no_lazy_update", lazy=False), "columns after the block are unchanged"),
    (_named("sb_only_lazy_update", inner=False), "never received the errors"),
    (_named("sb_error_not_divided", divide=False), "divided by the diagonal entry"),
    (_named("sb_update_added", sign=1.0), "wrong sign"),
    (_named("sb_magnitude_saliency", saliency="magnitude"), "chose the mask by |w|"),
    (_named("sb_saliency_over_d", saliency="hdiag"), "divided w^2 by U[j, j]"),
    (_named("sb_same_count_per_row", per_row=True), "same number in every row"),
    (_named("sb_nm_masks_up_front", upfront=True), "when the block starts"),
    (_named("sb_U_not_offset", relative_U=True), "column i1 + i of W"),
    (_named("sb_nothing_pruned", prune=False), "nothing was pruned"),
]


MISTAKES = [(name, wrong, named) for name, mistakes in (("wanda_keep_mask", WANDA_MISTAKES),
                                                          ("sparsegpt_block", BLOCK_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch07.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and out.count("\n") == 1 and "Hint: " in out, out
    assert named in hint_of(out), out


def test_a_non_mask_answer_is_named(capsys):
    ok, out = run(ch07.check_wanda_keep_mask, wk_pruned_weights, capsys)
    assert not ok and "expected a keep-mask: bool (True = kept) or 0/1 values" in out, out


def test_an_unrecognised_mistake_gets_the_general_hint(capsys):
    ok, out = run(ch07.check_wanda_keep_mask, lambda W, X, p, nm: SOL.wanda_keep_mask(W, X, p, nm).roll(1, 1),
                  capsys)
    assert not ok and hint_of(out).startswith("scores = W.abs() * X.norm(dim=0)"), out
    ok, out = run(ch07.check_sparsegpt_block, lambda W, U, i1, i2, p, nm: SOL.sparsegpt_block(W, U, i1, i2, p, nm)
                  + 0.01 * torch.sign(W), capsys)
    assert not ok and hint_of(out).startswith("W1 = W[:, i1:i2], U1 = U[i1:i2, i1:i2]"), out


def test_a_shape_error_is_reported_not_raised(capsys):
    ok, out = run(ch07.check_wanda_keep_mask, lambda W, X, p, nm: SOL.wanda_keep_mask(W, X.T, p, nm), capsys)
    assert not ok and "raised RuntimeError" in out, out


# --- correct variants pass --------------------------------------------------------------------------------------------

def _wk_numpy_loops(W, X, sparsity, nm):
    # explicit loops in numpy, norms as sqrt of sums, a 0/1 int answer
    Wn, Xn = W.numpy().astype(np.float64), X.numpy().astype(np.float64)
    norms = np.sqrt((Xn ** 2).sum(axis=0))
    out = np.ones(W.shape, dtype=np.int64)
    width, k = (W.shape[1], int(W.shape[1] * sparsity)) if nm is None else (nm[1], nm[1] - nm[0])
    for r in range(W.shape[0]):
        for g0 in range(0, W.shape[1], width):
            scores = np.abs(Wn[r, g0:g0 + width]) * norms[g0:g0 + width]
            for j in np.argsort(scores, kind="stable")[:k]:
                out[r, g0 + j] = 0
    return torch.from_numpy(out)


def _wk_course_lib(W, X, sparsity, nm):
    return wanda_mask(W, X.norm(dim=0), sparsity, nm=nm).float()     # a float 0/1 mask is fine


def _sb_float64_no_diagonal(W, U, i1, i2, sparsity, nm):
    # float64 throughout; the in-block update skips column j itself (it becomes q anyway)
    W, U = W.double().clone(), U.double()
    W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
    d = U1.diagonal()
    keep = torch.ones_like(W1, dtype=torch.bool)
    if nm is None:
        s = (W1 / d) ** 2
        keep.view(-1)[s.reshape(-1).argsort(stable=True)[:int(s.numel() * sparsity)]] = False
    errs = torch.zeros_like(W1)
    for j in range(i2 - i1):
        if nm is not None and j % nm[1] == 0:
            n, m = nm
            keep[:, j:j + nm[1]] = _keep_lowest_pruned((W1[:, j:j + m] / d[j:j + m]) ** 2, m - n)
        q = W1[:, j] * keep[:, j]
        errs[:, j] = (W1[:, j] - q) / d[j]
        W1[:, j + 1:] -= torch.outer(errs[:, j], U1[j, j + 1:])
        W1[:, j] = q
    W[:, i1:i2] = W1
    W[:, i2:] -= errs @ U[i1:i2, i2:]
    return W


def _sb_unbatched_in_place(W, U, i1, i2, sparsity, nm):
    # no lazy batching: each column's error goes to every later column of W at once; W changed in place
    keep = None
    if nm is None:
        s = (W[:, i1:i2] / U.diagonal()[i1:i2]) ** 2
        keep = torch.ones_like(s, dtype=torch.bool)
        keep.view(-1)[s.reshape(-1).argsort(stable=True)[:int(s.numel() * sparsity)]] = False
    for j in range(i1, i2):
        if nm is not None and (j - i1) % nm[1] == 0:
            n, m = nm
            g = _keep_lowest_pruned((W[:, j:j + m] / U.diagonal()[j:j + m]) ** 2, m - n)
        kj = keep[:, j - i1] if nm is None else g[:, (j - i1) % nm[1]]
        q = W[:, j] * kj
        err = (W[:, j] - q) / U[j, j]
        W[:, j:] -= torch.outer(err, U[j, j:])
        W[:, j] = q
    return W


def _sb_course_lib_loop(W, U, i1, i2, sparsity, nm):
    return sparsegpt_block(W, U, i1, i2, sparsity, nm=nm)


CORRECT = {"wanda_keep_mask": [SOL.wanda_keep_mask, _wk_numpy_loops, _wk_course_lib],
           "sparsegpt_block": [SOL.sparsegpt_block, _sb_float64_no_diagonal, _sb_unbatched_in_place,
                               _sb_course_lib_loop]}


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in CORRECT.items() for v in vs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch07.EXERCISES[name], variant, capsys)
    assert ok is True and out.startswith(f"[ok] {name}: correct"), out


# --- the cases cover what they claim ----------------------------------------------------------------------------------

def test_wanda_cases_cover_seeds_patterns_and_edges():
    labels, cases = ch07.wanda_keep_mask_cases()
    assert {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))} == {0, 1, 2}
    assert {nm for *_, nm in cases} == {None, (2, 4), (4, 8), (1, 4)}
    assert {p for _, _, p, nm in cases if nm is None} >= {0.0, 0.3, 0.5, 0.7}
    assert any(int(W.shape[1] * p) != round(W.shape[1] * p) for W, _, p, nm in cases if nm is None)
    assert any(bool((X == 0).all(dim=0).any()) for _, X, *_ in cases)                        # dead inputs
    ties = [(W, X, nm) for W, X, _, nm in cases if bool((W.abs() * X.norm(dim=0)).unique().numel() == 1)]
    assert {nm for *_, nm in ties} == {None, (2, 4)}                                          # every score equal
    # Wanda differs from per-row magnitude pruning on every random case
    for (W, X, p, nm), label in zip(cases, labels):
        if label.startswith("seed"):
            assert not torch.equal(ch07.reference_wanda_keep_mask(W, X, p, nm),
                                   ch07.reference_wanda_keep_mask(W, torch.ones_like(X), p, nm))


def test_wanda_random_cases_have_no_near_ties():
    # a learner's norms may differ from the reference's in the last bit: no decision may hinge on that
    for (W, X, p, nm), label in zip(*reversed(ch07.wanda_keep_mask_cases())):
        if not label.startswith("seed"):
            continue
        scores = (W.abs() * X.norm(dim=0)).double()
        groups = scores if nm is None else scores.reshape(-1, nm[1])
        k = int(W.shape[1] * p) if nm is None else nm[1] - nm[0]
        s = groups.sort(dim=1).values
        gap = (s[:, k] - s[:, k - 1]) / s[:, k]
        assert float(gap.min()) > 1e-5, label


@pytest.mark.parametrize("kwargs, _", ch07._WANDA_VARIANTS, ids=[str(k) for k, _ in ch07._WANDA_VARIANTS])
def test_every_diagnosed_wanda_mistake_is_visible_in_some_case(kwargs, _):
    cases = ch07.wanda_keep_mask_cases()[1]
    assert all(torch.equal(ch07._wanda_by_hand(*a), ch07.reference_wanda_keep_mask(*a)) for a in cases)
    assert any(not torch.equal(ch07._wanda_by_hand(*a, **kwargs), ch07.reference_wanda_keep_mask(*a)) for a in cases)


def test_block_cases_cover_positions_patterns_and_edges():
    labels, cases = ch07.sparsegpt_block_cases()
    assert {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))} == {0, 1, 2}
    assert {nm for *_, nm in cases} == {None, (2, 4), (4, 8), (1, 4)}
    kinds = {("first" if i1 == 0 else "") + ("last" if i2 == W.shape[1] else "") or "middle"
             for W, _, i1, i2, *_ in cases}
    assert kinds == {"first", "last", "middle", "firstlast"}
    for W, U, i1, i2, p, nm in cases:
        assert torch.equal(U, U.triu()) and bool((U.diagonal() > 0).all()) and U.shape == (W.shape[1],) * 2
        assert nm is None or (i2 - i1) % nm[1] == 0
    dead = [(W, U) for W, U, *_ in cases if bool((W == 0).all(dim=0).any())]
    assert dead and all(bool((U.diagonal() > 0).all()) for _, U in dead)                      # H fixed, U finite
    assert any(bool((W == 0).all(dim=1).any()) for W, *_ in cases)                            # a row of zeros


def test_block_reference_looped_is_sparsegpt_prune_weight():
    g = torch.Generator().manual_seed(5)
    for nm, sparsity, blocksize in ((None, 0.5, 32), ("2:4", 0.5, 32), (None, 0.3, 48), ("4:8", 0.5, 16)):
        X = torch.randn(400, 96, generator=g) @ (torch.eye(96) + 0.3 * torch.randn(96, 96, generator=g))
        X[:, 7] = 0.0
        W, H = torch.randn(24, 96, generator=g), 2 / 400 * X.T @ X
        expected = sparsegpt_prune_weight(W, H, sparsity, nm=nm, blocksize=blocksize).weight
        Wc, Hc = W.clone(), H.clone()
        fix_dead_columns(Wc, Hc)
        U, _ = inverse_cholesky_upper(Hc, 0.01)
        for i1 in range(0, 96, blocksize):
            Wc = sparsegpt_block(Wc, U, i1, min(i1 + blocksize, 96), sparsity, nm=nm)
        assert torch.equal(Wc, expected), (nm, sparsity)


def test_block_float64_mistake_free_version_is_the_reference():
    # the diagnosis's by-hand version (float64) reproduces the float32 reference: no mask decision is a near-tie
    for args in ch07.sparsegpt_block_cases()[1]:
        ref = ch07.reference_sparsegpt_block(*args)
        by_hand = ch07._block_by_hand(*args)
        assert torch.equal(by_hand == 0, ref == 0)
        assert float((by_hand - ref.double()).abs().max()) < ch07.BLOCK_ATOL / 10


@pytest.mark.parametrize("kwargs, _", ch07._BLOCK_VARIANTS, ids=[str(k) for k, _ in ch07._BLOCK_VARIANTS])
def test_every_diagnosed_block_mistake_is_visible_in_some_case(kwargs, _):
    cases = ch07.sparsegpt_block_cases()[1]
    assert any(not torch.allclose(ch07._block_by_hand(*a, **kwargs), ch07.reference_sparsegpt_block(*a).double(),
                                  atol=10 * ch07.BLOCK_ATOL, rtol=10 * ch07.BLOCK_RTOL) for a in cases)


def test_the_block_leaves_earlier_columns_alone_and_prunes_the_share_asked():
    for W, U, i1, i2, p, nm in ch07.sparsegpt_block_cases()[1]:
        out = ch07.reference_sparsegpt_block(W, U, i1, i2, p, nm)
        assert torch.equal(out[:, :i1], W[:, :i1])
        block = out[:, i1:i2]
        if nm is None:
            assert int((block == 0).sum()) >= int(block.numel() * p)
        else:
            assert bool(((block != 0).reshape(W.shape[0], -1, nm[1]).sum(-1) <= nm[0]).all())


# --- garbage never makes a check raise --------------------------------------------------------------------------------

def _garbage(kind):
    def fn(W, *args):
        return {
            "none": lambda: None,
            "list": lambda: torch.ones_like(W).tolist(),
            "numpy": lambda: np.ones(tuple(W.shape), dtype=bool),
            "scalar": lambda: 1.0,
            "0-d": lambda: torch.tensor(True),
            "transposed": lambda: torch.ones_like(W).T.contiguous(),
            "complex": lambda: torch.ones_like(W, dtype=torch.complex64),
            "nan": lambda: torch.full_like(W, float("nan")),
            "tuple": lambda: (W, W),
        }[kind]()
    return fn


GARBAGE = ["none", "list", "numpy", "scalar", "0-d", "transposed", "complex", "nan", "tuple"]


@pytest.mark.parametrize("name", ["wanda_keep_mask", "sparsegpt_block"])
@pytest.mark.parametrize("kind", GARBAGE)
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch07.EXERCISES[name], _garbage(kind), capsys)
    assert ok is False and out.startswith(f"[x] {name}: for seed 0,"), out


def test_the_learner_cannot_change_the_references_inputs(capsys):
    def mutator(W, U, i1, i2, p, nm):
        out = SOL.sparsegpt_block(W, U, i1, i2, p, nm)
        W.zero_(), U.zero_()
        return out

    assert run(ch07.check_sparsegpt_block, mutator, capsys)[0]


def test_checks_are_fast(capsys):
    for name in ("wanda_keep_mask", "sparsegpt_block"):
        check, solution = ch07.EXERCISES[name], getattr(SOL, name)
        start = time.perf_counter()
        check(solution)
        check(MISTAKES[[n for n, *_ in MISTAKES].index(name)][1])  # a wrong answer runs the diagnosis too
        assert time.perf_counter() - start < 2.0, name
    capsys.readouterr()
