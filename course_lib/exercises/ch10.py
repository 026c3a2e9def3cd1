"""Checks for chapter 10: FlashAttention's forward pass in two halves and its backward pass, written by the learner,
plus three warm-up formulas.

1. ``check_online_softmax_stats``: the online softmax. One pass over the columns of a score matrix, a block at a
   time, keeping each row's running max m and running sum l = Σ exp(x - m), rescaling l whenever the max rises.
   Compared with ``course_lib.attention.online_softmax.row_stats`` (the same m and l computed directly).
2. ``check_tiled_attention``: the tiled attention forward pass. Blocks of queries, then blocks of keys and values,
   with a running max, sum and accumulator per query row, the causal mask aligned bottom-right, ragged lengths,
   and rows that see no key returning zeros. Compared with ``course_lib.attention.reference.naive_attention``
   (the whole score matrix in memory, computed in float64).
3. ``check_attention_backward``: the backward pass, tile by tile from the forward pass's output and logsumexp
   (Δ = dO·O, P recomputed, dV, dK per key block, dQ), against autograd through naive attention in float64.

All run the learner's function on random tensors (fixed seeds, several shapes) and edge cases: fully masked rows,
left padding, scores near ±1000 or near 100 (where exp overflows float32 unless the max is subtracted), a length
that is not a multiple of the block. After a wrong attempt a diagnosis recomputes the usual mistakes (no rescaling,
the factor upside down, the ragged tail skipped, a top-left causal mask, no 1/√d, ...) and names the one that
matches. The warm-ups (``WARM_UPS``) are one-line formulas checked on a few scalars.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..attention.online_softmax import row_stats
from ..attention.reference import naive_attention
from . import _short, _tensor_mismatch, check_against, check_cases, check_tensor_cases

NEG_INF = float("-inf")

# --- warm-ups: one-line formulas ---------------------------------------------------------------------------------


def check_online_sum(fn) -> bool:
    """fn(m, l, x) -> the running sum after one more score x, where m is the running max and
    l = Σ exp(s - m) over the scores seen so far (the new max is max(m, x))."""
    cases = [((0.0, 1.0, 2.0), math.exp(-2.0) + 1.0), ((3.0, 2.0, 1.0), 2.0 + math.exp(-2.0)),
             ((5.0, 1.5, 5.0), 2.5), ((-1.0, 4.0, 0.5), 4.0 * math.exp(-1.5) + 1.0)]
    return check_cases("online_sum", fn, cases, rel=1e-9,
                       hint="m_new = max(m, x); l_new = l * exp(m - m_new) + exp(x - m_new).")


def check_score_bytes(fn) -> bool:
    """fn(batch, heads, seq_len, bytes_per_element) -> bytes of naive attention's score matrix."""
    cases = [((1, 32, 2048, 4), 32 * 2048 * 2048 * 4), ((2, 16, 4096, 2), 2 * 16 * 4096 ** 2 * 2),
             ((1, 1, 100, 4), 40000.0)]
    return check_cases("score_bytes", fn, cases, hint="one seq_len x seq_len matrix per batch element and head.")


def check_causal_tiles(fn) -> bool:
    """fn(n_blocks) -> how many (query block, key block) tiles a causal FlashAttention computes for a square
    sequence split into n_blocks equal blocks (tiles wholly above the diagonal are skipped)."""
    cases = [((1,), 1), ((2,), 3), ((4,), 10), ((32,), 528)]
    return check_cases("causal_tiles", fn, cases, hint="query block i needs key blocks 0..i: 1 + 2 + ... + n.")


# --- shared by the two exercises ---------------------------------------------------------------------------------


def _blocks(n: int, block: int) -> str:
    """'4 blocks', '7 blocks, the last of 2', 'one block of 33'."""
    full, tail = divmod(n, block)
    if full == 0 or (full == 1 and tail == 0):
        return f"one block of {n}"
    return f"{full + (tail > 0)} blocks" + (f", the last of {tail}" if tail else "")


