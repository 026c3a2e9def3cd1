"""Reference solutions for chapter 09's exercises (kept out of the notebooks)."""

import math

import torch


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, seq_len: int, batch: int, bytes_per_element: float) -> float:
    # One key and one value vector per layer, KV head and token; query heads do not enter.
    return 2 * layers * kv_heads * head_dim * seq_len * batch * bytes_per_element


def kv_head(h: int, n_heads: int, n_kv_heads: int) -> int:
    # Groups of n_heads // n_kv_heads consecutive query heads share one KV head.
    return h // (n_heads // n_kv_heads)


def blocks_needed(n_tokens: int, block_size: int) -> int:
    # Ceiling division: a partly filled last block still takes a whole block.
    return -(-n_tokens // block_size)


def kivi_bits(bits: int, group: int) -> float:
    # Codes of `bits` each, plus a 16-bit scale and a 16-bit zero point shared by `group` numbers.
    return bits + 32 / group


def decode_step(q, k, v, k_cache, v_cache, attention_mask, inv_freq):
    B, H, _, d = q.shape
    T, H_kv = k_cache.shape[2], k_cache.shape[1]
    # 1. Each row's position: its real tokens before the new one (left padding has no position).
    position = attention_mask[:, :T].sum(1)  # (B,)
    # 2. RoPE: rotate each channel pair (i, i + d/2) of q and k (not v) by position * inv_freq[i].
    angles = position[:, None].float() * inv_freq[None, :]  # (B, d/2)
    cos = torch.cat([angles, angles], -1).cos()[:, None, None, :]  # (B, 1, 1, d)
    sin = torch.cat([angles, angles], -1).sin()[:, None, None, :]

    def rotate(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    q, k = rotate(q), rotate(k)
    # 3. The cache update: the rotated key and the value go at the end, in token order.
    k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)
    # 4. Attention over the T + 1 keys: GQA repeats each KV head for H // H_kv consecutive query heads.
    keys = k_cache.repeat_interleave(H // H_kv, dim=1)
    values = v_cache.repeat_interleave(H // H_kv, dim=1)
    scores = q @ keys.transpose(-1, -2) / math.sqrt(d)  # (B, H, 1, T + 1)
    scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
    return torch.softmax(scores, dim=-1) @ values, k_cache, v_cache


def paged_append(k_blocks, table, seq_len, k_new, refcount, free):
    block_size, n = k_blocks.shape[1], k_new.shape[0]
    # 1. Copy-on-write: a shared, partly filled last block is copied before anything is written into it.
    if n > 0 and seq_len % block_size != 0 and refcount[table[-1]] > 1:
        old, new = table[-1], free.pop()
        refcount[new] = 1
        k_blocks[new] = k_blocks[old]
        refcount[old] -= 1  # the other sequences keep the old block
        table[-1] = new
    # 2. Blocks on demand: ceil((seq_len + n) / block_size) in all.
    while len(table) < -(-(seq_len + n) // block_size):
        block = free.pop()
        refcount[block] = 1
        table.append(block)
    # 3. Slot mapping: token t lives in block table[t // block_size] at offset t % block_size.
    for j in range(n):
        t = seq_len + j
        k_blocks[table[t // block_size], t % block_size] = k_new[j]
    return k_blocks, table, refcount, free
