"""Checks for chapter 01: rounding tensors into FP8 E4M3FN bytes and into MXFP4; and four warm-up formulas (reading
a float's bits, epsilon, the largest value, 4-bit weight memory)."""

from __future__ import annotations

import math

import torch

from .. import formats
from ..formats import rounding
from . import check_cases, check_tensor_cases


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


# --- implementing exercises: rounding tensors into a format -----------------------------------------------------------
#
# 1. check_encode_e4m3: a float32 tensor -> its FP8 E4M3FN bytes (round to nearest, ties to even, saturating).
# 2. check_mxfp4_quantize: a tensor stored in MXFP4 and read back (blocks of 32 sharing a power-of-two scale, E2M1
#    elements).
# Both compare with course_lib.formats.rounding (itself checked against torch's casts and torchao's MX code in
# tests/test_exercises_ch01.py) on random tensors of several shapes and seeds plus edge cases. After a wrong attempt,
# a diagnosis recomputes the usual mistakes (ties away from zero, no saturation, 0x7F as the largest code, subnormals
# flushed, a scale that is not a power of two, ...) and names the one that matches.

E4M3 = "fp8_e4m3fn"
E4M3_MAX = 448.0
E4M3_SEEDS = (0, 1, 2)
E4M3_SHAPES = ((8,), (4, 16), (3, 5, 7), (64, 32))
E4M3_LOG2_RANGE = (-11.0, 9.5)  # magnitudes 2^-11 .. 2^9.5: zeros, subnormals (< 2^-6), normals, beyond 448


def _log_uniform(shape: tuple, g: torch.Generator, low: float, high: float) -> torch.Tensor:
    """float32 values of random sign whose magnitudes are log-uniform in [2^low, 2^high)."""
    mag = torch.exp2(low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64))
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
    return (sign * mag).float()


def _e4m3_grid() -> list[float]:
    """The finite non-negative E4M3FN values, ascending (0 and 2^-9 .. 448)."""
    return sorted({v for v in (formats.decode(c, E4M3) for c in range(128)) if math.isfinite(v)})


def encode_e4m3_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (x,)) of check_encode_e4m3: seeds x shapes, then the edge cases."""
    labels, cases = [], []
    low, high = E4M3_LOG2_RANGE
    for seed in E4M3_SEEDS:
        for shape in E4M3_SHAPES:
            g = torch.Generator().manual_seed(10 * seed + len(shape))
            labels.append(f"seed {seed}, x of shape {shape}, |x| log-uniform in 2^{low:g} .. 2^{high:g} "
                          "(subnormals, normals and values beyond 448)")
            cases.append((_log_uniform(shape, g, low, high),))
    grid = _e4m3_grid()
    ties = [(a + b) / 2 for a, b in zip(grid, grid[1:])]
    labels.append(f"edge case: the {len(ties)} midpoints between neighbouring E4M3 values, both signs (exact ties: "
                  "each goes to the neighbour whose mantissa is even)")
    cases.append((torch.tensor(ties + [-t for t in ties], dtype=torch.float32),))
    labels.append("edge case: every finite E4M3 value, both signs (each is its own code; -0.0 is 0x80)")
    cases.append((torch.tensor(grid + [-v for v in grid], dtype=torch.float32),))
    big = [448.0, 449.0, 463.9, 464.0, 464.1, 480.0, 500.0, 1e4, 3e38, math.inf]
    labels.append("edge case: values at and beyond the largest finite value 448, and inf, both signs (saturation)")
    cases.append((torch.tensor(big + [-b for b in big], dtype=torch.float32),))
    # rounding up past the top of a binade: 15.5 -> 16, 0.98 -> 1, 2^-6 - 2^-11 -> 2^-6 (subnormal -> normal) ...
    carry = [15.5, 15.9, 0.98, 1.96, 2**-6 - 2**-11, 2**-7 * 1.97, 31.5, 0.24, 2**-10, 2**-10 * 1.01, 1e-5]
    labels.append("edge case: values that round up into the next binade (15.5 -> 16), around the smallest normal "
                  "2^-6, and values that round to zero, both signs")
    cases.append((torch.tensor(carry + [-c for c in carry], dtype=torch.float32),))
    return labels, cases


def reference_encode_e4m3(x: torch.Tensor) -> torch.Tensor:
    """course_lib's encoder: the E4M3FN bytes of x (uint8)."""
    return rounding.encode(x, E4M3)


