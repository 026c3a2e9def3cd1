"""Checks for chapter 03: four warm-up formulas, then two exercises that implement part of GPTQ on tensors.

Warm-ups (formulas on a few numbers): the OBS update on two weights, a Hessian entry, dampening, GPTQ bits per weight.

Implementing:

1. ``check_damped_inverse_cholesky``: U, the upper Cholesky factor of the dampened inverse Hessian,
   (H + lambda I)^-1 = U^T U with lambda = percdamp * mean(diag H). Compared with
   ``course_lib.gptq.inverse_cholesky_upper`` within a stated tolerance.
2. ``check_gptq_layer``: GPTQ for one layer without lazy blocks: dead inputs, dampening, the factor U, act-order,
   groups whose scale is taken when their first column comes up, and the column walk with error feedback.
   Compared with ``course_lib.gptq.gptq_quantize_weight(..., blocksize=1)`` grid point by grid point.

Both run on random Hessians 2/n X^T X of correlated, unevenly scaled inputs (fixed seeds, several shapes) and on
edge cases (a dead input, fewer tokens than inputs, independent inputs, a row of zero weights, strongly correlated
inputs). After a wrong attempt, a diagnosis recomputes the usual mistakes (a lower factor, the factor of H instead
of H^-1, no dampening, seed 003's update with H, no division by U_jj, act-order not undone, ...) and names the one
that matches.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..gptq import gptq_quantize_weight, inverse_cholesky_upper
from . import _tensor_mismatch, check_against, check_cases, check_tensor_cases

# --- warm-ups ---------------------------------------------------------------------------------------------------------


def check_obs_update_2d(fn) -> bool:
    """fn(w0, w1, h00, h01, h11, step) -> the new w1 after w0 is rounded to the nearest multiple of `step`
    and w1 is updated by OBS for the loss 1/2 d^T H d, H = [[h00, h01], [h01, h11]]."""
    cases = [((0.3, 1.0, 2.0, 1.0, 2.0, 1.0), 1.15), ((0.7, -0.5, 1.0, -0.5, 4.0, 0.5), -0.525),
             ((1.26, 2.0, 3.0, 0.9, 1.5, 0.25), 2.006), ((-0.4, 0.8, 1.0, 0.0, 1.0, 1.0), 0.8)]
    return check_cases("obs_update_2d", fn, cases,
                       hint="delta = -(w0 - q0) / [H^-1]_00 * H^-1[:, 0]; for 2x2, H^-1[1,0] / H^-1[0,0] = -h01 / h11.")


def check_hessian_entry(fn) -> bool:
    """fn(X, i, j) -> H[i][j] of H = 2/n X^T X, X a list of n token vectors (each a list of in_features floats)."""
    X1 = [[1.0, 2.0], [3.0, -1.0]]
    X2 = [[0.5, 0.0, 1.0], [1.0, 2.0, -2.0], [0.0, 1.0, 1.0], [2.0, 0.5, 0.0]]
    cases = [((X1, 0, 1), -1.0), ((X1, 0, 0), 10.0), ((X2, 2, 2), 3.0), ((X2, 0, 2), -0.75), ((X2, 1, 0), 1.5)]
    return check_cases("hessian_entry", fn, cases,
                       hint="H[i][j] = 2/n * sum over tokens t of x_t[i] * x_t[j]; n is the number of tokens.")


def check_damp_value(fn) -> bool:
    """fn(diag, percdamp) -> lambda, the value GPTQ adds to every diagonal entry of H: percdamp * mean(diag)."""
    cases = [(([1.0, 2.0, 3.0], 0.01), 0.02), (([4.0, 0.0, 0.5, 3.5], 0.1), 0.2), (([250.0], 1.0), 250.0)]
    return check_cases("damp_value", fn, cases, hint="lambda = percdamp * (sum of the diagonal / its length).")


def check_gptq_bits_per_weight(fn) -> bool:
    """fn(bits, group_size, out_features) -> bits per weight of a GPTQ checkpoint layer: the packed codes, an fp16
    scale and a packed `bits`-bit zero point per group of each output row, and an int32 g_idx per input column."""
    cases = [((4, 128, 256), 4 + 16 / 128 + 4 / 128 + 32 / 256), ((4, 128, 4096), 4 + 20 / 128 + 32 / 4096),
             ((8, 32, 768), 8 + 24 / 32 + 32 / 768), ((2, 64, 1024), 2 + 18 / 64 + 32 / 1024)]
    return check_cases("gptq_bits_per_weight", fn, cases,
                       hint="per weight: bits for the code, (16 + bits) / group_size for scale and zero point, "
                            "32 / out_features for g_idx (one int32 per input column, shared by the out_features rows).")


# --- inputs -----------------------------------------------------------------------------------------------------------


def random_hessian(d: int, n: int, gen: torch.Generator, *, corr: float = 0.5, spread: float = 1.0,
                   dead: tuple[int, ...] = ()) -> torch.Tensor:
    """H = 2/n X^T X (float32, d x d) of n tokens whose d inputs are correlated (X = Z (I + corr M) with Z, M
    standard normal, M / sqrt(d)) and unevenly scaled (input i times exp(spread * N(0, 1))); the inputs in `dead`
    are always 0. Scaled so that mean(diag H) = 4 (so that the entries of U are of order 1, and
    percdamp * mean(diag H) is not percdamp itself)."""
    Z = torch.randn(n, d, generator=gen)
    M = torch.eye(d) + corr * torch.randn(d, d, generator=gen) / math.sqrt(d)
    X = (Z @ M) * torch.exp(spread * torch.randn(d, generator=gen))
    X[:, list(dead)] = 0.0
    H = 2 / n * X.T @ X
    H = (H + H.T) / 2  # exactly symmetric (a float32 matmul may leave it off by an ulp)
    return 4 * H / torch.diag(H).mean()


class _GridQ(NamedTuple):
    """What a mistake or the reference gives for one case of check_gptq_layer: Q and the grid step of each weight."""
    Q: torch.Tensor
    step: torch.Tensor


# --- 1. the upper Cholesky factor of the dampened inverse Hessian -----------------------------------------------------

CHOL_SEEDS = (0, 1, 2)
CHOL_SHAPES = ((8, 32, 0.01), (32, 128, 0.01), (64, 256, 0.1), (128, 512, 0.01))  # (inputs d, tokens n, percdamp)
# mean(diag H) = 4, so U's entries are of order 1 (at most a few). float32 arithmetic in another order (an explicit
# inverse, float64, elimination) moves them by up to about 1e-5 here (tests/test_exercises_ch03.py measures it); each
# diagnosed mistake moves the largest of them by 0.5 or more in the first case.
CHOL_ATOL, CHOL_RTOL = 1e-4, 1e-4


def damped_inverse_cholesky_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (H, percdamp)) of check_damped_inverse_cholesky: seeds x shapes, then edge cases."""
    labels, cases = [], []
    for seed in CHOL_SEEDS:
        for d, n, percdamp in CHOL_SHAPES:
            gen = torch.Generator().manual_seed(300 + seed)
            labels.append(f"seed {seed}, H of shape ({d}, {d}) from {n} tokens, percdamp {percdamp}")
            cases.append((random_hessian(d, n, gen), percdamp))
    gen = torch.Generator().manual_seed(320)
    labels.append("edge case: a dead input (input 5 is always 0: row and column 5 of H are zero), H of shape "
                  "(32, 32) from 128 tokens, percdamp 0.01")
    cases.append((random_hessian(32, 128, gen, dead=(5,)), 0.01))
    labels.append("edge case: fewer tokens than inputs (H of shape (64, 64) from 16 tokens has rank 16: singular "
                  "without dampening), percdamp 0.1")
    cases.append((random_hessian(64, 16, gen), 0.1))
    labels.append("edge case: inputs of very different sizes (diag H spans 4 orders of magnitude), H of shape "
                  "(48, 48) from 192 tokens, percdamp 0.01")
    cases.append((random_hessian(48, 192, gen, spread=2.0), 0.01))
    diag = torch.exp(torch.randn(16, generator=gen))
    labels.append("edge case: independent inputs (H diagonal, so U is diagonal too), H of shape (16, 16), "
                  "percdamp 0.01")
    cases.append((torch.diag(4 * diag / diag.mean()), 0.01))
    labels.append("edge case: one input, H = [[2.5]], percdamp 0.01")
    cases.append((torch.tensor([[2.5]]), 0.01))
    return labels, cases


