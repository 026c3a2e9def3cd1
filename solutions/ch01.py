"""Reference solutions for chapter 01's exercises (kept out of the notebooks)."""


def decode_e4m3(code: int) -> float:
    sign = -1.0 if code >> 7 else 1.0
    exponent = (code >> 3) & 0b1111
    mantissa = code & 0b111
    if exponent == 0b1111 and mantissa == 0b111:
        return float("nan")  # E4M3FN's only NaN pattern (no infinity)
    if exponent == 0:  # subnormal: no implicit 1, exponent fixed at 1 - bias
        return sign * 2.0 ** (1 - 7) * mantissa / 8
    return sign * 2.0 ** (exponent - 7) * (1 + mantissa / 8)


def machine_epsilon(man_bits: int) -> float:
    return 2.0**-man_bits


def max_ieee(exp_bits: int, man_bits: int) -> float:
    bias = 2 ** (exp_bits - 1) - 1
    top_finite_exponent = (2**exp_bits - 2) - bias  # the all-ones exponent field is inf/NaN
    return (2 - 2.0**-man_bits) * 2.0**top_finite_exponent


def quantized_weight_gb(n_params: float, group_size: int, scale_bits: float) -> float:
    return n_params * (4 + scale_bits / group_size) / 8 / 1e9
