"""Attention with a KV cache, written out: RoPE, the bottom-right causal mask, GQA's head mapping.

The seed's ``AttentionWithKVCache`` (003 §6.5.1) concatenates new keys onto cached ones, which is
the whole idea, but as printed it cannot generate text correctly:

* it has **no causal mask**, so during the prefill every prompt token attends to later tokens;
* it has **no positions**: with RoPE a new token's query and key must be rotated by its absolute
  position, which is the cache length before the step, not 0;
* ``next_token_id.unsqueeze(0)`` turns a batch of B next tokens into shape (1, B); the step input
  must be (B, 1);
* ``if next_token_id == eos_token_id`` is ambiguous for B > 1, and the finished rows must keep
  emitting padding while the others go on.

This module fixes each of those. Shapes: hidden states (B, T, D); per-head tensors (B, H, T, d).
"""

from __future__ import annotations

import math

import torch
from torch import nn


# ----------------------------------------------------------------------------- the causal mask
def visible(q_len: int, k_len: int, causal: bool, device=None) -> torch.Tensor:
    """Bool (q_len, k_len): may query i see key j? Causal masks align bottom-right (query i is token
    k_len - q_len + i), so with q_len > k_len the first rows see nothing."""
    if not causal:
        return torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    i = torch.arange(q_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= i + (k_len - q_len)


# ----------------------------------------------------------------------------- RoPE
def rope_frequencies(head_dim: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """θ_i = theta^(-2i/d) for i < d/2: the rotation speed of each channel pair."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}.")
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * θ for positions (B, T): each (B, T, d), channel pairs (i, i + d/2)."""
    angles = positions[..., None].float() * inv_freq  # (B, T, d/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) by its angle: x·cos + rotate_half(x)·sin, x of shape (B, H, T, d)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


# ----------------------------------------------------------------------------- masks and heads
def causal_mask(q_len: int, k_len: int, device=None) -> torch.Tensor:
    """Bool (q_len, k_len), True where query i may see key j.

    The queries are the *last* q_len of the k_len positions (decoding with a cache), so the
    diagonal is aligned bottom-right: query i sees keys 0 .. k_len - q_len + i. With q_len == k_len
    this is the usual lower triangle; with q_len == 1 the single query sees everything.
    """
    if q_len > k_len:
        raise ValueError(f"{q_len} queries but only {k_len} keys: the cache must already hold the new tokens.")
    return visible(q_len, k_len, causal=True, device=device)


def kv_head_for_query_head(n_heads: int, n_kv_heads: int) -> list[int]:
    """GQA's mapping: query head h reads KV head h // (n_heads / n_kv_heads)."""
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}.")
    group = n_heads // n_kv_heads
    return [h // group for h in range(n_heads)]


def repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Expand (B, n_kv, T, d) to (B, n_heads, T, d): each KV head repeated for its group of query heads.

    This is repeat_interleave (KV heads 0,0,1,1 for 4 query heads over 2 KV heads), not tiling
    (0,1,0,1): consecutive query heads share a KV head.
    """
    n_kv = x.shape[1]
    kv_head_for_query_head(n_heads, n_kv)  # validates
    return x if n_kv == n_heads else x.repeat_interleave(n_heads // n_kv, dim=1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, key_mask: torch.Tensor | None = None,
           scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) v for q (B, H, Tq, d) and k, v (B, H_kv, Tk, d), causal bottom-right.

    key_mask: optional bool (B, Tk), False for padding keys. Softmax in float32.
    """
    n_heads, q_len, k_len = q.shape[1], q.shape[2], k.shape[2]
    k, v = repeat_kv(k, n_heads), repeat_kv(v, n_heads)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)).float() * scale  # (B, H, Tq, Tk)
    return masked_softmax(scores, key_mask).to(v.dtype) @ v


def masked_softmax(scores: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax of (B, H, Tq, Tk) scores over the keys each query may see: causal (bottom-right) and,
    with key_mask (B, Tk), not padding. A row with no visible key gives zeros, not NaN."""
    q_len, k_len = scores.shape[-2:]
    allowed = causal_mask(q_len, k_len, scores.device)[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :].bool()
    return torch.nan_to_num(torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1))


# ----------------------------------------------------------------------------- the module
class KVCache:
    """The plain cache: per layer, keys and values (B, H_kv, T, d) that grow by concatenation.

    ``update(layer, k, v)`` appends the new tokens and returns everything cached for that layer,
    which is what attention needs. Quantized caches (``course_lib.kv.quant``) keep the same interface.
    """

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def seq_len(self, layer: int = 0) -> int:
        k = self.keys[layer]
        return 0 if k is None else k.shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = k, v
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]

    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


class AttentionWithKVCache(nn.Module):
    """Multi-head attention with RoPE, GQA and a cache; the seed's class, corrected.

    n_kv_heads == n_heads is MHA, 1 < n_kv_heads < n_heads is GQA, n_kv_heads == 1 is MQA.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, head_dim: int | None = None,
                 rope_theta: float = 10000.0, bias: bool = False):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        kv_head_for_query_head(n_heads, n_kv_heads)
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = head_dim or d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=False)
        self.register_buffer("inv_freq", rope_frequencies(self.head_dim, rope_theta), persistent=False)

    def split_heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, *, cache: KVCache | None = None, layer: int = 0,
                key_mask: torch.Tensor | None = None, kv_hook=None) -> torch.Tensor:
        """x (B, T, D) at absolute `positions` (B, T); returns (B, T, D).

        With a cache, the new keys/values are appended and attention runs over everything cached.
        key_mask (B, T_total): False for padding. kv_hook(q, k, v) may replace the attention call
        (the quantization simulation of ``course_lib.kv.quant`` uses it).
        """
        q = self.split_heads(self.q_proj(x), self.n_heads)
        k = self.split_heads(self.k_proj(x), self.n_kv_heads)
        v = self.split_heads(self.v_proj(x), self.n_kv_heads)
        cos, sin = rope_cos_sin(positions, self.inv_freq)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # rotate by the absolute position
        if cache is not None:
            k, v = cache.update(layer, k, v)
        out = kv_hook(q, k, v, key_mask) if kv_hook is not None else attend(q, k, v, key_mask=key_mask)
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
