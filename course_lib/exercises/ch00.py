"""Checks for chapter 00: weight memory and the decode speed limit."""

from __future__ import annotations

from . import check_cases

GIB = 2**30


def check_weight_memory_gib(fn) -> bool:
    """fn(n_params, bits_per_param) -> GiB of weights."""
    cases = [((7e9, 16), 7e9 * 2 / GIB), ((8.03e9, 4), 8.03e9 * 0.5 / GIB), ((70e9, 8), 70e9 / GIB), ((1, 32), 4 / GIB)]
    return check_cases("weight_memory_gib", fn, cases, hint="bytes = params * bits / 8; 1 GiB = 2**30 bytes.")


def check_decode_tokens_per_s(fn) -> bool:
    """fn(n_params, bits_per_param, bandwidth_gb_s) -> the memory-bound ceiling on tokens/s at batch 1."""
    cases = [((7e9, 16, 3350), 3350e9 / (7e9 * 2)), ((7e9, 4, 3350), 3350e9 / (7e9 * 0.5)), ((70e9, 16, 936), 936e9 / 140e9)]
    return check_cases(
        "decode_tokens_per_s", fn, cases,
        hint="each new token reads every weight once: tokens/s <= bandwidth (bytes/s) / weight bytes; GB = 1e9 bytes.",
    )


EXERCISES = {
    "weight_memory_gib": check_weight_memory_gib,
    "decode_tokens_per_s": check_decode_tokens_per_s,
}
