"""Naive attention, the reference every faster version is checked against, and what it costs in memory."""

from __future__ import annotations

import math

import torch

from ..kv.attention import visible  # the bottom-right causal mask, written in chapter 09


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int]:
    """Validate (B, H, Tq, d) queries against (B, H_kv, Tk, d) keys/values; return (H, H_kv)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (batch, heads, tokens, head_dim); got {q.dim()}-D, {k.dim()}-D, "
                         f"{v.dim()}-D. Add the missing dimensions with .view or [None].")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}.")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch and head_dim.")
    h, h_kv = q.shape[1], k.shape[1]
    if h % h_kv:
        raise ValueError(f"{h} query heads cannot share {h_kv} KV heads: the query heads must be a multiple.")
    return h, h_kv


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                    scale: float | None = None, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """softmax(q kᵀ / √d) v with the whole (Tq, Tk) score matrix in memory.

    dtype: what the scores, probabilities and products are computed in: float32 by default (the
    reference), None for the inputs' own dtype (a 16-bit naive path: half the bytes per score).
    GQA: query head h reads KV head h // (H / H_kv). A row that sees no key outputs zeros.
    """
    h, h_kv = check_shapes(q, k, v)
    k, v = k.repeat_interleave(h // h_kv, dim=1), v.repeat_interleave(h // h_kv, dim=1)
    dtype = dtype or q.dtype
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * scale  # (B, H, Tq, Tk): the n² matrix
    scores = scores.masked_fill(~visible(q.shape[2], k.shape[2], causal, q.device), float("-inf"))
    probs = torch.nan_to_num(torch.softmax(scores, dim=-1))  # all -inf row: NaN -> 0
    return (probs @ v.to(dtype)).to(q.dtype)


def naive_memory_bytes(batch: int, heads: int, q_len: int, k_len: int | None = None, *,
                       bytes_per_element: int = 4) -> dict[str, int]:
    """The score matrix and the probability matrix naive attention materialises (each n² per head)."""
    k_len = q_len if k_len is None else k_len
    one = batch * heads * q_len * k_len * bytes_per_element
    return {"scores": one, "probabilities": one, "total": 2 * one}
