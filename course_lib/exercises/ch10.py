"""Checks for chapter 10: the online softmax update, the naive score matrix's memory, causal tiles."""

from __future__ import annotations

import math

from . import check_cases


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


EXERCISES = {"online_sum": check_online_sum, "score_bytes": check_score_bytes, "causal_tiles": check_causal_tiles}
