"""Checks for chapter 07.

Warm-ups (one formula each): which weight Wanda prunes first, the bytes of a 2:4 matrix, a KV group's parameters.

The exercises that implement part of the chapter's algorithms, on tensors:

4. ``check_wanda_keep_mask``: Wanda's keep-mask from a layer's weights and calibration inputs, per row or N:M.
   Compared exactly with course_lib.prune.unstructured.wanda_mask.
5. ``check_sparsegpt_block``: one block of SparseGPT: the adaptive mask (jointly over the block, or N:M group by
   group on the updated weights), the OBS update column by column and the lazy update of the later columns.
   Compared with course_lib.prune.sparsegpt.sparsegpt_block, one block of sparsegpt_prune_weight's loop.

Both run on random tensors (fixed seeds, several shapes) and edge cases. After a wrong attempt a diagnosis recomputes
the usual mistakes (magnitude instead of Wanda's score, one threshold for the layer, N:M groups strided, no lazy
update, the wrong saliency, every N:M mask chosen up front, ...) and names the one that matches.
"""

from __future__ import annotations

from typing import Any

import torch

from ..gptq.hessian import fix_dead_columns, inverse_cholesky_upper
from ..prune.sparsegpt import sparsegpt_block
from ..prune.unstructured import wanda_mask
from . import _short, check_against, check_cases, check_tensor_cases
from .ch04 import _diagnosis  # the same mistake-naming as chapter 04's checks

WARM_UPS = ("wanda_first", "sparse24_bytes", "kv_group_params")

def check_wanda_first(fn) -> bool:
    """fn(weights, norms) -> the index of the weight Wanda prunes first in one output row: the lowest
    |w_j| * ||X_j|| (weights[j] multiplies input feature j, whose calibration norm is norms[j])."""
    cases = [(([0.5, -0.1, 0.3], [1.0, 10.0, 1.0]), 2),      # magnitude would pick index 1
             (([2.0, 1.0, -4.0, 0.2], [0.01, 1.0, 1.0, 1.0]), 0),
             (([1.0, -1.0], [3.0, 2.0]), 1),
             (([-0.3, 0.2, 0.1, 0.4], [1.0, 1.0, 1.0, 1.0]), 2)]  # equal norms: plain magnitude
    return check_cases("wanda_first", fn, cases, hint="score_j = abs(weights[j]) * norms[j]; return the argmin.")


def check_sparse24_bytes(fn) -> bool:
    """fn(out_features, in_features, value_bits) -> bytes of a 2:4-compressed matrix: the kept half of the
    values at value_bits each, plus a 2-bit position (0-3) for every kept value."""
    cases = [((4096, 4096, 16), 4096 * 4096 / 2 * 18 / 8), ((4096, 4096, 4), 4096 * 4096 / 2 * 6 / 8),
             ((256, 768, 8), 256 * 768 / 2 * 10 / 8), ((8, 8, 16), 72.0)]
    return check_cases("sparse24_bytes", fn, cases,
                       hint="out * in / 2 kept values, each value_bits + 2 bits of position; divide by 8.")


def check_kv_group_params(fn) -> bool:
    """fn(hidden, head_dim, q_per_group) -> weights removed from one attention layer (no biases) when one KV
    group goes: its k and v heads, its q heads (rows of q_proj) and their columns of o_proj."""
    cases = [((256, 64, 2), 6 * 256 * 64), ((4096, 128, 4), 10 * 4096 * 128), ((4096, 128, 1), 4 * 4096 * 128),
             ((8192, 128, 8), 18 * 8192 * 128)]
    return check_cases("kv_group_params", fn, cases,
                       hint="each head is head_dim rows of hidden weights; a q head also owns head_dim columns of o_proj.")




# --- 4. Wanda's keep-mask, per row or N:M ------------------------------------------------------------------------------

WANDA_SEEDS = (0, 1, 2)
# (out, in, tokens, sparsity, nm): int(96 * 0.3) = 28 while round() gives 29
WANDA_SHAPES = ((8, 64, 32, 0.5, None), (16, 96, 48, 0.3, None), (12, 128, 40, 0.7, None),
                (16, 64, 32, 0.5, (2, 4)), (8, 96, 24, 0.5, (4, 8)), (12, 64, 32, 0.75, (1, 4)))


