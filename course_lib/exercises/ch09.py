"""Checks for chapter 09: cache bytes, GQA's head mapping, paged blocks, KIVI's bits per number."""

from __future__ import annotations

from . import check_cases


def check_kv_cache_bytes(fn) -> bool:
    """fn(layers, kv_heads, head_dim, seq_len, batch, bytes_per_element) -> bytes of the K and V cache."""
    cases = [((32, 32, 128, 4096, 1, 2), 2 * 32 * 32 * 128 * 4096 * 2),      # Llama-2-7B, fp16, 4k
             ((32, 8, 128, 4096, 1, 2), 2 * 32 * 8 * 128 * 4096 * 2),        # Llama-3-8B (GQA)
             ((80, 8, 128, 131072, 1, 2), 2 * 80 * 8 * 128 * 131072 * 2),    # Llama-3.1-70B at 128k
             ((8, 2, 64, 512, 4, 1), 2 * 8 * 2 * 64 * 512 * 4 * 1)]          # the course model, fp8, batch 4
    return check_cases("kv_cache_bytes", fn, cases,
                       hint="2 (K and V) x layers x KV heads (not query heads) x head_dim x tokens x batch x bytes.")


def check_kv_head(fn) -> bool:
    """fn(h, n_heads, n_kv_heads) -> the KV head that query head h reads under GQA."""
    cases = [((0, 32, 8), 0), ((3, 32, 8), 0), ((4, 32, 8), 1), ((31, 32, 8), 7), ((5, 8, 8), 5), ((7, 8, 1), 0),
             ((13, 16, 4), 3)]
    return check_cases("kv_head", fn, cases,
                       hint="consecutive query heads share a KV head: h // (n_heads // n_kv_heads), not h % n_kv_heads.")


def check_blocks_needed(fn) -> bool:
    """fn(n_tokens, block_size) -> how many cache blocks a sequence of n_tokens occupies."""
    cases = [((1, 16), 1), ((16, 16), 1), ((17, 16), 2), ((338, 16), 22), ((2048, 16), 128), ((100, 32), 4)]
    return check_cases("blocks_needed", fn, cases, hint="ceil(n_tokens / block_size), in integers: -(-n // b).")


def check_kivi_bits(fn) -> bool:
    """fn(bits, group) -> stored bits per cached number in KIVI's quantized part (keys per channel over `group`
    tokens, values per token over `group` channels, each group with an fp16 scale and an fp16 zero point)."""
    cases = [((2, 32), 3.0), ((4, 32), 5.0), ((2, 128), 2.25), ((4, 64), 4.5)]
    return check_cases("kivi_bits", fn, cases,
                       hint="each group of `group` numbers carries 16 + 16 bits of scale and zero point.")


EXERCISES = {
    "kv_cache_bytes": check_kv_cache_bytes,
    "kv_head": check_kv_head,
    "blocks_needed": check_blocks_needed,
    "kivi_bits": check_kivi_bits,
}