def _e4m3_values_by_hand(x: torch.Tensor, *, ties: str = "even", saturate: bool = True,
                         subnormals: bool = True) -> torch.Tensor:
    """E4M3 values of x (float64) as a learner computes them, with one choice swapped for a usual mistake."""
    a = x.double().abs()
    if saturate:
        a = a.clamp(max=E4M3_MAX)
    e = torch.frexp(a).exponent - 1
    tiny = e < -6
    step = torch.ldexp(torch.ones_like(a), e.clamp(min=-6) - 3)
    n = a / step
    n = {"even": torch.round(n), "away": torch.floor(n + 0.5), "down": torch.floor(n)}[ties]
    v = n * step
    if not subnormals:
        v = torch.where(tiny, 0.0, v)
    if not saturate:
        v = torch.where(v > E4M3_MAX, math.nan, v)  # rounding past 448 lands on the NaN code 0x7F
    return torch.copysign(v, x.double())


def _encode_variants(x: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
    """(the codes a usual mistake gives on x, the message that names it)."""
    ref = reference_encode_e4m3(x).long()
    values = rounding.round_to_format(x, E4M3)
    a = x.double().abs().clamp(max=E4M3_MAX)
    # the top of x's binade before rounding (2^-6 for a subnormal): a value rounded up to it needs the carry
    top = torch.where(a < 2**-6, 2.0**-6, torch.ldexp(torch.ones_like(a), torch.frexp(a).exponent))
    carried = (values.abs() >= top) & (values != 0)
    enc = lambda v: rounding.encode(v, E4M3).long()
    sign = torch.signbit(x).long() << 7
    top_code = ("the largest finite E4M3FN value, 448, is 0x7E = 0.1111.110; 0x7F (every exponent and mantissa bit "
                "set) is the NaN, and E4M3FN has no 480.")
    no_saturation = ("values beyond 448 (and ±inf) must saturate to ±448, code 0x7E / 0xFE: E4M3FN has no "
                     "infinity, and rounding past 448 lands on the NaN code. Clamp |x| to 448 first.")
    return [
        (values, "you returned the rounded values; return their codes, the bytes: (sign << 7) | (E << 3) | M."),
        (torch.where(ref >= 128, ref - 256, ref), ("your codes 128..255 come out negative: that is the byte read as "
                                                   "a signed int8. Return them as uint8 (0..255).")),
        (enc(_e4m3_values_by_hand(x, ties="away")), ("a value exactly halfway between two E4M3 values goes to the "
                                                     "one whose mantissa is even (round half to even, what "
                                                     "torch.round does), not away from zero (floor(n + 0.5)).")),
        (enc(_e4m3_values_by_hand(x, ties="down")), ("you truncated (rounded toward zero): round to the nearest E4M3 "
                                                     "value, torch.round(|x| / step) * step.")),
        (enc(_e4m3_values_by_hand(x, saturate=False)), no_saturation),
        (torch.where((ref & 0x7F) == 0x7E, ref | 1, ref), top_code),
        (torch.where(x.double().abs() > 464, 0x7F | sign, ref), top_code),
        (enc(_e4m3_values_by_hand(x, subnormals=False)), ("you flushed the subnormals to zero: below 2^-6 the "
                                                          "exponent field is 0 and the step stays 2^-9, value = "
                                                          "2^-6 * M / 8.")),
        (torch.where(carried, ref - 8, ref), ("a mantissa that rounds up to 8 must carry into the exponent (15.5 -> "
                                             "16 = 2^4 * 1.0, not 2^3 * 1.0): take E and M from the rounded value, "
                                             "or add (E << 3) + M instead of masking M to 3 bits.")),
        (torch.where((x == 0) & torch.signbit(x), 0, ref), ("-0.0 has its sign bit set: its code is 0x80. Take the "
                                                            "sign with torch.signbit(x), not x < 0.")),
        (rounding.encode(x, "fp8_e4m3fnuz").long(), ("you encoded E4M3FNUZ (bias 8, largest value 240). E4M3FN's "
                                                     "bias is 7 and its largest value 448.")),
    ]


def _diagnose_encode(args: tuple, got: torch.Tensor) -> str | None:
    (x,) = args
    got = got.detach().to("cpu", torch.float64)
    ref = reference_encode_e4m3(x).double()
    for mistake, message in _encode_variants(x):
        mistake = mistake.double()
        if mistake.shape == got.shape and not _same(mistake, ref) and _same(got, mistake):
            return message
    return None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(torch.nan_to_num(a, nan=-1.0), torch.nan_to_num(b, nan=-1.0)))