def _wanda_inputs(out_f: int, in_f: int, tokens: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, X): W ~ N(0, 1); X's input channels scaled by exp(0.8 N(0, 1)), so their norms differ by a factor of
    about 5 between the 16th and 84th percentiles (Wanda then differs from magnitude pruning)."""
    W = torch.randn(out_f, in_f, generator=g)
    X = torch.randn(tokens, in_f, generator=g) * torch.exp(0.8 * torch.randn(in_f, generator=g))
    return W, X


def _nm_text(nm) -> str:
    return "unstructured" if nm is None else f"{nm[0]}:{nm[1]}"


def wanda_keep_mask_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (W, X, sparsity, nm)) of check_wanda_keep_mask: seeds x shapes, then edge cases."""
    labels, cases = [], []
    for seed in WANDA_SEEDS:
        for out_f, in_f, tokens, sparsity, nm in WANDA_SHAPES:
            W, X = _wanda_inputs(out_f, in_f, tokens, torch.Generator().manual_seed(10 * seed + in_f))
            what = f"sparsity {sparsity}" if nm is None else f"{nm[0]}:{nm[1]} (sparsity {sparsity})"
            labels.append(f"seed {seed}, W ({out_f}, {in_f}), X ({tokens}, {in_f}), {what}")
            cases.append((W, X, sparsity, nm))
    g = torch.Generator().manual_seed(70)
    W, X = _wanda_inputs(8, 64, 32, g)
    X[:, [3, 17, 40]] = 0.0
    labels.append("edge case: input channels 3, 17 and 40 always 0 (their weights score 0), W (8, 64), sparsity 0.5")
    cases.append((W, X, 0.5, None))
    for nm in (None, (2, 4)):
        W = torch.where(torch.rand(6, 32, generator=g) < 0.5, -0.5, 0.5)
        X = torch.randn(16, 1, generator=g).expand(16, 32).clone()
        labels.append(f"edge case: every score equal (|w| = 0.5, identical input channels), W (6, 32), "
                      f"{'sparsity 0.5' if nm is None else '2:4'}: ties go to the earlier input")
        cases.append((W, X, 0.5, nm))
    W, X = _wanda_inputs(4, 32, 16, g)
    labels.append("edge case: sparsity 0 (nothing pruned), W (4, 32)")
    cases.append((W, X, 0.0, None))
    return labels, cases


def reference_wanda_keep_mask(W: torch.Tensor, X: torch.Tensor, sparsity: float, nm) -> torch.Tensor:
    """course_lib.prune.unstructured.wanda_mask with the input norms ||X_j||_2 over the tokens."""
    return wanda_mask(W, X.norm(dim=0), sparsity, nm=nm)


def _prune_lowest_by_hand(scores: torch.Tensor, k: int, ties: str = "first") -> torch.Tensor:
    """Keep-mask pruning the k lowest of each row of a 2-D score tensor; ties to the earlier (or later) index."""
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    s = scores if ties == "first" else scores.flip(-1)
    idx = s.argsort(dim=-1, stable=True)[:, :k]
    keep = torch.ones_like(s, dtype=torch.bool).scatter(-1, idx, False)
    return keep if ties == "first" else keep.flip(-1)