def _low_precision(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """got is expected up to 16-bit rounding (about 3 significant digits), but not within the check's tolerance."""
    return _same(got, expected, rtol=1e-2, atol=1e-2)


_LOW_PRECISION = ("your values are right to about 3 significant digits only: they were computed in float16 or "
                  "bfloat16. Compute in float32 (x.float()); the check's tolerance is float32 rounding.")


def _same(a: torch.Tensor, b: torch.Tensor, *, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """a and b agree (NaN where NaN, inf where inf): how a diagnosis tells which mistake gives the learner's answer."""
    return bool(torch.allclose(a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64), rtol=rtol,
                               atol=atol, equal_nan=True))


# --- 1. the online softmax -----------------------------------------------------------------------------------------

STATS_SEEDS = (0, 1, 2)
STATS_SHAPES = ((4, 16, 4), (3, 50, 8), (5, 64, 64), (2, 37, 1), (6, 100, 32), (3, 10, 16))  # (rows, n, block)
# m is one of the inputs, exact in float32. l is a sum of at most 100 terms in (0, 1] with a few rescalings: float32
# rounding stays below 1e-6 relative; a sum in float16 (about 3 significant digits) fails.
STATS_ATOL, STATS_RTOL = 1e-6, 1e-5


def online_softmax_stats_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (x, block)) of check_online_softmax_stats: seeds x shapes, then the edge cases."""
    labels, cases = [], []
    for seed in STATS_SEEDS:
        for rows, n, block in STATS_SHAPES:
            g = torch.Generator().manual_seed(1000 * seed + n)
            labels.append(f"seed {seed}, x of shape ({rows}, {n}), block {block} ({_blocks(n, block)})")
            cases.append((3 * torch.randn(rows, n, generator=g), block))
    g = torch.Generator().manual_seed(7)

    x = 3 * torch.randn(4, 20, generator=g)
    x[2] = NEG_INF
    labels.append("edge case: row 2 fully masked (every score -inf: m = -inf, l = 0), x of shape (4, 20), block 8")
    cases.append((x, 8))

    x = 3 * torch.randn(3, 30, generator=g)
    for row, pad in enumerate((0, 8, 13)):
        x[row, :pad] = NEG_INF
    labels.append("edge case: left padding (rows 1 and 2 begin with 8 and 13 masked scores: their first block is "
                  "all -inf), x of shape (3, 30), block 8")
    cases.append((x, 8))

    x = 3 * torch.randn(6, 24, generator=g)
    x = x.masked_fill(torch.arange(24)[None, :] > 10 + 2 * torch.arange(6)[:, None], NEG_INF)
    labels.append("edge case: a causal pattern (row i sees columns 0..10 + 2i: later blocks all -inf for the first "
                  "rows), x of shape (6, 24), block 8")
    cases.append((x, 8))

    labels.append("edge case: scores near +1000 (exp(x) overflows float32 beyond 88.7), x of shape (3, 40), block 16")
    cases.append((1000 + 3 * torch.randn(3, 40, generator=g), 16))

    labels.append("edge case: scores near -1000 (exp(x) underflows to 0 in float32), x of shape (3, 40), block 16")
    cases.append((-1000 + 3 * torch.randn(3, 40, generator=g), 16))

    x = 3 * torch.randn(3, 50, generator=g)
    x[:, 49] = 12.0
    labels.append("edge case: each row's max in the last, shorter block (column 49), x of shape (3, 50), block 8 "
                  "(7 blocks, the last of 2)")
    cases.append((x, 8))

    labels.append("edge case: ties (every score of a row equal: l = n), x of shape (2, 17), block 4")
    cases.append((torch.tensor([[2.5] * 17, [-1.0] * 17]), 4))
    return labels, cases


def reference_online_softmax_stats(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """row_stats: the max and the sum computed directly (the block size changes nothing but rounding)."""
    return row_stats(x)


def _stats_by_hand(x: torch.Tensor, block: int, *, rescale: str = "right", init: float = NEG_INF, tail: bool = True,
                   store_max: bool = True, subtract_max: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, l) as a learner computes them, in float64, with one choice passed in; the defaults are right.

    rescale: "right" l·exp(m - m_new); "none" l; "inverted" l·exp(m_new - m) (from the second block on);
    "local" each block's terms against its own max, never rescaled; "overwrite" only the last block's terms.
    """
    x = x.double()
    n = x.shape[-1]
    stop = n if tail else n - n % block
    m = torch.full(x.shape[:-1], init, dtype=torch.float64)
    l = torch.zeros(x.shape[:-1], dtype=torch.float64)
    for start in range(0, stop, block):
        b = x[..., start:start + block]
        b_max = b.amax(-1)
        m_new = torch.maximum(m, b_max)
        shift = torch.where(m_new == NEG_INF, 0.0, m_new) if subtract_max else torch.zeros_like(m_new)
        terms = torch.exp(b - shift[..., None]).sum(-1)
        if rescale == "right":
            l = l * torch.exp(m - shift) + terms if subtract_max else l + terms
        elif rescale == "none":
            l = l + terms
        elif rescale == "inverted":
            l = torch.where(m == NEG_INF, 0.0, l * torch.exp(m_new - m)) + terms
        elif rescale == "local":
            l = l + torch.exp(b - torch.where(b_max == NEG_INF, 0.0, b_max)[..., None]).sum(-1)
        elif rescale == "overwrite":
            l = terms
        else:
            raise ValueError(rescale)
        if store_max:
            m = m_new
    return m, l