_ENCODE_HINT = ("a = |x| clamped to 448; its binade e = floor(log2 a), at least -6 (subnormals); step = 2^(e - 3); "
                "v = torch.round(a / step) * step. Then the fields of v: E = e_v + 7 for a normal v >= 2^-6, with "
                "M = v / 2^e_v * 8 - 8; E = 0 and M = v / 2^-9 below; sign = torch.signbit(x). "
                "Code = (sign << 7) | (E << 3) | M, as uint8.")


def check_encode_e4m3(fn) -> bool:
    """fn(x) -> the FP8 E4M3FN bytes of the float32 tensor x: a tensor of x's shape holding codes 0..255 (uint8).

    The value a code stands for is the one decode_e4m3 computes (sign bit 7, exponent field E bits 6-3 with bias 7,
    mantissa M bits 2-0; E = 0 is subnormal). Encoding rounds x to the nearest E4M3FN value:
    * ties (x exactly halfway between two values) go to the value whose mantissa M is even;
    * |x| > 448, ±inf included, saturates to ±448 (0x7E / 0xFE); 0x7F / 0xFF are NaN, never produced here;
    * below the smallest normal 2^-6 the step stays 2^-9 (subnormals); values that round to zero keep their sign
      (-0.0 and -1e-5 give 0x80).
    x has no NaN. The bytes equal x.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8).

    Checked against course_lib.formats.rounding.encode on log-uniform random magnitudes 2^-11 .. 2^9.5 of both
    signs in shapes (8,), (4, 16), (3, 5, 7), (64, 32), seeds 0, 1, 2; then every midpoint between neighbouring
    values (ties), every E4M3 value (and -0.0), values at and beyond 448 and inf, and values that round up into the
    next binade or down to zero. The codes must be equal (tolerance 0).
    """
    labels, cases = encode_e4m3_cases()
    return check_tensor_cases("encode_e4m3", fn, cases, reference_encode_e4m3, atol=0.0, rtol=0.0, labels=labels,
                              hint=_ENCODE_HINT, diagnose=_diagnose_encode)


# --- MXFP4 ---------------------------------------------------------------------------------------------------------

MX_BLOCK = 32
MX_SEEDS = (0, 1, 2)
MX_SHAPES = ((32,), (4, 64), (3, 2, 96), (64, 32))
MX_ATOL, MX_RTOL = 0.0, 1e-6  # every result is exact in float32; the tolerance only forgives a last-bit difference


def mxfp4_quantize_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (x,)) of check_mxfp4_quantize: seeds x shapes, then the edge cases."""
    labels, cases = [], []
    for seed in MX_SEEDS:
        for shape in MX_SHAPES:
            g = torch.Generator().manual_seed(100 + 10 * seed + len(shape))
            # blocks of very different sizes: each row scaled by 2^N(0, 3^2)
            rows = torch.exp2(3 * torch.randn(*shape[:-1], 1, generator=g))
            n_blocks = math.prod(shape) // MX_BLOCK
            labels.append(f"seed {seed}, x of shape {shape} ({n_blocks} block{'s' if n_blocks > 1 else ''}), normal "
                          "values, each row scaled by a random 2^N(0, 9)")
            cases.append(((torch.randn(shape, generator=g) * rows).float(),))
    g = torch.Generator().manual_seed(150)
    x = torch.randn(4, 64, generator=g)
    x[1, 32:] = 0.0
    labels.append("edge case: x of shape (4, 64) whose block x[1, 32:] is all zeros (it stays zeros: log2(0) = -inf)")
    cases.append((x,))
    ties = torch.tensor([6.0, 5.0, 3.5, 2.5, 1.75, 1.25, 0.75, 0.25, -5.0, -2.5, -0.75, -0.25] + [0.1] * 20)
    labels.append("edge case: one block with largest value 6 (scale 2^0) and elements exactly halfway between two "
                  "E2M1 values (5 -> 4, 2.5 -> 2, 0.75 -> 1, 0.25 -> 0: ties to even)")
    cases.append((torch.stack([ties, ties * 2**-5, ties * 2**7]),))
    sat = torch.tensor([7.9, 7.0, 6.5, 6.2, 5.5, -7.5, 4.0, 1.0] + [0.3] * 24)
    labels.append("edge case: blocks with largest magnitude 7.9, 4 and 4 * 2^-3 (exact powers of two): with "
                  "k = floor(log2 amax) - 2 the largest elements reach 7.9 / 2^k, beyond 6: they saturate to ±6")
    cases.append((torch.stack([sat, sat.clamp(-4, 4), sat.clamp(-4, 4) / 8]),))
    x = torch.randn(2, 64, generator=g) * 0.01
    x[0, 3], x[1, 40] = 1.0, -2.0
    labels.append("edge case: x of shape (2, 64), values of size 0.01 with one outlier per row (1.0 and -2.0): the "
                  "outlier's block rounds its small values to 0 or to the subnormal ±0.5 * 2^k")
    cases.append((x,))
    return labels, cases


def reference_mxfp4_quantize(x: torch.Tensor) -> torch.Tensor:
    """course_lib's MXFP4 round trip (blocks of 32 along the last dimension)."""
    return rounding.mx_fake_quantize(x, "fp4_e2m1", MX_BLOCK)


