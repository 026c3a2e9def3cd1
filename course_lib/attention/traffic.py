"""How many elements naive and tiled attention move between HBM and the chip: an exact counting model.

One (batch, head) with n queries, n keys and head_dim d; every load of a tile counts as an HBM read
(no cache between HBM and on-chip SRAM, the model of the FlashAttention paper, Dao et al. 2022, §3.2).

* naive (the paper's Algorithm 0): read Q, K, write S; read S, write P; read P, V, write O.
  4nd + 4n² elements: Θ(nd + n²).
* tiled, FlashAttention-2's order (queries outside, as ``tiled.py`` and the Triton kernel): each query
  block is read once and its output written once; the key and value blocks it needs are re-read for
  every query block. 2nd + 2d·Σ_i keys_i elements, ≈ 2nd + 2n²d / block_q without a causal mask.
* tiled, FlashAttention-1's order (keys outside, the paper's Algorithm 1): K and V are read once; for
  every key block, all of Q, O, l and m are read and O, l, m written back.

With SRAM of M elements the paper picks block_k = ⌈M / 4d⌉ and block_q = min(⌈M / 4d⌉, d), which
makes both tiled orders Θ(n²d² / M) (its Theorem 2). Seed 003 §6.8 Q3's O(n²d) and O(nd) are not these:
n²d counts the arithmetic, not the traffic, and the tiled traffic still grows as n².
"""

from __future__ import annotations

import math


def _check(n: int, d: int, *blocks: int) -> None:
    if n < 1 or d < 1 or any(b < 1 for b in blocks):
        raise ValueError(f"n, d and block sizes must be positive integers; got n={n}, d={d}, blocks={blocks}.")


def naive_traffic(n: int, d: int) -> dict[str, int]:
    """Elements read and written by naive attention for one head (the paper's Algorithm 0)."""
    _check(n, d)
    parts = {"Q, K, V read": 3 * n * d, "O written": n * d, "S written and read": 2 * n * n,
             "P written and read": 2 * n * n}
    return {**parts, "total": sum(parts.values())}


def keys_per_query_block(n: int, block_q: int, block_k: int, *, causal: bool) -> list[int]:
    """How many keys each query block loads: all n, or (causal) the key blocks up to its diagonal."""
    _check(n, 1, block_q, block_k)
    keys = []
    for qs in range(0, n, block_q):
        stop = min(n, qs + block_q) if causal else n  # last key any row of this block may see, plus one
        keys.append(min(n, math.ceil(stop / block_k) * block_k))  # whole key blocks are loaded
    return keys


def tiled_traffic(n: int, d: int, block_q: int, block_k: int, *, causal: bool = False) -> dict[str, int]:
    """Elements read and written by FlashAttention-2's loop order for one head."""
    _check(n, d, block_q, block_k)
    parts = {"Q read": n * d, "O written": n * d,
             "K, V read": 2 * d * sum(keys_per_query_block(n, block_q, block_k, causal=causal))}
    return {**parts, "total": sum(parts.values())}


def fa1_traffic(n: int, d: int, block_q: int, block_k: int) -> dict[str, int]:
    """Elements read and written by FlashAttention-1's loop order (the paper's Algorithm 1), non-causal."""
    _check(n, d, block_q, block_k)
    t_c = math.ceil(n / block_k)  # key blocks: the outer loop
    parts = {"O, l, m initialised": n * (d + 2), "K, V read": 2 * n * d,
             "Q, O, l, m read per key block": t_c * n * (2 * d + 2),
             "O, l, m written per key block": t_c * n * (d + 2)}
    return {**parts, "total": sum(parts.values())}


def paper_blocks(sram_elements: int, d: int) -> tuple[int, int]:
    """(block_q, block_k) that the paper's Algorithm 1 picks for SRAM of M elements: min(⌈M/4d⌉, d), ⌈M/4d⌉."""
    if sram_elements < d:
        raise ValueError(f"SRAM of {sram_elements} elements cannot hold one row of head_dim {d} (need M >= d).")
    block_k = math.ceil(sram_elements / (4 * d))
    return min(block_k, d), block_k


def paper_orders(n: int, d: int, sram_elements: int) -> dict[str, float]:
    """The two bounds of the paper's Theorem 2, without their constants: n·d + n² and n²·d² / M."""
    return {"naive": n * d + n * n, "tiled": n * n * d * d / sram_elements}
