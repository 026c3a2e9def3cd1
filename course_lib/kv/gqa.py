"""Change how many KV heads a model has: mean-pool them (MHA → GQA → MQA) or duplicate them back.

The GQA paper (Ainslie et al., 2023) turns a multi-head checkpoint into a grouped-query one by
**mean-pooling** the key and value projection heads of each group, then "uptraining" briefly.
Pooling is exact only if the heads in a group were identical; otherwise the model changes and a
short fine-tune recovers part of the loss. Duplicating heads goes the other way and is exact: a
GQA model *is* an MHA model whose heads in a group happen to be equal, at n_heads / n_kv times
the cache.

Grouping follows the runtime mapping, query head h → KV head h // (n_heads / n_kv): the new KV head
i averages old KV heads i·r .. i·r + r - 1, which are exactly the ones its query heads used.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .attention import kv_head_for_query_head


def _attention_modules(model) -> list[nn.Module]:
    mods = [m for m in model.modules() if all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))]
    if not mods:
        raise ValueError(f"{type(model).__name__} has no q/k/v/o_proj attention modules; KV-head conversion "
                         "supports Llama-style models (Llama, Qwen2, Mistral).")
    return mods


def _regroup(linear: nn.Linear, n_old: int, n_new: int, head_dim: int) -> nn.Linear:
    """Rows of a k/v projection regrouped from n_old to n_new heads (mean when fewer, copy when more)."""
    w = linear.weight.data.view(n_old, head_dim, -1)
    b = None if linear.bias is None else linear.bias.data.view(n_old, head_dim)
    if n_new < n_old:
        r = n_old // n_new
        w = w.view(n_new, r, head_dim, -1).mean(1)
        b = None if b is None else b.view(n_new, r, head_dim).mean(1)
    else:
        r = n_new // n_old
        w = w.repeat_interleave(r, dim=0)
        b = None if b is None else b.repeat_interleave(r, dim=0)
    out = nn.Linear(linear.in_features, n_new * head_dim, bias=b is not None, device=w.device, dtype=w.dtype)
    out.weight.data.copy_(w.reshape(n_new * head_dim, -1))
    if b is not None:
        out.bias.data.copy_(b.reshape(-1))
    return out


def convert_kv_heads(model, n_kv_heads: int, *, inplace: bool = False):
    """The model with `n_kv_heads` KV heads: mean-pooled groups (fewer) or duplicated heads (more).

    n_kv_heads must divide the query heads, and the old and new counts must divide one another.
    """
    _attention_modules(model)  # fails clearly for architectures without q/k/v/o projections
    c = model.config
    n_heads, n_old = c.num_attention_heads, c.num_key_value_heads
    kv_head_for_query_head(n_heads, n_kv_heads)
    if max(n_old, n_kv_heads) % min(n_old, n_kv_heads):
        raise ValueError(f"Cannot regroup {n_old} KV heads into {n_kv_heads}: one count must divide the other "
                         f"(with {n_heads} query heads, try one of "
                         f"{[k for k in range(1, n_heads + 1) if n_heads % k == 0 and (k % n_old == 0 or n_old % k == 0)]}).")
    model = model if inplace else copy.deepcopy(model)
    for attn in _attention_modules(model):
        head_dim = attn.k_proj.out_features // n_old
        attn.k_proj = _regroup(attn.k_proj, n_old, n_kv_heads, head_dim)
        attn.v_proj = _regroup(attn.v_proj, n_old, n_kv_heads, head_dim)
        if hasattr(attn, "num_key_value_groups"):
            attn.num_key_value_groups = n_heads // n_kv_heads
    model.config.num_key_value_heads = n_kv_heads
    return model


def attention_kind(n_heads: int, n_kv_heads: int) -> str:
    return "MHA" if n_kv_heads == n_heads else "MQA" if n_kv_heads == 1 else "GQA"


def group_similarity(model) -> float:
    """Mean cosine similarity between the key-projection heads that pooling to MQA would average.

    1.0 would make pooling exact; the lower it is, the more pooling changes the model.
    """
    n_old = model.config.num_key_value_heads
    sims = []
    for attn in _attention_modules(model):
        w = attn.k_proj.weight.data.view(n_old, -1).float()
        w = w / w.norm(dim=1, keepdim=True)
        s = w @ w.T
        sims.append(s[~torch.eye(n_old, dtype=torch.bool)].mean().item() if n_old > 1 else 1.0)
    return sum(sims) / len(sims)