_STATS_VARIANTS = (
    (dict(rescale="none"), ("you didn't rescale the running sum when the max rose: the old terms were taken against "
                            "the old max and are too large by exp(m_new - m). Multiply the old sum before adding the "
                            "block: l = l * exp(m - m_new) + Σ exp(x_block - m_new).")),
    (dict(rescale="inverted"), ("your rescaling factor is upside down: when the max rises from m to m_new the old sum "
                                "shrinks, l * exp(m - m_new) (a factor <= 1), not l * exp(m_new - m).")),
    (dict(rescale="local"), ("you summed each block against its own max: the blocks' sums are then on different "
                             "scales and cannot be added. Sum against the running max and rescale the old sum: "
                             "m_new = max(m, max of the block); l = l * exp(m - m_new) + Σ exp(x_block - m_new).")),
    (dict(rescale="overwrite"), ("your l holds only the last block's terms: add them to the rescaled old sum, "
                                 "l = l * exp(m - m_new) + Σ exp(x_block - m_new), instead of replacing it.")),
    (dict(store_max=False), ("your m is still -inf: store the new max after each block (m = m_new); without it the "
                             "old sum is multiplied by exp(-inf) = 0 at every block.")),
    (dict(init=0.0), ("you started the running max at 0: start at -inf (nothing seen yet). With m >= 0, a row of very "
                      "negative scores gets l = Σ exp(x - 0), which underflows to 0 in float32, and a fully masked row "
                      "gets m = 0 instead of -inf.")),
    (dict(tail=False), ("you skipped the last, shorter block: when n is not a multiple of block, "
                        "range(0, n, block) still reaches it, and x[..., start:start + block] stops at the end of the "
                        "row.")),
    (dict(subtract_max=False), ("l is Σ exp(x - m), against the running max m: you summed exp(x) itself. Besides "
                                "being another number, exp(x) overflows float32 beyond x = 88.7.")),
)
_STATS_NAN = ("your result has NaN where the reference has none. NaN comes from exp(-inf - (-inf)): a running max "
              "that is still -inf when a block's scores are all -inf (masked; a fully masked row, left padding), or "
              "from 0 * inf: the starting l = 0 times exp(m_new - m) with m = -inf (the factor upside down). The "
              "factor is exp(m - m_new) <= 1, and where m_new is still -inf subtract 0 instead: "
              "shift = torch.where(m_new == float('-inf'), 0.0, m_new).")
_STATS_INF = ("your l is inf: exp of a score above 88.7 overflows float32. Subtract the running max before exp: "
              "l = l * exp(m - m_new) + Σ exp(x_block - m_new).")
_STATS_HINT = ("m = -inf and l = 0 per row; for each block b = x[..., s:s + block]: m_new = max(m, b.amax(-1)); "
               "l = l * exp(m - m_new) + exp(b - m_new[..., None]).sum(-1) (subtracting 0 where m_new is -inf); "
               "m = m_new. Return (m, l), each of shape x.shape[:-1].")