def _chol_reference(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    return inverse_cholesky_upper(H, percdamp)[0]


def _chol_by_hand(H: torch.Tensor, percdamp: float, *, damp: str = "mean",
                  factor: str = "upper") -> torch.Tensor | None:
    """U in float64 with one step swapped for a usual mistake (for the diagnosis); the defaults give the reference's
    U. None when that mistake cannot be computed (a singular matrix)."""
    H = H.double()
    d = H.shape[0]
    eye = torch.eye(d, dtype=H.dtype)
    lam = {"mean": percdamp * torch.diag(H).mean(), "none": 0.0, "abs": percdamp, "sum": percdamp * torch.diag(H).sum(),
           "max": percdamp * torch.diag(H).max()}.get(damp)
    Hd = H + percdamp * torch.diag(H).mean() if damp == "all" else H + lam * eye
    L, info = torch.linalg.cholesky_ex(Hd)
    if int(info) != 0:
        return None
    if factor == "H":  # the upper factor of H itself: R^T R = H + lambda I
        return L.T
    if factor == "UUt":  # an upper factor with U U^T = H^-1 (L^-T), not U^T U
        return torch.linalg.inv(L).T
    Hinv = torch.cholesky_inverse(L)
    if factor == "inverse":
        return Hinv
    if factor == "triu":
        return torch.triu(Hinv)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if int(info) != 0:
        return None
    if factor == "lower":  # the lower factor of H^-1, L L^T = H^-1: it is U^T
        return U.T
    return U


_CHOL_HINT = ("lambda = percdamp * mean(diag H); Hd = H + lambda * I; Hinv = torch.linalg.inv(Hd) (or "
              "torch.cholesky_inverse(torch.linalg.cholesky(Hd))); U = torch.linalg.cholesky(Hinv, upper=True), "
              "upper triangular with U.T @ U == Hinv.")


def _chol_variants() -> list[tuple[dict, str]]:
    lam = "lambda = percdamp * mean(diag H), added to the diagonal only: H + lambda * torch.eye(d)"
    return [
        (dict(factor="lower"), "your factor is lower-triangular: torch.linalg.cholesky returns the lower factor L "
                               "(L L^T = H^-1), which is U^T. GPTQ walks the rows of the upper factor, U^T U = "
                               "H^-1: torch.linalg.cholesky(Hinv, upper=True) (that is L.T)."),
        (dict(factor="H"), "you factored H + lambda I, not its inverse: GPTQ needs the factor of H^-1. Invert first "
                           "(torch.linalg.inv or torch.cholesky_inverse), then "
                           "torch.linalg.cholesky(Hinv, upper=True)."),
        (dict(factor="UUt"), "your U is upper-triangular but U @ U.T = H^-1 (you inverted the lower factor of H and "
                             "transposed it); GPTQ needs U.T @ U = H^-1, the factor whose row j is row j of the "
                             "eliminated H^-1 over sqrt of its diagonal: torch.linalg.cholesky(Hinv, upper=True)."),
        (dict(factor="inverse"), "you returned H^-1 itself, not its Cholesky factor: U = "
                                 "torch.linalg.cholesky(Hinv, upper=True)."),
        (dict(factor="triu"), "you returned the upper triangle of H^-1, not its Cholesky factor: U = "
                              "torch.linalg.cholesky(Hinv, upper=True)."),
        (dict(damp="none"), f"you didn't dampen H before inverting it: {lam}."),
        (dict(damp="abs"), f"you added percdamp itself to the diagonal; dampening is relative to H: {lam}."),
        (dict(damp="sum"), f"you multiplied percdamp by the sum (trace) of the diagonal; use its mean: {lam}."),
        (dict(damp="max"), f"you multiplied percdamp by the largest diagonal entry; use their mean: {lam}."),
        (dict(damp="all"), f"you added lambda to every entry of H (H + lambda), not just the diagonal: {lam}."),
    ]


def _diagnose_chol(args: tuple, got: torch.Tensor) -> str | None:
    H, percdamp = args
    got = got.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(got).all()):
        return ("your factor holds NaN or inf: H is singular here (a dead input, or fewer tokens than inputs), so "
                "H itself has no inverse. Dampen first: " + _CHOL_HINT)
    expected = _chol_reference(H, percdamp).double()
    for kwargs, message in _chol_variants():
        mistake = _chol_by_hand(H, percdamp, **kwargs)
        if mistake is None or torch.allclose(mistake, expected, rtol=CHOL_RTOL, atol=CHOL_ATOL):
            continue  # not computable, or this case cannot tell that mistake apart
        if torch.allclose(got, mistake, rtol=10 * CHOL_RTOL, atol=10 * CHOL_ATOL):
            return message
    if bool(torch.allclose(got.T @ got, expected.T @ expected, rtol=1e-3, atol=1e-3)):
        return ("your U.T @ U is the right H^-1, but U is not the upper Cholesky factor (upper-triangular with a "
                "positive diagonal): " + _CHOL_HINT)
    return None


