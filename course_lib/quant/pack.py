"""Packing 4-bit codes two to a byte, and moving codes between signed and unsigned form.

    u = to_unsigned(qt.q, 4)        # int4 codes -8..7  ->  0..15
    packed = pack_int4(u)           # uint8, last dim halved: half the bytes of int8 storage
    u2 = unpack_int4(packed)        # uint8 0..15, last dim doubled
    q = to_signed(u2, 4)            # back to -8..7

Byte layout: element 2i goes in the low nibble, element 2i+1 in the high nibble,
byte = u[2i] | (u[2i+1] << 4). (The order is a convention; kernels document theirs.)
"""

from __future__ import annotations

import torch


def _check_integer(t: torch.Tensor, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}.")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must have an integer dtype, got {t.dtype}; quantize first (course_lib.quant.quantize) "
                        f"or convert with .to(torch.uint8).")


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int from 2 to 8, got {bits!r}.")


def to_unsigned(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed codes in [-2^(b-1), 2^(b-1)-1] -> unsigned codes in [0, 2^b-1] (add 2^(b-1)), as uint8."""
    _check_integer(q, "q")
    _check_bits(bits)
    half = 2 ** (bits - 1)
    if q.numel() and (q.min().item() < -half or q.max().item() > half - 1):
        raise ValueError(f"Signed {bits}-bit codes must lie in [{-half}, {half - 1}], got values in "
                         f"[{q.min().item()}, {q.max().item()}].")
    return (q.to(torch.int16) + half).to(torch.uint8)


def to_signed(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes in [0, 2^b-1] -> signed codes in [-2^(b-1), 2^(b-1)-1] (subtract 2^(b-1)), as int8."""
    _check_integer(u, "u")
    _check_bits(bits)
    half = 2 ** (bits - 1)
    if u.numel() and (u.min().item() < 0 or u.max().item() > 2 * half - 1):
        raise ValueError(f"Unsigned {bits}-bit codes must lie in [0, {2 * half - 1}], got values in "
                         f"[{u.min().item()}, {u.max().item()}].")
    return (u.to(torch.int16) - half).to(torch.int8)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack unsigned 4-bit codes (0..15, any integer dtype, last dim even) into uint8, two per byte.

    Returns shape (..., n // 2): low nibble = even index, high nibble = odd index."""
    _check_integer(codes, "codes")
    if codes.dim() == 0 or codes.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even last dimension, got shape {tuple(codes.shape)}; "
                         f"pad the last dimension with one zero code first.")
    if codes.numel() and (codes.min().item() < 0 or codes.max().item() > 15):
        raise ValueError(f"pack_int4 needs unsigned 4-bit codes in 0..15, got values in "
                         f"[{codes.min().item()}, {codes.max().item()}]; convert signed codes with to_unsigned(q, 4).")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4: uint8 (..., m) -> uint8 codes 0..15 of shape (..., 2m)."""
    _check_integer(packed, "packed")
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 expects the uint8 tensor made by pack_int4, got dtype {packed.dtype}.")
    if packed.dim() == 0:
        raise ValueError("unpack_int4 needs at least one dimension.")
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