def _wanda_by_hand(W: torch.Tensor, X: torch.Tensor, sparsity: float, nm, *, score: str = "wanda",
                   scope: str = "row", k_of: str = "int", keep: str = "high", ties: str = "first",
                   groups: str = "consecutive", nm_prune: str = "m-n", use_nm: bool = True,
                   mask: str = "keep") -> torch.Tensor:
    """The keep-mask as a learner writes it, with one choice passed in; the defaults give the reference's."""
    if mask == "pruned":
        return ~_wanda_by_hand(W, X, sparsity, nm)
    out_f, in_f = W.shape
    norm = {"wanda": X.norm(dim=0), "magnitude": torch.ones(in_f), "squared": X.pow(2).sum(dim=0),
            "mean_abs": X.abs().mean(dim=0)}[score]
    scores = W.abs().float() * norm.float()[None, :]
    if keep == "low":
        scores = -scores
    if nm is not None and use_nm:
        n, m = nm
        k = (m - n) if nm_prune == "m-n" else n
        if groups == "consecutive":
            return _prune_lowest_by_hand(scores.reshape(-1, m), k, ties).reshape(out_f, in_f)
        strided = scores.reshape(out_f, m, in_f // m).transpose(1, 2).reshape(-1, m)  # columns g, g + in/m, ...
        return _prune_lowest_by_hand(strided, k, ties).reshape(out_f, in_f // m, m).transpose(1, 2).reshape(out_f, in_f)
    count = {"row": in_f, "layer": W.numel(), "column": out_f}[scope]
    k = int(count * sparsity) if k_of == "int" else round(count * sparsity)
    if scope == "row":
        return _prune_lowest_by_hand(scores, k, ties)
    if scope == "column":
        return _prune_lowest_by_hand(scores.T.contiguous(), k, ties).T
    return _prune_lowest_by_hand(scores.reshape(1, -1), k, ties).reshape(out_f, in_f)


_WANDA_MESSAGES = {
    "magnitude": ("your mask is magnitude pruning's: Wanda's score multiplies |W_ij| by the norm of input feature j "
                  "over the tokens, |W_ij| * ||X[:, j]||_2 (X.norm(dim=0))."),
    "squared": ("you multiplied |W_ij| by the sum of squares of input j: Wanda uses its L2 norm, the square root, "
                "||X[:, j]||_2 = X.norm(dim=0)."),
    "mean_abs": ("you multiplied |W_ij| by the mean |x_j| (AWQ's statistic): Wanda uses the L2 norm of input j over "
                 "the tokens, X.norm(dim=0)."),
    "layer": ("you compared the scores over the whole layer: Wanda compares them within each output row, so every "
              "row loses exactly int(in_features * sparsity) weights."),
    "column": ("you compared the scores within each input column: Wanda compares them within each output row "
               "(dim=1), int(in_features * sparsity) per row."),
    "round": "you pruned round(in * sparsity) weights per row: prune int(in * sparsity), rounded down.",
    "low": "you pruned the highest scores: keep them, and prune the lowest.",
    "ties": ("your choice among equal scores differs: prune the earlier input first (a stable sort, "
             "argsort(stable=True), or course_lib's convention of breaking ties by position)."),
    "strided": ("your N:M groups are not M consecutive inputs: group g of a row is inputs g*M .. g*M + M - 1 "
                "(reshape(out, in // M, M)), not every (in / M)-th input."),
    "nm_prune": "you pruned N of every M: N:M keeps N of every M, so prune the M - N lowest of each group.",
    "pruned": "you returned the mask of the pruned weights (True = pruned): return the keep-mask, True where w stays.",
    "use_nm": ("with nm = (N, M) the mask must hold the pattern: in every group of M consecutive inputs of a row, "
               "prune the M - N lowest scores (not int(in * sparsity) anywhere in the row)."),
}
_WANDA_VARIANTS = tuple((kwargs, _WANDA_MESSAGES[key]) for kwargs, key in (
    (dict(score="magnitude"), "magnitude"), (dict(score="squared"), "squared"), (dict(score="mean_abs"), "mean_abs"),
    (dict(scope="layer"), "layer"), (dict(scope="column"), "column"), (dict(k_of="round"), "round"),
    (dict(keep="low"), "low"), (dict(ties="last"), "ties"), (dict(groups="strided"), "strided"),
    (dict(nm_prune="n"), "nm_prune"), (dict(use_nm=False), "use_nm"), (dict(mask="pruned"), "pruned")))
_WANDA_HINT = ("scores = W.abs() * X.norm(dim=0) (one norm per input feature, over the tokens); without nm, prune "
               "the int(in * sparsity) lowest of every row; with nm = (N, M), the M - N lowest of every group of M "
               "consecutive inputs of a row. Ties: the earlier input goes first (argsort(..., stable=True)). Return "
               "the keep-mask (True = kept).")


def _as_mask(answer: Any) -> Any:
    """A 0/1 tensor as a bool keep-mask; anything else as it is."""
    if isinstance(answer, torch.Tensor) and answer.dtype != torch.bool and not answer.is_complex():
        if bool(((answer == 0) | (answer == 1)).all()):
            return answer.detach().cpu() != 0
    return answer


def _compare_mask(got: Any, expected: torch.Tensor) -> tuple[str, Any]:
    """('', mask) when got is the expected keep-mask; a bool mask, or 0/1 numbers, of the expected shape."""
    shape = tuple(expected.shape)
    if not isinstance(got, torch.Tensor):
        return f"expected a keep-mask, a torch.Tensor of shape {shape}, got {type(got).__name__} {_short(got)}.", None
    if tuple(got.shape) != shape:
        return f"expected a keep-mask of shape {shape}, got one of shape {tuple(got.shape)}.", None
    if got.dtype != torch.bool:
        if got.is_complex() or not bool(((got == 0) | (got == 1)).all()):
            return ("expected a keep-mask: bool (True = kept) or 0/1 values, got other values "
                    f"(dtype {got.dtype}).", None)
        got = got != 0
    got = got.detach().cpu()
    wrong = got != expected
    if not bool(wrong.any()):
        return "", got
    where = tuple(int(i) for i in wrong.nonzero()[0])
    return (f"{int(wrong.sum())} of {expected.numel()} entries differ (you prune {int((~got).sum())} weights, the "
            f"reference {int((~expected).sum())}); the first at index {where}: expected "
            f"{'kept' if expected[where] else 'pruned'}.", got)


def check_wanda_keep_mask(fn) -> bool:
    """fn(W, X, sparsity, nm) -> Wanda's keep-mask (True = kept) of W (out, in), bool or 0/1 of W's shape.

    X (tokens, in) holds the layer's calibration inputs. The score of weight W_ij is |W_ij| * ||X[:, j]||_2.
    nm None: every row loses its int(in * sparsity) lowest scores. nm = (N, M): in every group of M consecutive
    inputs of a row, the M - N lowest go (sparsity is then 1 - N/M, given for information). Equal scores: the
    earlier input is pruned first.

    Checked on W (8..16, 64..128) with inputs of unequal norms, sparsity 0.3, 0.5 and 0.7, 2:4, 4:8 and 1:4, seeds
    0, 1, 2; then inputs that are always 0, every score equal (per row and 2:4), sparsity 0. Compared exactly with
    course_lib.prune.unstructured.wanda_mask(W, X.norm(dim=0), sparsity, nm=nm).
    """
    labels, cases = wanda_keep_mask_cases()
    same = lambda a, b: isinstance(a, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)  # noqa: E731
    return check_against("wanda_keep_mask", fn, cases, reference_wanda_keep_mask, _compare_mask, labels=labels,
                         hint=_WANDA_HINT, diagnose=_diagnosis(fn, cases, _wanda_by_hand, _WANDA_VARIANTS, same,
                                                               comparable=_as_mask))


# --- 5. one SparseGPT block --------------------------------------------------------------------------------------------

BLOCK_SEEDS = (0, 1, 2)
# (out, in, i1, i2, sparsity, nm): a first, a middle and a last block, unstructured and N:M
BLOCK_SHAPES = ((16, 64, 0, 32, 0.5, None), (12, 96, 32, 64, 0.5, None), (8, 64, 32, 64, 0.3, None),
                (16, 64, 0, 32, 0.5, (2, 4)), (12, 96, 32, 64, 0.5, (4, 8)), (8, 64, 16, 48, 0.75, (1, 4)))
# Weights of size ~1 (W ~ N(0, 1)); the updates pass through up to 96 columns. Two float32 implementations differ by
# about 1e-6; a float64 one passes too. A mistake moves values by 1e-2 or more.
BLOCK_ATOL, BLOCK_RTOL = 1e-4, 1e-4


def _block_inputs(out_f: int, in_f: int, g: torch.Generator, dead: tuple[int, ...] = ()) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """(W, U): W ~ N(0, 1) and U, the upper Cholesky factor of the damped inverse Hessian of correlated inputs
    (H = 2/n X^T X; inputs in `dead` always 0: H's dead columns fixed as GPTQ does, W's columns zeroed)."""
    X = torch.randn(4 * in_f, in_f, generator=g) @ (torch.eye(in_f) + 0.3 * torch.randn(in_f, in_f, generator=g))
    X[:, list(dead)] = 0.0
    W = torch.randn(out_f, in_f, generator=g)
    H = 2 / X.shape[0] * X.T @ X
    fix_dead_columns(W, H)
    U, _ = inverse_cholesky_upper(H, 0.01)
    return W, U


def sparsegpt_block_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (W, U, i1, i2, sparsity, nm)) of check_sparsegpt_block."""
    labels, cases = [], []
    for seed in BLOCK_SEEDS:
        for out_f, in_f, i1, i2, sparsity, nm in BLOCK_SHAPES:
            W, U = _block_inputs(out_f, in_f, torch.Generator().manual_seed(100 * seed + in_f + i1))
            where = "first" if i1 == 0 else "last" if i2 == in_f else "middle"
            labels.append(f"seed {seed}, W ({out_f}, {in_f}), the {where} block {i1}:{i2}, "
                          f"{f'sparsity {sparsity}' if nm is None else f'{nm[0]}:{nm[1]}'}")
            cases.append((W, U, i1, i2, sparsity, nm))
    g = torch.Generator().manual_seed(200)
    W, U = _block_inputs(8, 48, g)
    labels.append("edge case: the whole matrix as one block 0:48 (no later columns), W (8, 48), sparsity 0.5")
    cases.append((W, U, 0, 48, 0.5, None))
    W, U = _block_inputs(8, 64, g, dead=(5, 40))
    labels.append("edge case: inputs 5 and 40 always 0 (dead Hessian columns, fixed: H_jj = 1, W[:, j] = 0), W (8, 64), "
                  "block 0:32, sparsity 0.5")
    cases.append((W, U, 0, 32, 0.5, None))
    W, U = _block_inputs(8, 64, g)
    W[3] = 0.0
    labels.append("edge case: row 3 of W all zeros, W (8, 64), block 32:64, 2:4")
    cases.append((W, U, 32, 64, 0.5, (2, 4)))
    return labels, cases


def reference_sparsegpt_block(W, U, i1, i2, sparsity, nm) -> torch.Tensor:
    """course_lib.prune.sparsegpt.sparsegpt_block: one block of sparsegpt_prune_weight's loop."""
    return sparsegpt_block(W, U, i1, i2, sparsity, nm=nm)


def _block_by_hand(W, U, i1, i2, sparsity, nm, *, lazy: bool = True, inner: bool = True, divide: bool = True,
                   sign: float = -1.0, saliency: str = "obs", joint: bool = True, nm_when: str = "group",
                   offset: bool = True, prune: bool = True) -> torch.Tensor:
    """One block as a learner writes it, in float64, with one choice passed in; the defaults give the reference's."""
    W, U = W.double().clone(), U.double()
    b = i2 - i1
    W1 = W[:, i1:i2].clone()
    U1 = U[i1:i2, i1:i2] if offset else U[:b, :b]  # offset=False: the block's own positions 0..b-1 used as U's rows
    d = torch.diag(U1)

    def score(w: torch.Tensor, dd: torch.Tensor) -> torch.Tensor:
        return {"obs": (w / dd) ** 2, "magnitude": w.abs(), "hdiag": w ** 2 / dd}[saliency]

    keep = torch.ones_like(W1, dtype=torch.bool)
    if prune and nm is None:
        s = score(W1, d)
        if joint:  # the k lowest of the whole block
            keep = _prune_lowest_by_hand(s.reshape(1, -1), int(s.numel() * sparsity)).reshape(W1.shape)
        else:      # the same count in every row
            keep = _prune_lowest_by_hand(s, int(b * sparsity))
    elif prune and nm_when == "start":  # every group's N:M mask chosen before any column of the block is updated
        n, m = nm
        keep = _prune_lowest_by_hand(score(W1, d).reshape(-1, m), m - n).reshape(W1.shape)
    Err1 = torch.zeros_like(W1)
    for i in range(b):
        if prune and nm is not None and nm_when == "group" and i % nm[1] == 0:
            n, m = nm
            keep[:, i:i + m] = _prune_lowest_by_hand(score(W1[:, i:i + m], d[i:i + m]), m - n)
        w = W1[:, i].clone()
        q = w * keep[:, i]
        err = (w - q) / d[i] if divide else w - q
        if inner:
            W1[:, i:] += sign * torch.outer(err, U1[i, i:])
        W1[:, i] = q
        Err1[:, i] = err
    W[:, i1:i2] = W1
    if lazy:
        W[:, i2:] += sign * (Err1 @ U[i1:i2, i2:])
    return W


_BLOCK_MESSAGES = {
    "lazy": ("the columns after the block are unchanged: pass the block's errors on to them at the end, "
             "W[:, i2:] -= Err @ U[i1:i2, i2:], with Err (out, i2 - i1) holding each column's err."),
    "inner": ("the block's later columns never received the errors: after fixing column j, update every column "
              "k > j of the block, w_k -= err_j * U[j, k] (W1[:, j:] -= outer(err, U1[j, j:])), before choosing "
              "and fixing the next column."),
    "divide": ("your updates are U_jj times too small or large: the error is divided by the diagonal entry, "
               "err = (w_j - q_j) / U[j, j]."),
    "sign": "your updates have the wrong sign: w_k -= err_j * U[j, k] (subtract), with err = (w_j - q_j) / U[j, j].",
    "magnitude": ("you chose the mask by |w|: SparseGPT's saliency is the OBS one, w^2 / [H^-1]_jj = "
                  "(w / U[j, j])^2, computed on the block's current (updated) weights."),
    "hdiag": ("you divided w^2 by U[j, j]: the saliency is (w / U[j, j])^2, i.e. w^2 / U[j, j]^2 "
              "(U[j, j]^2 is the [H^-1]_jj of the columns still to come)."),
    "joint": ("you pruned the same number in every row: without nm, SparseGPT prunes the k = int(rows * cols * "
              "sparsity) lowest saliencies of the whole block together, so rows can lose different counts."),
    "start": ("you chose every N:M group's mask when the block starts: choose a group's mask when the loop reaches "
              "its first column, on the weights the columns before it have already updated."),
    "offset": ("column i of the block is column i1 + i of W: take U1 = U[i1:i2, i1:i2] (and the lazy update's "
               "U[i1:i2, i2:]), not U's first rows."),
    "prune": "nothing was pruned: zero the weights that the mask drops (q = 0 there), then spread their error.",
}
_BLOCK_VARIANTS = tuple((kwargs, _BLOCK_MESSAGES[key]) for kwargs, key in (
    (dict(lazy=False), "lazy"), (dict(inner=False), "inner"), (dict(divide=False), "divide"),
    (dict(sign=1.0), "sign"), (dict(saliency="magnitude"), "magnitude"), (dict(saliency="hdiag"), "hdiag"),
    (dict(joint=False), "joint"), (dict(nm_when="start"), "start"), (dict(offset=False), "offset"),
    (dict(prune=False), "prune")))
_BLOCK_HINT = ("W1 = W[:, i1:i2], U1 = U[i1:i2, i1:i2], d = diag(U1). Mask: without nm the int(rows * cols * "
               "sparsity) lowest (W1 / d)^2 of the block jointly; with nm, per group of M columns when the loop "
               "reaches it. For each column j: q = w * keep, err = (w - q) / d[j], W1[:, j:] -= outer(err, "
               "U1[j, j:]), column j becomes q. At the end W[:, i2:] -= Err @ U[i1:i2, i2:].")


def _close(a: Any, b: Any) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and bool(torch.allclose(a.double(), b.double(), atol=1e-3, rtol=1e-3)))


