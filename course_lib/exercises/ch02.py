"""Checks for chapter 02: scale and zero point, integer codes, the rounding-error bound, packed int4 bytes."""

from __future__ import annotations

import math
from collections.abc import Sequence

from . import check_cases


class Pair(tuple):
    """A (scale, zero_point) answer that compares with a relative tolerance, element by element."""

    def __new__(cls, value):
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
            raise TypeError(f"return a tuple (scale, zero_point), got {value!r}")
        return super().__new__(cls, (float(value[0]), float(value[1])))

    def __eq__(self, other) -> bool:
        return len(other) == 2 and all(math.isclose(a, float(b), rel_tol=1e-6, abs_tol=1e-12) for a, b in zip(self, other))

    __hash__ = tuple.__hash__


def check_scale_zero_point(fn) -> bool:
    """fn(min_val, max_val, bits) -> (scale, zero_point) of asymmetric quantization onto [0, 2^bits - 1]
    (for min_val <= 0 <= max_val)."""
    cases = [((-1.0, 3.0, 8), (4 / 255, 64.0)), ((-0.5, 0.25, 4), (0.05, 10.0)),
             ((-2.0, 2.0, 2), (4 / 3, 2.0)), ((0.0, 1.0, 8), (1 / 255, 0.0))]
    return check_cases("scale_zero_point", lambda *a: Pair(fn(*a)), cases,
                       hint="scale = (max - min) / (2**bits - 1); zero_point = round(-min / scale), an integer.")


def check_quantize_value(fn) -> bool:
    """fn(x, scale, zero_point, bits) -> the unsigned integer code clamp(round(x / scale) + zero_point, 0, 2^bits - 1)."""
    cases = [((0.3, 0.1, 3, 4), 6), ((0.625, 0.25, 3, 4), 5), ((-9.0, 0.5, 8, 4), 0), ((300.0, 1.0, 0, 8), 255),
             ((-0.05, 0.1, 128, 8), 128)]
    return check_cases("quantize_value", fn, cases,
                       hint="round half to even as torch.round and Python's round do (2.5 -> 2), add the zero point, "
                            "then clamp to [0, 2**bits - 1].")


def check_max_rounding_error(fn) -> bool:
    """fn(max_abs, bits) -> the largest |w - w_hat| of symmetric round-to-nearest with s = max_abs / (2^(bits-1) - 1)."""
    cases = [((1.0, 8), 1 / 127 / 2), ((0.12, 4), 0.12 / 7 / 2), ((3.0, 2), 1.5), ((0.5, 3), 0.5 / 3 / 2)]
    return check_cases("max_rounding_error", fn, cases,
                       hint="rounding to the nearest multiple of s moves a value by at most half a step, s / 2.")


def check_packed_int4_bytes(fn) -> bool:
    """fn(out_features, in_features, group_size) -> bytes of int4 codes packed two per byte plus one fp16 scale per group."""
    cases = [((256, 256, 128), 256 * 256 // 2 + 256 * 2 * 2), ((4096, 11008, 128), 4096 * 11008 // 2 + 4096 * 86 * 2),
             ((768, 256, 32), 768 * 128 + 768 * 8 * 2), ((10, 2, 2), 10 + 10 * 2)]
    return check_cases("packed_int4_bytes", fn, cases,
                       hint="codes: out * in / 2 bytes; scales: out * (in / group_size) groups, 2 bytes each.")


EXERCISES = {
    "scale_zero_point": check_scale_zero_point,
    "quantize_value": check_quantize_value,
    "max_rounding_error": check_max_rounding_error,
    "packed_int4_bytes": check_packed_int4_bytes,
}
