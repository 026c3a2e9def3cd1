"""Reference solutions for chapter 02's exercises (kept out of the notebooks).

Plain torch, written from scratch: course_lib.quant (fake_quantize, pack_int4) is what the checks compare against,
so it is not used here.
"""

import torch


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


def fake_quantize_groups(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    out_f, in_f = w.shape
    blocks = w.float().reshape(out_f, in_f // group_size, group_size)  # blocks[r, k]: group k of row r
    qmax = 2**bits - 1
    # Each group's range, widened to include 0: then the zero point lies in [0, qmax] and 0.0 stays exact.
    lo = blocks.amin(dim=-1, keepdim=True).clamp(max=0.0)
    hi = blocks.amax(dim=-1, keepdim=True).clamp(min=0.0)
    s = (hi - lo) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))  # a group of zeros: any positive scale works (no 0 / 0)
    z = torch.round(-lo / s)  # the integer code of 0.0
    q = torch.clamp(torch.round(blocks / s) + z, 0, qmax)
    return (s * (q - z)).reshape(out_f, in_f)  # w_hat = s (q - z)


def pack_signed_int4(q: torch.Tensor) -> torch.Tensor:
    u = (q.to(torch.int16) + 8).to(torch.uint8)  # signed [-8, 7] -> unsigned [0, 15]
    # Two codes per byte: element 2i in the low nibble, element 2i+1 in the high nibble.
    return u[..., 0::2] | (u[..., 1::2] << 4)
