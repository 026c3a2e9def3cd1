"""Reference solutions for chapter 10's exercises (kept out of the notebooks)."""

import math


def online_sum(m: float, l: float, x: float) -> float:
    # Rescale the old sum to the new max, then add the new term.
    m_new = max(m, x)
    return l * math.exp(m - m_new) + math.exp(x - m_new)


def score_bytes(batch: int, heads: int, seq_len: int, bytes_per_element: int) -> float:
    return batch * heads * seq_len * seq_len * bytes_per_element


def causal_tiles(n_blocks: int) -> int:
    # Query block i sees key blocks 0..i.
    return n_blocks * (n_blocks + 1) // 2