def _compare_stats(got: Any, expected: tuple[torch.Tensor, torch.Tensor]) -> tuple[str, Any]:
    """('', (m, l)) when got matches; else what is wrong, and (m, l) when both are tensors of the right shape."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a tuple (m, l) of two tensors, got {type(got).__name__} {_short(got)}.", None
    problems = []
    for name, g, e in (("m", got[0], expected[0]), ("l", got[1], expected[1])):
        problem, comparable = _tensor_mismatch(g, e, STATS_ATOL, STATS_RTOL, torch)
        if not comparable:
            return f"{name}: {problem}", None
        if problem:
            problems.append(f"{name}: {problem}")
    comparable = tuple(t.detach().to("cpu", torch.float64) for t in got)
    if not problems:
        return "", comparable
    if len(problems) == 1:
        problems.insert(0, ("l is right, but" if problems[0].startswith("m") else "m is right, but"))
    return " ".join(problems), comparable


def _diagnose_stats(args: tuple, got: tuple[torch.Tensor, torch.Tensor]) -> str | None:
    x, block = args
    expected = row_stats(x)

    def same(a, b, **tol):
        return _same(a[0], b[0], **tol) and _same(a[1], b[1], **tol)

    for kwargs, message in _STATS_VARIANTS:
        mistake = _stats_by_hand(x, block, **kwargs)
        if not same(mistake, expected, rtol=STATS_RTOL, atol=STATS_ATOL) and same(got, mistake):
            return message
    m, l = got
    if same((l, m), expected, rtol=STATS_RTOL, atol=STATS_ATOL):
        return "you returned (l, m): return the max first, (m, l)."
    if bool(torch.isnan(m).any() | torch.isnan(l).any()):
        return _STATS_NAN
    if bool((torch.isinf(l) & ~torch.isinf(expected[1])).any()):
        return _STATS_INF
    if bool(torch.equal(m.isinf(), expected[0].isinf())) and _low_precision(m, expected[0]) \
            and _low_precision(l, expected[1]):
        return _LOW_PRECISION
    return None


def check_online_softmax_stats(fn) -> bool:
    """fn(x, block) -> (m, l): each row's max and sum of exponentials, from one pass over the row in blocks.

    x (rows, n) float32 holds scores; a masked score is -inf. Walk over the columns a block at a time
    (x[:, s:s + block] for s = 0, block, 2·block, ...; the last block may be shorter) keeping, per row,

        m  the largest score seen so far (-inf before the first),
        l  Σ exp(score - m) over the scores seen so far (0 before the first).

    When a block raises the max to m_new = max(m, max of the block), the old sum was taken against the old max:
    l ← l · exp(m - m_new) + Σ exp(block - m_new). A row that has seen only -inf keeps m = -inf and l = 0
    (exp(-inf - (-inf)) is NaN: subtract 0 while m_new is -inf). Return (m, l), each of shape (rows,).
    Then softmax(x) = exp(x - m) / l.

    Checked against course_lib.attention.online_softmax.row_stats (the max and the sum computed directly) on
    random scores with n in {10, 16, 37, 50, 64, 100} and block in {1, 4, 8, 16, 32, 64} (blocks that divide n,
    a ragged last block, one block larger than the row), seeds 0, 1, 2; then a fully masked row, left padding,
    a causal pattern, scores near +1000 and near -1000, the max in the ragged last block, ties.
    Tolerance: |got - expected| <= 1e-6 + 1e-5 * |expected| for m and for l.
    """
    labels, cases = online_softmax_stats_cases()
    return check_against("online_softmax_stats", fn, cases, reference_online_softmax_stats, _compare_stats,
                         labels=labels, hint=_STATS_HINT, diagnose=_diagnose_stats)


# --- 2. the tiled attention forward ----------------------------------------------------------------------------

ATTN_SEEDS = (0, 1, 2)
# (batch, heads, Tq, Tk, head_dim, block_q, block_k, causal)
ATTN_SHAPES = ((1, 1, 16, 16, 8, 4, 4, True), (2, 3, 50, 50, 16, 16, 8, True), (1, 2, 37, 37, 8, 8, 16, False),
               (1, 2, 6, 40, 16, 4, 8, True), (2, 1, 33, 33, 32, 64, 64, True))
# The outputs are averages of v (entries of size about 1). In float32 they are right to about 4e-7, and to 1.2e-5
# where every score is near 100 (their rounding: float32 spacing at 100 is 8e-6); a float16 path (1e-3) fails.
ATTN_ATOL, ATTN_RTOL = 1e-4, 1e-4


def _qkv(g: torch.Generator, batch: int, heads: int, t_q: int, t_k: int, d: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, heads, t_q, d, generator=g), torch.randn(batch, heads, t_k, d, generator=g),
            torch.randn(batch, heads, t_k, d, generator=g))


def _attn_label(q: torch.Tensor, k: torch.Tensor, causal: bool, block_q: int, block_k: int) -> str:
    t_q, t_k = q.shape[2], k.shape[2]
    return (f"q of shape {tuple(q.shape)}, k and v {tuple(k.shape)}, {'causal' if causal else 'not causal'}, "
            f"block_q {block_q} ({_blocks(t_q, block_q)}), block_k {block_k} ({_blocks(t_k, block_k)})")


def tiled_attention_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (q, k, v, causal, block_q, block_k)) of check_tiled_attention."""
    labels, cases = [], []
    for seed in ATTN_SEEDS:
        for b, h, t_q, t_k, d, bq, bk, causal in ATTN_SHAPES:
            q, k, v = _qkv(torch.Generator().manual_seed(100 * seed + t_q + t_k), b, h, t_q, t_k, d)
            labels.append(f"seed {seed}, {_attn_label(q, k, causal, bq, bk)}")
            cases.append((q, k, v, causal, bq, bk))
    g = torch.Generator().manual_seed(11)
    edges = (
        ("more queries than keys: the first 6 queries see no key and output zeros", (1, 2, 10, 4, 8, 4, 4, True)),
        ("more queries than keys: queries 0..7 see no key (whole query blocks), ragged blocks", (1, 1, 13, 5, 8, 3, 2,
                                                                                              True)),
        ("one query (a decode step) over 29 keys", (1, 4, 1, 29, 16, 1, 8, True)),
        ("one key, not causal: every output row is v", (1, 2, 5, 1, 8, 2, 2, False)),
        ("tiles of one score each", (1, 1, 7, 7, 4, 1, 1, True)),
    )
    for what, (b, h, t_q, t_k, d, bq, bk, causal) in edges:
        q, k, v = _qkv(g, b, h, t_q, t_k, d)
        labels.append(f"edge case: {what}, {_attn_label(q, k, causal, bq, bk)}")
        cases.append((q, k, v, causal, bq, bk))
    # Every score near 100: each key is w plus a little noise, each query 25·w plus noise, with w = (1, ..., 1).
    q, k, v = _qkv(g, 1, 2, 24, 24, 16)
    q, k = 25 + q, 1 + 0.1 * k
    labels.append(f"edge case: every score between about 90 and 110 (exp overflows float32 beyond 88.7), "
                  f"{_attn_label(q, k, True, 8, 8)}")
    cases.append((q, k, v, True, 8, 8))
    return labels, cases


