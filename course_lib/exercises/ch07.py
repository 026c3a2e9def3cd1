"""Checks for chapter 07: which weight Wanda prunes first, the bytes of a 2:4 matrix, a KV group's parameters."""

from __future__ import annotations

from . import check_cases


def check_wanda_first(fn) -> bool:
    """fn(weights, norms) -> the index of the weight Wanda prunes first in one output row: the lowest
    |w_j| * ||X_j|| (weights[j] multiplies input feature j, whose calibration norm is norms[j])."""
    cases = [(([0.5, -0.1, 0.3], [1.0, 10.0, 1.0]), 2),      # magnitude would pick index 1
             (([2.0, 1.0, -4.0, 0.2], [0.01, 1.0, 1.0, 1.0]), 0),
             (([1.0, -1.0], [3.0, 2.0]), 1),
             (([-0.3, 0.2, 0.1, 0.4], [1.0, 1.0, 1.0, 1.0]), 2)]  # equal norms: plain magnitude
    return check_cases("wanda_first", fn, cases, hint="score_j = abs(weights[j]) * norms[j]; return the argmin.")


def check_sparse24_bytes(fn) -> bool:
    """fn(out_features, in_features, value_bits) -> bytes of a 2:4-compressed matrix: the kept half of the
    values at value_bits each, plus a 2-bit position (0-3) for every kept value."""
    cases = [((4096, 4096, 16), 4096 * 4096 / 2 * 18 / 8), ((4096, 4096, 4), 4096 * 4096 / 2 * 6 / 8),
             ((256, 768, 8), 256 * 768 / 2 * 10 / 8), ((8, 8, 16), 72.0)]
    return check_cases("sparse24_bytes", fn, cases,
                       hint="out * in / 2 kept values, each value_bits + 2 bits of position; divide by 8.")


def check_kv_group_params(fn) -> bool:
    """fn(hidden, head_dim, q_per_group) -> weights removed from one attention layer (no biases) when one KV
    group goes: its k and v heads, its q heads (rows of q_proj) and their columns of o_proj."""
    cases = [((256, 64, 2), 6 * 256 * 64), ((4096, 128, 4), 10 * 4096 * 128), ((4096, 128, 1), 4 * 4096 * 128),
             ((8192, 128, 8), 18 * 8192 * 128)]
    return check_cases("kv_group_params", fn, cases,
                       hint="each head is head_dim rows of hidden weights; a q head also owns head_dim columns of o_proj.")


EXERCISES = {"wanda_first": check_wanda_first, "sparse24_bytes": check_sparse24_bytes,
             "kv_group_params": check_kv_group_params}
