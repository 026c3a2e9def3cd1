"""Softmax in two passes and in one, the trick that lets FlashAttention never hold a whole row.

softmax(x)_i = exp(x_i - m) / Σ_j exp(x_j - m) with m = max x (subtracting m avoids overflow).

* Two passes: the first finds m, the second sums exp(x_j - m); then each output is one division.
* One pass: keep a running max m and a running sum l of exp(x_j - m). When a larger value
  arrives, the old sum was taken against the wrong max; multiplying it by exp(m_old - m_new)
  corrects it: l ← l·exp(m_old - m_new) + exp(x_i - m_new).
* Blocks: two partial (m, l) pairs merge the same way, so a row can be processed block by block,
  in any order, which is exactly what a tiled attention kernel needs.
* ``row_stats``: the (m, l) a pass must end with, computed directly (masked rows included): a reference.

The loops run over the last dimension one element (or block) at a time, vectorised over the rest.
"""

from __future__ import annotations

import torch


def softmax_two_pass(x: torch.Tensor) -> torch.Tensor:
    m = torch.full(x.shape[:-1], float("-inf"), dtype=torch.float32, device=x.device)
    for i in range(x.shape[-1]):  # pass 1: the max
        m = torch.maximum(m, x[..., i].float())
    total = torch.zeros_like(m)
    for i in range(x.shape[-1]):  # pass 2: the sum of exponentials
        total = total + torch.exp(x[..., i].float() - m)
    return (torch.exp(x.float() - m[..., None]) / total[..., None]).to(x.dtype)


def online_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The running max m and sum l = Σ exp(x_j - m) after one pass over the last dimension."""
    m = torch.full(x.shape[:-1], float("-inf"), dtype=torch.float32, device=x.device)
    l = torch.zeros_like(m)
    for i in range(x.shape[-1]):
        xi = x[..., i].float()
        m_new = torch.maximum(m, xi)
        l = l * torch.exp(m - m_new) + torch.exp(xi - m_new)  # rescale the old sum to the new max
        m = m_new
    return m, l


def softmax_online(x: torch.Tensor) -> torch.Tensor:
    """One pass for the statistics, then the outputs exp(x_i - m) / l."""
    m, l = online_stats(x)
    return (torch.exp(x.float() - m[..., None]) / l[..., None]).to(x.dtype)


def merge_stats(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine (m, l) of two parts of a row into the (m, l) of the whole row."""
    (m1, l1), (m2, l2) = a, b
    m = torch.maximum(m1, m2)
    return m, l1 * torch.exp(m1 - m) + l2 * torch.exp(m2 - m)


def softmax_blocked(x: torch.Tensor, block: int) -> torch.Tensor:
    """Statistics block by block (each block reduced on its own, then merged), then the outputs."""
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}.")
    stats = None
    for s in range(0, x.shape[-1], block):
        part = x[..., s:s + block].float()
        local = (part.amax(-1), torch.exp(part - part.amax(-1, keepdim=True)).sum(-1))
        stats = local if stats is None else merge_stats(stats, local)
    m, l = stats
    return (torch.exp(x.float() - m[..., None]) / l[..., None]).to(x.dtype)


def row_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (m, l) that any pass over a row must end with, computed directly in float64: m = max x, l = Σ exp(x - m).

    Masked scores are -inf and add nothing. A row with no finite score (fully masked) has m = -inf and l = 0,
    where exp(x - m) alone would give NaN; the reference for chapter 10's online-softmax exercise.
    """
    x = x.double()
    m = x.amax(-1)
    shift = torch.where(m == float("-inf"), 0.0, m)  # a fully masked row: exp(-inf - 0) = 0, not NaN
    return m, torch.exp(x - shift[..., None]).sum(-1)