def _noting_errors(fn, seen: list):
    """fn, noting the exceptions it raises (other than NotImplementedError, the stub) in `seen`."""
    def wrapped(*args):
        try:
            return fn(*args)
        except NotImplementedError:
            raise
        except Exception as exc:
            seen.append(exc)
            raise
    return wrapped


_SINGULAR_HINT = ("the Cholesky factorisation failed: H is singular here (a dead input, or fewer tokens than "
                  "inputs), and only dampening makes it invertible. Add lambda = percdamp * mean(diag H) to the "
                  "diagonal before you factor or invert anything.")


def check_damped_inverse_cholesky(fn) -> bool:
    """fn(H, percdamp) -> U, float (d, d): the upper Cholesky factor of the dampened inverse Hessian.

    * lambda = percdamp * mean(diag H), added to the diagonal: Hd = H + lambda I (this is what makes a singular H,
      from a dead input or fewer tokens than inputs, invertible);
    * U upper-triangular with a positive diagonal and U^T U = Hd^-1:
      U = torch.linalg.cholesky(torch.linalg.inv(Hd), upper=True), or without the explicit inverse
      torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hd)), upper=True) as course_lib does.
      (Row j of U is row j of H^-1 after columns 0 .. j-1 are eliminated, divided by the square root of its
      diagonal entry: the rows GPTQ's walk needs, computed once.)

    Checked against course_lib.gptq.inverse_cholesky_upper(H, percdamp) on H = 2/n X^T X of correlated, unevenly
    scaled inputs (mean(diag H) = 4), d in {8, 32, 64, 128}, percdamp 0.01 and 0.1, seeds 0, 1, 2; then a dead
    input, fewer tokens than inputs, inputs of very different sizes, independent inputs (diagonal H) and d = 1.
    Tolerance: |got - expected| <= 1e-4 + 1e-4 * |expected| for every entry.
    """
    labels, cases = damped_inverse_cholesky_cases()
    errors: list = []
    ok = check_tensor_cases("damped_inverse_cholesky", _noting_errors(fn, errors), cases, _chol_reference,
                            atol=CHOL_ATOL, rtol=CHOL_RTOL, labels=labels, hint=_CHOL_HINT, diagnose=_diagnose_chol)
    if not ok and errors and isinstance(errors[-1], torch.linalg.LinAlgError):
        print(f"    Hint: {_SINGULAR_HINT}")
    return ok