def reference_tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, block_q: int,
                              block_k: int) -> torch.Tensor:
    """naive_attention in float64: the whole score matrix, the causal mask aligned bottom-right, zeros for a row
    that sees no key (the blocks change nothing but rounding)."""
    return naive_attention(q.double(), k.double(), v.double(), causal=causal, dtype=torch.float64)


def _attention_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, block_q: int, block_k: int,
                       *, scale: str = "sqrt", mask: str = "bottom_right", rescale: tuple[str, ...] = ("l", "acc"),
                       keys_tail: bool = True, queries_tail: bool = True) -> torch.Tensor:
    """The tiled loop in float64 with one choice passed in (for the diagnosis); the defaults give the reference.

    scale: "sqrt" 1/√d, "none", "d" 1/d. mask: "bottom_right", "top_left" (key j visible to query i when j <= i),
    "strict" (j < i + Tk - Tq: the diagonal hidden), "tile" (positions inside the tile compared, in every tile),
    "never", "always" (the causal mask even when causal is False).
    rescale: which of l and acc are multiplied by exp(m - m_new) when the max rises.
    """
    q, k, v = q.double(), k.double(), v.double()
    t_q, t_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    factor = {"sqrt": 1 / math.sqrt(d), "none": 1.0, "d": 1 / d}[scale]
    masked = (causal and mask != "never") or mask == "always"
    offset = 0 if mask == "top_left" else t_k - t_q
    out = torch.zeros(q.shape, dtype=torch.float64)
    q_stop = t_q if queries_tail else t_q - t_q % block_q
    k_stop = t_k if keys_tail else t_k - t_k % block_k
    for qs in range(0, q_stop, block_q):
        qb = q[..., qs:qs + block_q, :] * factor
        pos = torch.arange(qs, qs + qb.shape[-2]) + offset
        m = torch.full(qb.shape[:-1], NEG_INF, dtype=torch.float64)
        l = torch.zeros(qb.shape[:-1], dtype=torch.float64)
        acc = torch.zeros(qb.shape, dtype=torch.float64)
        for ks in range(0, k_stop, block_k):
            s = qb @ k[..., ks:ks + block_k, :].transpose(-2, -1)
            if masked:
                cols = torch.arange(ks, ks + s.shape[-1])[None, :]
                hidden = cols >= pos[:, None] if mask == "strict" else cols > pos[:, None]
                if mask == "tile":
                    hidden = torch.ones(s.shape[-2:], dtype=torch.bool).triu(1)
                s = s.masked_fill(hidden, NEG_INF)
            m_new = torch.maximum(m, s.amax(-1))
            shift = torch.where(m_new == NEG_INF, 0.0, m_new)
            p = torch.exp(s - shift[..., None])
            alpha = torch.exp(m - shift)
            l = (alpha * l if "l" in rescale else l) + p.sum(-1)
            acc = (alpha[..., None] * acc if "acc" in rescale else acc) + p @ v[..., ks:ks + block_k, :]
            m = m_new
        out[..., qs:qs + block_q, :] = acc / torch.where(l > 0, l, 1.0)[..., None]
    return out


_ATTN_VARIANTS = (
    (dict(scale="none"), "you didn't scale the scores: s = q kᵀ / √d, with d = q.shape[-1] (the head dimension)."),
    (dict(scale="d"), "you divided the scores by d: the scale is 1/√d, s = q kᵀ / math.sqrt(d)."),
    (dict(mask="top_left"), ("your causal mask is aligned top-left (key j visible to query i when j <= i). With fewer "
                             "queries than keys the queries are the last Tq tokens: query i is token Tk - Tq + i and "
                             "sees the keys j <= Tk - Tq + i (bottom-right, as with chapter 09's cache).")),
    (dict(mask="strict"), ("your mask hides the diagonal: a query sees its own token. Hide key j when "
                           "j > i + Tk - Tq (strictly greater), not when j >= i + Tk - Tq.")),
    (dict(mask="tile"), ("you compared positions inside the tile (the upper triangle of every tile): compare the "
                         "tokens' positions in the whole sequence, key ks + c against query Tk - Tq + qs + r; "
                         "a tile below the diagonal is fully visible, one above it fully hidden.")),
    (dict(mask="never"), ("with causal=True, query i must not see the keys after it: set the scores of keys "
                          "j > i + Tk - Tq to -inf in each tile, before taking the tile's max.")),
    (dict(mask="always"), "with causal=False every query sees every key: apply the mask only when causal is True."),
    (dict(rescale=("l",)), ("you rescaled l but not acc: when the max rises, acc = Σ exp(s - m)·v was also summed "
                            "against the old max and must shrink by the same factor, acc = alpha * acc + p @ v_block "
                            "with alpha = exp(m - m_new).")),
    (dict(rescale=("acc",)), ("you rescaled acc but not l: when the max rises, l = Σ exp(s - m) must shrink by the "
                              "same factor, l = alpha * l + p.sum(-1) with alpha = exp(m - m_new).")),
    (dict(rescale=()), ("you rescaled neither l nor acc when the running max rose: both were summed against the old "
                        "max. With alpha = exp(m - m_new): l = alpha * l + p.sum(-1) and "
                        "acc = alpha * acc + p @ v_block.")),
    (dict(keys_tail=False), ("you skipped the last, shorter block of keys (Tk is not a multiple of block_k): "
                             "range(0, Tk, block_k) reaches it, and k[..., ks:ks + block_k, :] stops at the end.")),
    (dict(queries_tail=False), ("you skipped the last, shorter block of queries (Tq is not a multiple of block_q): "
                                "range(0, Tq, block_q) reaches it, and q[..., qs:qs + block_q, :] stops at the end.")),
)
_ATTN_NO_KEY = ("your output has NaN in rows that see no key (causal with more queries than keys: the first "
                "Tq - Tk queries). Such a row keeps m = -inf and l = 0 and must output zeros: exp(s - m_new) with "
                "m_new = -inf is exp(-inf - (-inf)) = NaN, so subtract 0 where m_new is -inf, and divide acc by l "
                "only where l > 0.")
