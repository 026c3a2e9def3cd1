"""Reference solutions for chapter 01's exercises (kept out of the notebooks)."""

import torch


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


def round_to_float(x: torch.Tensor, man_bits: int, bias: int, max_value: float) -> torch.Tensor:
    """x rounded to the nearest value of a float format: ties to even, saturating at ±max_value (float64)."""
    x = x.double()
    a = x.abs().clamp(max=max_value)                      # saturate: inf too
    e = (torch.frexp(a).exponent - 1).clamp(min=1 - bias)  # the binade 2^e <= a < 2^(e+1); subnormals share the lowest
    step = torch.ldexp(torch.ones_like(a), e - man_bits)   # 2^m steps per binade
    return torch.copysign(torch.round(a / step) * step, x)  # torch.round: halves to even


def encode_e4m3(x: torch.Tensor) -> torch.Tensor:
    v = round_to_float(x, man_bits=3, bias=7, max_value=448.0)
    a = v.abs()
    # the fields of the rounded value (so a mantissa that rounded up to 8 has already carried into the exponent)
    e = torch.frexp(a).exponent - 1
    normal = a >= 2.0**-6
    E = torch.where(normal, e + 7, 0)
    M = torch.where(normal, torch.ldexp(a, 3 - e) - 8, a * 2**9)   # 2^e * (1 + M/8), or 2^-6 * M/8
    sign = torch.signbit(v).long()                                  # -0.0 and tiny negatives: 0x80
    return ((sign << 7) | (E.long() << 3) | M.long()).to(torch.uint8)


def mxfp4_quantize(x: torch.Tensor) -> torch.Tensor:
    blocks = x.double().reshape(*x.shape[:-1], -1, 32)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    k = torch.frexp(amax).exponent - 1 - 2        # floor(log2 amax) - 2; 2: E2M1's largest value is 1.5 * 2^2
    scale = torch.where(amax > 0, torch.ldexp(torch.ones_like(amax), k), 1.0)  # an all-zero block stays zero
    elements = round_to_float(blocks / scale, man_bits=1, bias=1, max_value=6.0)  # E2M1, saturating at ±6
    return (elements * scale).reshape(x.shape).to(x.dtype)