def check_sparsegpt_block(fn) -> bool:
    """fn(W, U, i1, i2, sparsity, nm) -> W after SparseGPT has pruned its columns i1:i2, a tensor of W's shape.

    W (out, in) float32 holds the current weights (updated by the blocks before), U (in, in) the upper Cholesky
    factor of the damped H^-1. Let W1 = W[:, i1:i2], U1 = U[i1:i2, i1:i2], d = diag(U1).
    * Mask, on W1 as given: nm None: prune the k = int(rows * (i2 - i1) * sparsity) lowest saliencies (W1 / d)^2 of
      the block jointly (ties: the earlier in row-major order). nm = (N, M): in every group of M columns, the M - N
      lowest of each row, chosen when the loop reaches the group's first column (on the updated weights).
    * For each column j of the block: q = w (0 where pruned), err = (w - q) / d[j], W1[:, j:] -= outer(err, U1[j, j:]);
      column j becomes q.
    * Then W[:, i2:] -= Err @ U[i1:i2, i2:] (Err: the block's err columns); columns before i1 stay as they are.

    Checked on W (8..16, 64..96) ~ N(0, 1), first, middle and last blocks, sparsity 0.3, 0.5, 2:4, 4:8 and 1:4,
    seeds 0, 1, 2; then the whole matrix as one block, dead inputs (a fixed Hessian), a row of zeros. Compared with
    course_lib.prune.sparsegpt.sparsegpt_block (one block of sparsegpt_prune_weight's loop) within
    |got - expected| <= 1e-4 + 1e-4 * |expected|.
    """
    labels, cases = sparsegpt_block_cases()
    return check_tensor_cases("sparsegpt_block", fn, cases, reference_sparsegpt_block, atol=BLOCK_ATOL,
                              rtol=BLOCK_RTOL, labels=labels, hint=_BLOCK_HINT,
                              diagnose=_diagnosis(fn, cases, _block_by_hand, _BLOCK_VARIANTS, _close))


EXERCISES = {"wanda_first": check_wanda_first, "sparse24_bytes": check_sparse24_bytes,
             "kv_group_params": check_kv_group_params, "wanda_keep_mask": check_wanda_keep_mask,
             "sparsegpt_block": check_sparsegpt_block}