_ATTN_OVERFLOW = ("your output has NaN or inf in rows that see keys: exp of a score above 88.7 overflows float32 "
                  "(inf / inf = NaN). Subtract the running max: p = exp(s - m_new), and rescale l and acc by "
                  "alpha = exp(m - m_new).")
_ATTN_NAN = ("your output has NaN: a row of a tile whose keys are all masked has max -inf, and exp(-inf - (-inf)) "
             "is NaN. Keep the running max over the tiles and subtract 0 where it is still -inf.")
_ATTN_HINT = ("for each block of queries: m = -inf, l = 0, acc = 0 per row; for each block of keys: s = q_b k_bᵀ / √d, "
              "with causal=True set s to -inf where key j > query i + Tk - Tq; m_new = max(m, s.amax(-1)); "
              "p = exp(s - m_new) (0 in place of m_new where it is -inf); alpha = exp(m - m_new); "
              "l = alpha * l + p.sum(-1); acc = alpha * acc + p @ v_b; m = m_new. Then out = acc / l (0 where l = 0).")


def _diagnose_attention(args: tuple, got: torch.Tensor) -> str | None:
    q, k, v, causal, block_q, block_k = args
    expected = reference_tiled_attention(*args)
    for kwargs, message in _ATTN_VARIANTS:
        mistake = _attention_by_hand(*args, **kwargs)
        if not _same(mistake, expected, rtol=ATTN_RTOL, atol=ATTN_ATOL) and _same(got, mistake, rtol=1e-3,
                                                                                   atol=1e-4):
            return message
    bad = ~torch.isfinite(got.detach().to("cpu", torch.float64))
    if not bool(bad.any()):
        return _LOW_PRECISION if _low_precision(got, expected) else None
    t_q, t_k = q.shape[-2], k.shape[-2]
    no_key = torch.zeros(t_q, dtype=torch.bool)
    if causal and t_q > t_k:
        no_key[:t_q - t_k] = True  # query i sees keys j <= i + Tk - Tq: none while that is negative
    rows = bad.any(-1)  # (..., Tq)
    if bool((rows & ~no_key).any()):
        scores = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])
        return _ATTN_OVERFLOW if bool(scores.amax() > 88.7) else _ATTN_NAN
    return _ATTN_NO_KEY


def check_tiled_attention(fn) -> bool:
    """fn(q, k, v, causal, block_q, block_k) -> softmax(q kᵀ / √d) v, computed tile by tile (FlashAttention).

    q (B, H, Tq, d), k and v (B, H, Tk, d), float32; return (B, H, Tq, d). For each block of block_q queries (the
    outer loop) walk over the blocks of block_k keys and values (the inner loop); the last block of either may be
    shorter. Per query row keep the running max m (-inf), the running sum l = Σ exp(s - m) (0) and the accumulator
    acc = Σ exp(s - m) · v (0). For a tile of scores s = q_block k_blockᵀ / √d:

        m_new = max(m, rowmax s);  p = exp(s - m_new);  alpha = exp(m - m_new)
        l ← alpha · l + rowsum p;  acc ← alpha · acc + p v_block;  m ← m_new

    and after the last tile, out = acc / l. With causal=True, query i is token Tk - Tq + i (bottom-right, as with
    a KV cache) and sees the keys j <= Tk - Tq + i: set the other scores to -inf. A row that sees no key (more
    queries than keys) outputs zeros, never NaN: subtract 0 where m_new is still -inf, and divide only where l > 0.

    Checked against course_lib.attention.reference.naive_attention (the whole score matrix, in float64) on random
    q, k, v with Tq, Tk in {6..50} (ragged: 50, 37, 33 tokens), head_dim 8..32, batch and heads 1..3, block sizes
    that divide the length or not, and one block larger than the sequence, causal and not, seeds 0, 1, 2; then more
    queries than keys (rows that see no key), one query, one key, tiles of one score, and scores near 100.
    Tolerance: |got - expected| <= 1e-4 + 1e-4 * |expected| (float32 needs 1.2e-5 where every score is near 100).
    """
    labels, cases = tiled_attention_cases()
    return check_tensor_cases("tiled_attention", fn, cases, reference_tiled_attention, atol=ATTN_ATOL,
                              rtol=ATTN_RTOL, labels=labels, hint=_ATTN_HINT, diagnose=_diagnose_attention)