# --- 2. GPTQ for one layer, without lazy blocks -----------------------------------------------------------------------

GPTQ_SEEDS = (0, 1, 2)
GPTQ_SHAPES = ((16, 64, 32, 4), (32, 128, 64, 3), (48, 192, 64, 2), (24, 96, 96, 3))  # (out, in, group_size, bits)
GPTQ_PERCDAMP = 0.01
GPTQ_W_STD = 0.05
# A weight counts as "on the reference's grid point" within 1% of a grid step. Float rounding in another order
# (float64, another way to write the update) can tip a weight that sits almost exactly between two grid points to
# the other side; the rest of its row then moves a little (and a later group of that row can get another scale).
# So whole rows are compared, and one row in 32 (at least one) may differ.
GPTQ_STEP_TOL = 0.01
GPTQ_ROWS_FREE = 32


def gptq_layer_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (W, H, bits, group_size, act_order)) of check_gptq_layer: seeds x shapes (act-order
    on in every other case), then edge cases."""
    labels, cases = [], []
    for seed in GPTQ_SEEDS:
        for i, (out_f, in_f, g, bits) in enumerate(GPTQ_SHAPES):
            gen = torch.Generator().manual_seed(400 + 10 * seed + i)
            act_order = (seed + i) % 2 == 1
            groups = "one group per row" if g == in_f else f"{in_f // g} groups per row"
            labels.append(f"seed {seed}, W of shape ({out_f}, {in_f}), {bits} bits, group_size {g} ({groups}), "
                          f"act_order {act_order}")
            cases.append((torch.randn(out_f, in_f, generator=gen) * GPTQ_W_STD, random_hessian(in_f, 4 * in_f, gen),
                          bits, g, act_order))
    gen = torch.Generator().manual_seed(450)
    labels.append("edge case: a dead input (input 7 is always 0: row and column 7 of H are zero), W of shape "
                  "(32, 128), 4 bits, group_size 32, act_order True")
    cases.append((torch.randn(32, 128, generator=gen) * GPTQ_W_STD, random_hessian(128, 512, gen, dead=(7,)), 4, 32,
                  True))
    W = torch.randn(16, 64, generator=gen) * GPTQ_W_STD
    W[3] = 0.0
    labels.append("edge case: a row of zero weights (W[3] = 0: its scale would be 0), W of shape (16, 64), 3 bits, "
                  "group_size 16, act_order False")
    cases.append((W, random_hessian(64, 256, gen), 3, 16, False))
    labels.append("edge case: strongly correlated inputs (large corrections: many weights are pushed off the grid's "
                  "range and must be clamped), W of shape (32, 128), 4 bits, group_size 128 (one group per row), "
                  "act_order False")
    cases.append((torch.randn(32, 128, generator=gen) * GPTQ_W_STD, random_hessian(128, 512, gen, corr=3.0), 4, 128,
                  False))
    labels.append("edge case: act-order with one group per row, W of shape (24, 96), 4 bits, group_size 96, "
                  "act_order True")
    cases.append((torch.randn(24, 96, generator=gen) * GPTQ_W_STD, random_hessian(96, 384, gen, spread=2.0), 4, 96,
                  True))
    return labels, cases


def _gptq_reference(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, act_order: bool) -> _GridQ:
    """course_lib's GPTQ with blocksize 1 (no lazy batches), and the grid step of every weight."""
    res = gptq_quantize_weight(W, H, bits, group_size=group_size, act_order=act_order, blocksize=1,
                               percdamp=GPTQ_PERCDAMP)
    return _GridQ(res.qweight_float, res.scales[:, res.g_idx.long()])


