"""Reference solutions for chapter 02's exercises (kept out of the notebooks)."""


def scale_zero_point(min_val: float, max_val: float, bits: int) -> tuple[float, float]:
    # The range [min, max] is spread over the 2^b - 1 steps of the unsigned grid [0, 2^b - 1];
    # the zero point is the integer code that represents 0.0 exactly.
    scale = (max_val - min_val) / (2**bits - 1)
    return scale, float(round(-min_val / scale))


def quantize_value(x: float, scale: float, zero_point: int, bits: int) -> int:
    # q = clamp(round(x / s) + z, 0, 2^b - 1); Python's round() rounds half to even, like torch.round.
    return min(max(round(x / scale) + zero_point, 0), 2**bits - 1)


def max_rounding_error(max_abs: float, bits: int) -> float:
    # s = max|w| / qmax; every value inside the range is at most half a step from a grid point.
    return max_abs / (2 ** (bits - 1) - 1) / 2


def packed_int4_bytes(out_features: int, in_features: int, group_size: int) -> int:
    # Two 4-bit codes per byte, plus one fp16 (2-byte) scale for each group of `group_size` inputs of a row.
    return out_features * in_features // 2 + out_features * (in_features // group_size) * 2
