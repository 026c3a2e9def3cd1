"""Rounding real numbers into a float format: round to nearest, ties to even, saturating; the codes; MX blocks.

    round_to_format(x, "fp8_e4m3fn")   # the nearest E4M3FN values (float64): ties to even, |x| > 448 -> ±448
    encode(x, "fp8_e4m3fn")            # their codes, the bytes torch.float8_e4m3fn stores (uint8)
    mx_fake_quantize(x)                # MXFP4: blocks of 32 share a power-of-two scale, elements E2M1

In the binade [2^e, 2^(e+1)) a format with m mantissa bits has the grid step 2^(e - m); below the smallest normal
the step stays at 2^(1 - bias - m) (the subnormals). So rounding is |x| / step rounded to an integer, times step:
a division by a power of two is exact, and torch.round rounds halves to even, as IEEE's default rounding does.
Values beyond the largest finite one saturate to it (OCP's "satfinite" conversion, what FP8 quantizers use: the
plain cast gives NaN in E4M3FN); NaN stays NaN. torch's casts agree wherever they do not overflow (tests).
"""

from __future__ import annotations

import torch

from . import FloatFormat, get_format, stats


def _float_format(fmt: str | FloatFormat) -> FloatFormat:
    f = get_format(fmt)
    if not isinstance(f, FloatFormat):
        raise ValueError(f"{f.name} is {f.kind}: rounding here is for float formats.")
    return f


def round_to_format(x: torch.Tensor, fmt: str | FloatFormat) -> torch.Tensor:
    """Each entry of x rounded to the nearest value of float format `fmt` (ties to even, saturating), float64."""
    f = _float_format(fmt)
    x = x.detach().to(torch.float64)
    a = x.abs().clamp(max=stats(f).max)        # saturate (inf too); the largest value lies on the grid
    e = (torch.frexp(a).exponent - 1).clamp(min=1 - f.bias)  # 2^e <= a < 2^(e+1); subnormals share the lowest
    step = torch.ldexp(torch.ones_like(a), e - f.man_bits)
    return torch.copysign(torch.round(a / step) * step, x)   # torch.round: halves to even


def encode(x: torch.Tensor, fmt: str | FloatFormat) -> torch.Tensor:
    """The codes of round_to_format(x, fmt): uint8 for formats of at most 8 bits, else int64.

    NaN gets the format's NaN code (fn: S.1111.111 with S = 0; fnuz: 1000...0; IEEE: the quiet NaN 0.11...1.10...0).
    """
    f = _float_format(fmt)
    r = round_to_format(x, f)
    nan = torch.isnan(r)
    m, bias = f.man_bits, f.bias
    a = r.abs().nan_to_num(0.0)
    # exponent field: E - bias = e for a normal value; E = 0 for subnormals and zero
    E = torch.where(a > 0, torch.frexp(a).exponent - 1 + bias, 0).clamp(min=0)
    # normal: a = 2^(E - bias) * (1 + M / 2^m);  subnormal: a = 2^(1 - bias) * M / 2^m
    M = torch.where(E > 0, torch.ldexp(a, m + bias - E) - 2**m, torch.ldexp(a, torch.full_like(E, m + bias - 1)))
    sign = torch.signbit(r) & ~nan
    if f.special == "fnuz":
        sign &= a != 0  # no -0: 1000...0 is the NaN
    code = (sign.long() << (f.exp_bits + m)) | (E.long() << m) | M.long()
    if bool(nan.any()):
        if f.special == "none":
            raise ValueError(f"{f.name} has no NaN, and x has NaN entries.")
        nan_code = {"fn": (1 << (f.bits - 1)) - 1, "fnuz": 1 << (f.bits - 1),
                    "ieee": (((1 << f.exp_bits) - 1) << m) | (1 << (m - 1))}[f.special]
        code = torch.where(nan, nan_code, code)
    return code.to(torch.uint8) if f.bits <= 8 else code


def mx_scale_exponents(x: torch.Tensor, element: str | FloatFormat = "fp4_e2m1", block: int = 32) -> torch.Tensor:
    """The shared exponents k of an MX format (scale 2^k, stored as E8M0), one per block of `block` along the last
    dimension: k = floor(log2(amax of the block)) - emax, emax the exponent of the element format's largest value
    (E2M1: 6 = 1.5 * 2^2, so 2). OCP MX v1.0, section 6.3. An all-zero block gets the smallest scale, 2^-127."""
    f = _float_format(element)
    if x.shape[-1] % block:
        raise ValueError(f"the last dimension ({x.shape[-1]}) must be a multiple of the block size {block}.")
    amax = x.detach().to(torch.float64).reshape(*x.shape[:-1], -1, block).abs().amax(-1)
    emax = int(torch.frexp(torch.tensor(stats(f).max)).exponent) - 1
    k = torch.frexp(amax).exponent - 1 - emax
    return torch.where(amax > 0, k, -127).clamp(-127, 127)


def mx_fake_quantize(x: torch.Tensor, element: str | FloatFormat = "fp4_e2m1", block: int = 32) -> torch.Tensor:
    """x stored in an MX format and read back (x's dtype): per block, the elements x / 2^k rounded to `element`
    (ties to even, saturating: the floor in k lets the block's largest value reach 2^(emax+1), beyond the element
    format's max), times 2^k."""
    k = mx_scale_exponents(x, element, block)[..., None]
    blocks = x.detach().to(torch.float64).reshape(*x.shape[:-1], -1, block)
    q = torch.ldexp(round_to_format(torch.ldexp(blocks, -k), element), k)
    return q.reshape(x.shape).to(x.dtype)