def _e2m1_by_hand(v: torch.Tensor, *, ties: str = "even", saturate: bool = True,
                  subnormals: bool = True) -> torch.Tensor:
    """E2M1 values of v (float64) as a learner computes them, with one choice swapped for a usual mistake."""
    a = v.abs().clamp(max=6.0) if saturate else v.abs()
    e = torch.frexp(a).exponent - 1
    step = torch.ldexp(torch.ones_like(a), (e.clamp(min=0) if subnormals else e) - 1)
    n = a / step
    n = {"even": torch.round(n), "away": torch.floor(n + 0.5)}[ties]
    return torch.copysign(torch.where(a > 0, n * step, 0.0), v)


def _mx_by_hand(x: torch.Tensor, *, block: int = MX_BLOCK, axis: int = -1, scale: str = "floor",
                multiply_back: bool = True, **element) -> torch.Tensor:
    """The MXFP4 round trip (float64) as a learner computes it, with one choice swapped for a usual mistake."""
    x64 = x.double().movedim(axis, -1) if axis != -1 else x.double()
    if x64.shape[-1] % block:
        return None
    blocks = x64.reshape(*x64.shape[:-1], -1, block)
    amax = blocks.abs().amax(-1, keepdim=True) if scale != "tensor" else x64.abs().amax().expand(
        *blocks.shape[:-1], 1)
    log2 = torch.frexp(amax).exponent - 1  # floor(log2 amax), exact
    if scale in ("floor", "tensor"):
        s = torch.ldexp(torch.ones_like(amax), log2 - 2)
    elif scale == "no_emax":
        s = torch.ldexp(torch.ones_like(amax), log2)
    elif scale == "ceil":
        s = torch.exp2(torch.ceil(torch.log2(amax / 6)))
    else:  # "absmax": amax / 6, not a power of two
        s = amax / 6
    s = torch.where(amax > 0, s, 1.0)
    q = _e2m1_by_hand(blocks / s, **element)
    out = (q * s if multiply_back else q).reshape(x64.shape)
    return out.movedim(-1, axis) if axis != -1 else out


def _mx_variants(x: torch.Tensor) -> list[tuple[torch.Tensor | None, str]]:
    elements = "The elements are E2M1 values: 0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6."
    return [
        (_mx_by_hand(x, multiply_back=False), ("you returned the E2M1 elements: multiply them back by their block's "
                                               "scale 2^k.")),
        (_mx_by_hand(x, scale="absmax"), ("your scale is amax / 6, not a power of two. MX stores the scale as E8M0, "
                                          "an exponent only: 2^k with k = floor(log2 amax) - 2 (2 is the exponent of "
                                          "E2M1's largest value, 6 = 1.5 * 2^2).")),
        (_mx_by_hand(x, scale="ceil"), ("you chose the smallest power of two that keeps amax / 2^k <= 6 (a ceiling). "
                                        "The OCP MX spec takes k = floor(log2 amax) - 2, so amax / 2^k lies in [4, 8) "
                                        "and elements beyond 6 saturate to ±6.")),
        (_mx_by_hand(x, scale="no_emax"), ("you took k = floor(log2 amax): then amax / 2^k lies in [1, 2) and most "
                                           "elements round to 0 or ±0.5. Subtract E2M1's largest exponent: "
                                           "k = floor(log2 amax) - 2.")),
        (_mx_by_hand(x, scale="tensor"), ("you shared one scale over the whole tensor: MX has one scale per block of "
                                          "32 consecutive values along the last dimension.")),
        (_mx_by_hand(x, block=16), "MXFP4 blocks hold 32 values (16 is NVFP4's block), along the last dimension."),
        (_mx_by_hand(x, axis=0) if x.dim() > 1 else None, ("your blocks run along the first dimension: MX blocks are "
                                                           "32 consecutive values along the last dimension, "
                                                           "x.reshape(..., k // 32, 32).")),
        (_mx_by_hand(x, saturate=False), ("elements beyond 6 must saturate to ±6: with k = floor(log2 amax) - 2 a "
                                          "block's largest element can reach almost 8, and E2M1 has nothing above 6 "
                                          "(7 rounds to 6, not 8). " + elements)),
        (_mx_by_hand(x, ties="away"), ("an element exactly halfway between two E2M1 values goes to the one whose "
                                       "mantissa bit is 0 (ties to even: 5 -> 4, 2.5 -> 2, 0.75 -> 1, 0.25 -> 0), not "
                                       "away from zero.")),
        (_mx_by_hand(x, subnormals=False), ("below 1 (E2M1's smallest normal) the step stays 0.5: the only elements "
                                            "there are 0 and ±0.5. " + elements)),
    ]