def _gptq_by_hand(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, act_order: bool, *,
                  update: str = "obs", scales: str = "dynamic", clamp: bool = True, dead: bool = True,
                  damp: bool = True, order: str = "desc", unpermute: bool = True, permute_H: bool = True,
                  ) -> torch.Tensor | None:
    """GPTQ in float32 the way a learner writes it, with one step swapped for a usual mistake (for the diagnosis);
    the defaults give the reference's Q. None when the mistake cannot run (a singular matrix)."""
    W, H = W.detach().float().clone(), H.detach().float().clone()
    cols = W.shape[1]
    if dead:
        is_dead = torch.diag(H) == 0
        H[is_dead, is_dead] = 1.0
        W[:, is_dead] = 0.0
    perm = torch.arange(cols)
    if act_order and order != "natural":
        perm = torch.argsort(torch.diag(H), descending=order == "desc")
        W = W[:, perm]
        if permute_H:
            H = H[perm][:, perm]
    if damp:
        H = H + GPTQ_PERCDAMP * torch.diag(H).mean() * torch.eye(cols)
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        return None
    Hinv = torch.cholesky_inverse(L)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if int(info) != 0:
        return None
    R = {"cholH": L.T,  # the upper factor of H itself
         "uut": torch.linalg.inv(L).T}.get(update)  # an upper factor with R R^T = H^-1, not R^T R
    qmax = 2 ** (bits - 1) - 1
    qmin = -qmax if scales == "restricted" else -qmax - 1
    W0 = W.clone()
    Q = torch.zeros_like(W)
    s = None
    for j in range(cols):
        if j % group_size == 0:
            block = (W0 if scales == "static" else W)[:, j:j + group_size]
            s = block.abs().amax(dim=1) / (qmax if scales == "restricted" else qmax + 0.5)
            s = torch.where(s > 0, s, torch.ones_like(s))
        w = W[:, j].clone()
        c = torch.round(w / s)
        Q[:, j] = s * (torch.clamp(c, qmin, qmax) if clamp else c)
        e = w - Q[:, j]
        end = (j // group_size + 1) * group_size if update == "group_only" else cols
        if update in ("obs", "group_only"):
            W[:, j:end] -= torch.outer(e / U[j, j], U[j, j:end])
        elif update == "nodiv":
            W[:, j + 1:] -= torch.outer(e, U[j, j + 1:])
        elif update == "seed":
            W[:, j + 1:] -= torch.outer(e, H[j, j + 1:]) / H[j, j]
        elif update == "hinv":
            W[:, j + 1:] -= torch.outer(e / Hinv[j, j], Hinv[j, j + 1:])
        elif update in ("cholH", "uut"):
            W[:, j + 1:] -= torch.outer(e / R[j, j], R[j, j + 1:])
        elif update != "none":
            raise ValueError(update)
    if unpermute:
        Q = Q[:, torch.argsort(perm)]
    return Q


def _rows_off(got: torch.Tensor, expected: _GridQ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the rows of got that are not on the reference's grid points, the distance of every weight in grid steps)."""
    steps = (got.detach().to("cpu", torch.float64) - expected.Q.double()).abs() / expected.step.double()
    steps = torch.where(torch.isnan(steps), torch.full_like(steps, math.inf), steps)
    return (steps > GPTQ_STEP_TOL).any(dim=1), steps


def _rows_allowed(rows: int) -> int:
    return max(1, rows // GPTQ_ROWS_FREE)


def _same_q(a: torch.Tensor, expected: _GridQ) -> bool:
    return int(_rows_off(a, expected)[0].sum()) <= _rows_allowed(a.shape[0])


def _compare_gptq(got, expected: _GridQ) -> tuple[str, torch.Tensor | None]:
    problem, comparable = _tensor_mismatch(got, expected.Q, math.inf, 0.0, torch)  # type, shape, real numbers
    if not comparable:
        return problem, None
    got64 = got.detach().to("cpu", torch.float64)
    n_bad = int((~torch.isfinite(got64)).sum())
    if n_bad:
        return f"{n_bad} of {got64.numel()} values are NaN or infinite.", got64
    rows, steps = _rows_off(got64, expected)
    allowed = _rows_allowed(got64.shape[0])
    if int(rows.sum()) <= allowed:
        return "", got64
    r, c = (int(i) for i in divmod(int(steps.reshape(-1).argmax()), steps.shape[1]))
    return (f"{int(rows.sum())} of {got64.shape[0]} rows are off the reference's grid points (at most {allowed} may "
            f"differ, for float rounding); the worst weight, at index ({r}, {c}): expected "
            f"{expected.Q[r, c].item():.6g}, got {got64[r, c].item():.6g}, {steps[r, c].item():.3g} grid steps "
            f"away."), got64


_GPTQ_HINT = ("fix dead inputs (diag(H) == 0: H[i, i] = 1, W[:, i] = 0); with act_order, permute W's columns and H's "
              "rows and columns by torch.argsort(torch.diag(H), descending=True); U = upper Cholesky factor of "
              "(H + 0.01 mean(diag H) I)^-1; then for j = 0 .. in-1: at the start of a group, s = max |W[:, j:j+g]| / "
              "(qmax + 1/2) per row (1 where it is 0); q = s * clamp(round(w_j / s), -qmax-1, qmax); "
              "err = (w_j - q) / U[j, j]; W[:, j:] -= err[:, None] * U[j, j:]; finally undo the permutation.")


def _gptq_variants(act_order: bool) -> list[tuple[dict, str]]:
    walk = "err = (w_j - q_j) / U[j, j], then W[:, j:] -= err[:, None] * U[j, j:] (row j of U, to its right)."
    variants = [
        (dict(update="none"), "no error reached the later columns: your result is plain rounding (RTN). After "
                              "rounding column j, spread its error over the columns not yet rounded: " + walk +
                              " (A lower-triangular factor gives the same result: its row j is zero right of the "
                              "diagonal.)"),
        (dict(update="seed"), "you used seed 003's update, w_k -= (w_j - q_j) * H[j, k] / H[j, j], with H where OBS "
                              "needs H^-1; it pushes the other weights the wrong way. Use the upper Cholesky factor "
                              "U of H^-1: " + walk),
        (dict(update="nodiv"), "you didn't divide the error by U[j, j]: " + walk),
        (dict(update="hinv"), "you used the rows of the original H^-1 for every column. After column j is rounded it "
                              "leaves the problem, and H^-1 must lose row and column j (Gaussian elimination); the "
                              "rows of the upper Cholesky factor U are exactly those eliminated rows (over the "
                              "square root of their diagonal entry): " + walk),
        (dict(update="uut"), "your factor is upper-triangular but U U^T = H^-1 (the inverse of H's lower Cholesky "
                             "factor, transposed); GPTQ needs U^T U = H^-1, whose row j is row j of the eliminated "
                             "H^-1 over the square root of its diagonal entry: "
                             "torch.linalg.cholesky(torch.linalg.inv(H + lambda I), upper=True). " + walk),
        (dict(update="cholH"), "you walked the Cholesky factor of H itself, not of its inverse: "
                               "U = torch.linalg.cholesky(torch.linalg.inv(H + lambda I), upper=True). " + walk),
        (dict(update="group_only"), "you spread each column's error only over the rest of its group; it goes to "
                                    "every column not yet rounded, to the end of the row: " + walk),
        (dict(scales="static"), "you took each group's scale from the original weights. Here (GPTQ's default, "
                                "static_groups=False) a group's scale is taken when its first column comes up, from "
                                "the weights of its columns as they are then, after the updates of the columns "
                                "before: s = W[:, j:j+g].abs().amax(dim=1) / (qmax + 0.5) at j % g == 0."),
        (dict(scales="restricted"), "your grid is the restricted one (s = max|w| / qmax, codes -qmax .. qmax). "
                                    "GPTQ's grid is s = max|w| / (qmax + 1/2) = 2 max|w| / (2^bits - 1), codes "
                                    "-qmax-1 .. qmax with qmax = 2^(bits-1) - 1."),
        (dict(clamp=False), "you didn't clamp the codes: the updates push some weights beyond the range the group's "
                            "scale was taken from, and their codes must stay in -2^(bits-1) .. 2^(bits-1) - 1: "
                            "q = s * torch.clamp(torch.round(w / s), -qmax - 1, qmax)."),
        (dict(dead=False), "you didn't handle the dead input: where diag(H) == 0 the input was always 0, so set "
                           "H[i, i] = 1 and W[:, i] = 0 (its weights never mattered; Q must be 0 there) before "
                           "dampening and factoring."),
        (dict(damp=False), "you didn't dampen H: add lambda = 0.01 * mean(diag H) to its diagonal before you invert "
                           "and factor it (after fixing dead inputs)."),
    ]
    if act_order:
        variants += [
            (dict(order="natural"), "act_order=True was ignored: quantize the columns in decreasing order of diag(H) "
                                    "(perm = torch.argsort(torch.diag(H), descending=True)), and return Q in the "
                                    "original column order."),
            (dict(order="asc"), "you sorted the columns by increasing diag(H); act-order takes the inputs with the "
                                "most energy first: torch.argsort(torch.diag(H), descending=True)."),
            (dict(unpermute=False), "you returned Q in the processing order: undo the permutation at the end, "
                                    "Q[:, torch.argsort(perm)] (column perm[j] of W was processed at position j)."),
            (dict(permute_H=False), "you permuted W's columns but not H: H's rows and columns must follow, "
                                    "H[perm][:, perm], before dampening and factoring."),
        ]
    return variants


def _diagnose_gptq(args: tuple, got: torch.Tensor) -> str | None:
    W, H, bits, group_size, act_order = args
    if not bool(torch.isfinite(got).all()):
        return ("your result holds NaN or inf: a row of zero weights has max |w| = 0, so its scale is 0 and w / s "
                "is 0 / 0. Use s = 1 where it is 0 (any positive scale rounds zeros to code 0).")
    expected = _gptq_reference(W, H, bits, group_size, act_order)
    for kwargs, message in _gptq_variants(act_order):
        mistake = _gptq_by_hand(W, H, bits, group_size, act_order, **kwargs)
        if mistake is None or _same_q(mistake, expected):
            continue  # not computable, or this case cannot tell that mistake apart
        if _same_q(got, _GridQ(mistake, expected.step)):
            return message
    return None


def check_gptq_layer(fn) -> bool:
    """fn(W, H, bits, group_size, act_order) -> Q, float (out, in): GPTQ for one layer, without lazy blocks.

    W float32 (out, in), H float32 (in, in) the layer Hessian 2/n X^T X, symmetric grid, percdamp 0.01:
    1. dead inputs: where diag(H) == 0, set H[i, i] = 1 and W[:, i] = 0 (on copies);
    2. act_order: perm = torch.argsort(torch.diag(H), descending=True); W = W[:, perm]; H = H[perm][:, perm];
    3. U = the upper Cholesky factor of (H + lambda I)^-1, lambda = 0.01 * mean(diag H) (exercise 5);
    4. for j = 0 .. in - 1 (positions in processing order), with qmax = 2^(bits-1) - 1:
       * when j % group_size == 0, a group starts: its scale, per row, from its columns as they are now (updated by
         the columns before): s = W[:, j:j+group_size].abs().amax(dim=1) / (qmax + 0.5), GPTQ's grid; s = 1 where
         it is 0. (group_size = in: one scale per row);
       * q = s * clamp(round(W[:, j] / s), -qmax - 1, qmax); Q[:, j] = q;
       * err = (W[:, j] - q) / U[j, j]; W[:, j:] -= err[:, None] * U[j, j:]  (the OBS update of the columns not
         yet rounded);
    5. undo the permutation: Q[:, torch.argsort(perm)].

    Checked against course_lib.gptq.gptq_quantize_weight(W, H, bits, group_size=group_size, act_order=act_order,
    blocksize=1, percdamp=0.01).qweight_float on W ~ N(0, 0.05²) of shapes (16, 64), (32, 128), (48, 192) and
    (24, 96) at 2-4 bits, act-order on in every other case, H of correlated, unevenly scaled inputs, seeds 0, 1, 2;
    then a dead input, a row of zero weights, strongly correlated inputs and act-order with one group per row.
    Tolerance: every weight of a row within 1% of a grid step of the reference's; one row in 32 (at least one) may
    differ, because float rounding in another order can tip a weight that sits on a tie between two grid points
    (the rest of its row then follows another path).
    """
    labels, cases = gptq_layer_cases()
    errors: list = []
    ok = check_against("gptq_layer", _noting_errors(fn, errors), cases, _gptq_reference, _compare_gptq,
                       labels=labels, hint=_GPTQ_HINT, diagnose=_diagnose_gptq)
    if not ok and errors and isinstance(errors[-1], torch.linalg.LinAlgError):
        print(f"    Hint: {_SINGULAR_HINT}")
    return ok


WARM_UPS = ("obs_update_2d", "hessian_entry", "damp_value", "gptq_bits_per_weight")

EXERCISES = {
    "obs_update_2d": check_obs_update_2d,
    "hessian_entry": check_hessian_entry,
    "damp_value": check_damp_value,
    "gptq_bits_per_weight": check_gptq_bits_per_weight,
    "damped_inverse_cholesky": check_damped_inverse_cholesky,
    "gptq_layer": check_gptq_layer,
}
