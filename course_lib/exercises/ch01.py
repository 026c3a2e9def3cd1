"""Checks for chapter 01: reading a float's bits, epsilon, the largest value, 4-bit weight memory."""

from __future__ import annotations

from .. import formats
from . import check_cases


def check_decode_e4m3(fn) -> bool:
    """fn(code) -> the value of an 8-bit FP8 E4M3FN code (an int 0..255), as a float."""
    codes = [0b0_0111_100, 0b0_1111_110, 0b1_0111_000, 0b0_0001_000, 0b0_0000_001, 0b1_0000_111, 0b0_1010_011]
    cases = [((c,), formats.decode(c, "fp8_e4m3fn")) for c in codes]
    return check_cases(
        "decode_e4m3", fn, cases,
        hint="sign = bit 7, exponent field E = bits 6-3 (bias 7), mantissa M = bits 2-0. "
             "E > 0: 2^(E-7) * (1 + M/8); E = 0 (subnormal): 2^-6 * M/8.",
    )


def check_machine_epsilon(fn) -> bool:
    """fn(man_bits) -> the gap between 1.0 and the next larger value of a float with that many mantissa bits."""
    cases = [((m,), 2.0**-m) for m in (23, 10, 7, 3, 2, 52)]
    return check_cases("machine_epsilon", fn, cases,
                       hint="the code after 1.0 adds one to the mantissa's last bit, worth 2^-m.")


def check_max_ieee(fn) -> bool:
    """fn(exp_bits, man_bits) -> largest finite value of an IEEE-style float (bias 2^(e-1)-1, top exponent reserved)."""
    shapes = [(5, 10), (8, 7), (5, 2), (4, 3), (8, 23), (3, 2)]
    cases = [((e, m), formats.stats(formats.FloatFormat("ieee", e, m, 2 ** (e - 1) - 1)).max) for e, m in shapes]
    return check_cases(
        "max_ieee", fn, cases,
        hint="the top exponent field is inf/NaN, so the largest exponent is (2^e - 2) - bias; "
             "the largest mantissa gives 2 - 2^-m.",
    )


def check_quantized_weight_gb(fn) -> bool:
    """fn(n_params, group_size, scale_bits) -> GB (10^9 bytes) of 4-bit weights with one scale per group."""
    cases = [((n, g, s), n * (4 + s / g) / 8 / 1e9)
             for n, g, s in [(7e9, 64, 32), (8.03e9, 128, 16), (70e9, 64, 32), (1e9, 32, 16)]]
    return check_cases("quantized_weight_gb", fn, cases,
                       hint="bits per weight = 4 + scale_bits / group_size; bytes = params * bits / 8; GB = 1e9 bytes.")


EXERCISES = {
    "decode_e4m3": check_decode_e4m3,
    "machine_epsilon": check_machine_epsilon,
    "max_ieee": check_max_ieee,
    "quantized_weight_gb": check_quantized_weight_gb,
}