def _diagnose_mx(args: tuple, got: torch.Tensor) -> str | None:
    (x,) = args
    got = got.detach().to("cpu", torch.float64)
    expected = reference_mxfp4_quantize(x).double()
    if bool(torch.isnan(got).any()) and not bool(torch.isnan(expected).any()):
        return ("your result has NaN: an all-zero block has amax 0 and log2(0) = -inf, so 2^k = 0 and 0 / 0 = NaN. "
                "Keep an all-zero block at zero (give it any finite scale, e.g. amax.clamp(min=tiny)).")
    for mistake, message in _mx_variants(x):
        if mistake is None or mistake.shape != got.shape:
            continue
        if torch.allclose(mistake, expected, rtol=MX_RTOL, atol=1e-12):
            continue  # this case cannot tell that mistake apart
        if torch.allclose(got, mistake, rtol=1e-5, atol=1e-12):
            return message
    return None


_MX_HINT = ("for each block of 32 consecutive values along the last dimension: amax = largest |value|; "
            "k = floor(log2 amax) - 2; elements = x / 2^k rounded to E2M1 (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6; ties to "
            "even, beyond 6 saturate to ±6); result = elements * 2^k. An all-zero block stays zero.")


def check_mxfp4_quantize(fn) -> bool:
    """fn(x) -> x stored in MXFP4 and read back: a float32 tensor of x's shape.

    MXFP4 (OCP Microscaling v1.0) cuts the last dimension into blocks of 32 consecutive values. Each block stores one
    shared scale 2^k (an 8-bit exponent, E8M0) and 32 FP4 E2M1 elements (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6):
    * k = floor(log2(amax)) - 2, amax the block's largest |value| (2 is the exponent of E2M1's largest value,
      6 = 1.5 * 2^2); torch.frexp(amax).exponent - 1 is floor(log2 amax) exactly;
    * element = x / 2^k rounded to the nearest E2M1 value, ties to even, saturating at ±6 (x / 2^k can reach
      almost 8);
    * the value read back is element * 2^k. An all-zero block stays zero.

    Checked against course_lib.formats.rounding.mx_fake_quantize on normal random values with rows scaled by
    2^N(0, 9), shapes (32,), (4, 64), (3, 2, 96), (64, 32), seeds 0, 1, 2; then an all-zero block, exact ties, blocks
    whose largest value saturates or is a power of two, and outliers. Tolerance: |got - expected| <= 1e-6 *
    |expected| (the results are exact in float32).
    """
    labels, cases = mxfp4_quantize_cases()
    return check_tensor_cases("mxfp4_quantize", fn, cases, reference_mxfp4_quantize, atol=MX_ATOL, rtol=MX_RTOL,
                              labels=labels, hint=_MX_HINT, diagnose=_diagnose_mx)


EXERCISES = {
    "encode_e4m3": check_encode_e4m3,
    "mxfp4_quantize": check_mxfp4_quantize,
    "decode_e4m3": check_decode_e4m3,
    "machine_epsilon": check_machine_epsilon,
    "max_ieee": check_max_ieee,
    "quantized_weight_gb": check_quantized_weight_gb,
}
WARM_UPS = ("decode_e4m3", "machine_epsilon", "max_ieee", "quantized_weight_gb")