# --- 3. the backward pass, tile by tile from the logsumexp ------------------------------------------------------------

# (batch, heads, Tq, Tk, head_dim, block_q, block_k, causal): ragged, bottom-right, more queries than keys
BWD_SHAPES = ((1, 1, 16, 16, 8, 4, 4, True), (2, 2, 37, 50, 16, 16, 8, True), (1, 2, 33, 33, 8, 8, 16, False),
              (1, 1, 13, 5, 8, 4, 2, True), (1, 2, 1, 29, 16, 1, 8, True))
# Gradients of entries near 1, computed in float64 by the reference; a float32 solution is right to about 1e-6.
BWD_ATOL, BWD_RTOL = 1e-4, 1e-4


def attention_backward_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (q, k, v, out, lse, do, causal, block_q, block_k)) of check_attention_backward:
    out and lse from the forward pass (float32; lse natural, +inf for a row that sees no key)."""
    from ..attention.tiled import flash_attention_tiled

    labels, cases = [], []
    for seed in ATTN_SEEDS:
        for b, h, t_q, t_k, d, bq, bk, causal in BWD_SHAPES:
            g = torch.Generator().manual_seed(100 * seed + t_q + t_k)
            q, k, v = _qkv(g, b, h, t_q, t_k, d)
            do = torch.randn(q.shape, generator=g)
            out, lse = flash_attention_tiled(q, k, v, causal=causal, block_q=bq, block_k=bk, return_lse=True)
            extra = ", the first 8 queries see no key" if causal and t_q > t_k else ""
            labels.append(f"seed {seed}, {_attn_label(q, k, causal, bq, bk)}{extra}")
            cases.append((q, k, v, out, lse, do, causal, bq, bk))
    return labels, cases


def reference_attention_backward(q, k, v, out, lse, do, causal, block_q, block_k):
    """Autograd through naive_attention in float64 (the whole score matrix; the blocks change only rounding)."""
    x = [t.double().requires_grad_() for t in (q, k, v)]
    naive_attention(*x, causal=causal, dtype=torch.float64).backward(do.double())
    return tuple(t.grad for t in x)


def _backward_by_hand(q, k, v, out, lse, do, causal, block_q, block_k, *, delta: str = "dO.O", grad_scale: bool = True,
                      mask: str = "bottom_right", use_lse: bool = True, keys_tail: bool = True):
    """The tiled backward in float64 with one choice passed in (for the diagnosis); the defaults give the answer.
    delta: "dO.O", "none" (dS = P dP), "rowsum dP" (Δ as the row sum of dP, not of P dP). mask as in
    _attention_by_hand ("bottom_right", "top_left", "never")."""
    q, k, v, out, lse, do = (t.double() for t in (q, k, v, out, lse, do))
    t_q, t_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1 / math.sqrt(d)
    offset = 0 if mask == "top_left" else t_k - t_q
    dlt = (do * out).sum(-1)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    k_stop = t_k if keys_tail else t_k - t_k % block_k
    for ks in range(0, k_stop, block_k):
        kb, vb = k[..., ks:ks + block_k, :], v[..., ks:ks + block_k, :]
        for qs in range(0, t_q, block_q):
            qb, dob = q[..., qs:qs + block_q, :], do[..., qs:qs + block_q, :]
            s = scale * qb @ kb.transpose(-2, -1)
            if causal and mask != "never":
                pos = torch.arange(qs, qs + qb.shape[-2]) + offset
                s = s.masked_fill(torch.arange(ks, ks + kb.shape[-2])[None, :] > pos[:, None], NEG_INF)
            if use_lse:
                p = torch.exp(s - lse[..., qs:qs + block_q, None].double())
            else:
                p = torch.exp(s)
            dv[..., ks:ks + block_k, :] += p.transpose(-2, -1) @ dob
            dp = dob @ vb.transpose(-2, -1)
            if delta == "none":
                ds = p * dp
            elif delta == "rowsum dP":
                ds = p * (dp - dp.sum(-1, keepdim=True))
            else:
                ds = p * (dp - dlt[..., qs:qs + block_q, None])
            factor = scale if grad_scale else 1.0
            dq[..., qs:qs + block_q, :] += factor * ds @ kb
            dk[..., ks:ks + block_k, :] += factor * ds.transpose(-2, -1) @ qb
    return dq, dk, dv


_BWD_VARIANTS = (
    (dict(delta="none"), ("you left out Δ: the softmax's Jacobian gives dS = P ∘ (dP - Δ) with Δ_i = Σ_j P_ij dP_ij, "
                          "and Δ_i = dO_i · O_i (one number per row, from out and do, before the loop).")),
    (dict(delta="rowsum dP"), ("your Δ is the row sum of dP within the tile: Δ_i = Σ_j P_ij dP_ij over the whole row, "
                               "which no tile holds; compute it as (do * out).sum(-1) before the loop.")),
    (dict(grad_scale=False), ("your dQ and dK miss the scale: S = scale · Q Kᵀ, so dQ = scale · dS K and "
                              "dK = scale · dSᵀ Q, with scale = 1/√d.")),
    (dict(use_lse=False), ("you took P = exp(S) without the logsumexp: the forward pass's lse normalises it, "
                           "P = exp(S - lse[..., None]) (a row's probabilities sum to 1).")),
    (dict(mask="top_left"), ("your causal mask is aligned top-left. Query i is token Tk - Tq + i and sees the keys "
                             "j <= Tk - Tq + i (bottom-right, as in the forward pass).")),
    (dict(mask="never"), ("with causal=True the keys after a query get no gradient from it: set those scores to "
                          "-inf before P = exp(S - lse), as the forward pass did.")),
    (dict(keys_tail=False), ("you skipped the last, shorter block of keys (Tk is not a multiple of block_k): "
                             "range(0, Tk, block_k) reaches it.")),
)
_BWD_NAN = ("your gradients have NaN: in a row that sees no key, lse is +inf and every score -inf, and "
            "exp(-inf - inf) is 0, but -inf - (-inf) is NaN: subtract lse, never a running max, in the backward pass.")
_BWD_HINT = ("Δ = (do * out).sum(-1); for each block of keys and each block of queries: S = q_b k_bᵀ / √d (-inf where "
             "key j > query i + Tk - Tq, when causal); P = exp(S - lse_b[..., None]); dV_b += Pᵀ dO_b; "
             "dP = dO_b V_bᵀ; dS = P (dP - Δ_b[..., None]); dQ_b += dS K_b / √d; dK_b += dSᵀ Q_b / √d.")


def _compare_grads(got: Any, expected: tuple) -> tuple[str, Any]:
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return f"expected a tuple (dq, dk, dv) of three tensors, got {type(got).__name__} {_short(got)}.", None
    for name, g, e in zip(("dq", "dk", "dv"), got, expected):
        problem, comparable = _tensor_mismatch(g, e, BWD_ATOL, BWD_RTOL, torch)
        if problem:
            return f"{name}: {problem}", (tuple(got) if comparable else None)
    return "", None


def _diagnose_backward(args: tuple, got: tuple) -> str | None:
    expected = reference_attention_backward(*args)
    for kwargs, message in _BWD_VARIANTS:
        mistake = _backward_by_hand(*args, **kwargs)
        differs = any(not _same(m, e, rtol=BWD_RTOL, atol=BWD_ATOL) for m, e in zip(mistake, expected))
        if differs and all(_same(g, m, rtol=1e-3, atol=1e-4) for g, m in zip(got, mistake)):
            return message
    if any(bool(torch.isnan(torch.as_tensor(g)).any()) for g in got):
        return _BWD_NAN
    return None


def check_attention_backward(fn) -> bool:
    """fn(q, k, v, out, lse, do, causal, block_q, block_k) -> (dq, dk, dv): attention's backward pass, tile by tile.

    q (B, H, Tq, d), k and v (B, H, Tk, d), out (B, H, Tq, d) and lse (B, H, Tq) from the forward pass (lse: each
    row's natural logsumexp of its scores S = q kᵀ / √d, +inf for a row that sees no key), do the gradient of the
    output; all float32. Return the gradients of the loss with respect to q, k and v, computed a tile at a time,
    never the whole (Tq, Tk) matrix: with Δ = (do * out).sum(-1), for each tile of keys and queries

        S = q_b k_bᵀ / √d (-inf above the bottom-right diagonal when causal);  P = exp(S - lse_b)
        dV_b += Pᵀ dO_b;  dP = dO_b V_bᵀ;  dS = P ∘ (dP - Δ_b);  dQ_b += dS K_b / √d;  dK_b += dSᵀ Q_b / √d

    Checked against autograd through naive_attention in float64 on ragged lengths, block sizes that divide them or
    not, causal and not, more queries than keys (rows with no key: zero gradients) and one query, seeds 0, 1, 2.
    Tolerance: |got - expected| <= 1e-4 + 1e-4 * |expected| for each of dq, dk, dv.
    """
    labels, cases = attention_backward_cases()
    return check_against("attention_backward", fn, cases, reference_attention_backward, _compare_grads,
                         labels=labels, hint=_BWD_HINT, diagnose=_diagnose_backward)


WARM_UPS = ("online_sum", "score_bytes", "causal_tiles")
EXERCISES = {"online_sum": check_online_sum, "score_bytes": check_score_bytes, "causal_tiles": check_causal_tiles,
             "online_softmax_stats": check_online_softmax_stats, "tiled_attention": check_tiled_attention,
             "attention_backward": check_attention_backward}
