"""Reference solutions for chapter 09's exercises (kept out of the notebooks)."""


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
