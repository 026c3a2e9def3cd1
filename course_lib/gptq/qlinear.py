"""QuantLinear: a linear layer stored in the GPTQ checkpoint format ("gptq", a.k.a. v1), the layout
that AutoGPTQ introduced and GPTQModel, optimum and transformers read.

    layer = QuantLinear.from_result(linear, result)    # result: a GPTQResult of linear.weight
    y = layer(x)                                       # dequantize, then matmul (pure torch, any device)
    layer.dequantized_weight()                         # (out, in) float weight it computes with

Tensors (b = bits, p = 32 // b codes per int32 word, G groups):

    qweight  int32 (in // p, out)   unsigned codes u in [0, 2^b - 1] packed along the *input* dim:
                                    qweight[i // p, o] holds u[o, i] at bits b*(i % p) .. b*(i % p) + b-1
    qzeros   int32 (G, out // p)    zero points packed along the *output* dim the same way, stored minus
                                    one (v1): the word is pack(z) - pack(1, ..., 1) as 32-bit integers
    scales   float16 (G, out)
    g_idx    int32 (in,)            group of each input column (act-order makes it non-monotonic)
    bias     (out,) or None

    W[o, i] = scales[g, o] * (u[o, i] - z[g, o]),   g = g_idx[i]

The "minus one" is historical: AutoGPTQ subtracted 1 from every zero point before packing, and
readers add it back. When every zero point is >= 1 (always for symmetric: z = 2^(b-1)) the
subtraction is per field and every reader agrees. An asymmetric zero point of 0 borrows from the
next field; GPTQModel (which transformers uses) undoes the subtraction on whole words and gets it
back exactly, older per-field readers do not. course_lib's symmetric codes q in [-2^(b-1), 2^(b-1)-1]
with z = 0 are stored as u = q + 2^(b-1) with z = 2^(b-1): the same weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..quant.pack import to_unsigned
from .core import GPTQResult

PACK_BITS = (2, 4, 8)  # bit widths that divide a 32-bit word (3-bit GPTQ uses a split layout, not done here)
_MASK32 = (1 << 32) - 1


def _check_pack_bits(bits: int) -> int:
    if bits not in PACK_BITS:
        raise ValueError(f"GPTQ packing here supports bits in {PACK_BITS}, got {bits}; quantize with bits=4 "
                         f"(or 2/8) to store or export, or keep the fake-quantized float weights.")
    return 32 // bits


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit values held in int64 -> int32 with the same bits (two's complement)."""
    words = words & _MASK32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_rows(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes (n, m) -> int32 words (n // p, m): p = 32 // bits consecutive rows per word,
    row r at bit offset bits * (r % p)."""
    p = _check_pack_bits(bits)
    n, m = u.shape
    if n % p:
        raise ValueError(f"Packing {bits}-bit codes needs a multiple of {p} rows, got {n}.")
    shifts = torch.arange(p, device=u.device, dtype=torch.int64) * bits
    words = (u.to(torch.int64).reshape(n // p, p, m) << shifts[None, :, None]).sum(dim=1)
    return _to_int32(words)


def unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of pack_rows: int32 (n // p, m) -> int64 codes (n, m)."""
    p = _check_pack_bits(bits)
    shifts = torch.arange(p, device=words.device, dtype=torch.int64) * bits
    u = (words.to(torch.int64)[:, None, :] & _MASK32) >> shifts[None, :, None]
    return (u & (2**bits - 1)).reshape(-1, words.shape[1])


def _ones_word(bits: int) -> int:
    """pack(1, 1, ..., 1) as one 32-bit word: 0x11111111 for 4 bits."""
    return sum(1 << (bits * k) for k in range(32 // bits))


def pack_zeros_v1(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Zero points (G, out), integers in [0, 2^b - 1] -> v1 qzeros (G, out // p): pack(z) - pack(1s)."""
    words = pack_rows(z.T.contiguous(), bits).T.to(torch.int64)
    return _to_int32(words - _ones_word(bits))


def unpack_zeros_v1(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of pack_zeros_v1: v1 qzeros (G, out // p) -> int64 zero points (G, out)."""
    words = _to_int32((qzeros.to(torch.int64) & _MASK32) + _ones_word(bits))
    return unpack_rows(words.T.contiguous(), bits).T


class QuantLinear(nn.Module):
    """y = x W^T + b with W held as packed GPTQ integers (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, *, bits: int = 4, group_size: int | None = 128,
                 bias: bool = True, device=None, bias_dtype: torch.dtype = torch.float16):
        super().__init__()
        p = _check_pack_bits(bits)
        g = in_features if group_size in (None, -1) else group_size
        if in_features % g or in_features % p or out_features % p:
            raise ValueError(f"QuantLinear({in_features} -> {out_features}, bits={bits}, group_size={group_size}): "
                             f"in_features must be divisible by the group size and by {p}, out_features by {p}.")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size = None if group_size in (None, -1) else g  # None: per-channel (one group)
        n_groups = in_features // g
        kw = dict(device=device)
        self.register_buffer("qweight", torch.zeros(in_features // p, out_features, dtype=torch.int32, **kw))
        self.register_buffer("qzeros", torch.zeros(n_groups, out_features // p, dtype=torch.int32, **kw))
        self.register_buffer("scales", torch.zeros(n_groups, out_features, dtype=torch.float16, **kw))
        self.register_buffer("g_idx", torch.arange(in_features, dtype=torch.int32, **kw) // g)
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, **kw) if bias else None)

    @classmethod
    def from_result(cls, linear: nn.Linear, result: GPTQResult) -> QuantLinear:
        """Pack a GPTQResult of `linear.weight`. Exact when result.scales are float16 numbers
        (gptq_quantize_weight(..., scale_dtype=torch.float16), the default of gptq_quantize_model)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_result needs an nn.Linear, got {type(linear).__name__}.")
        out_f, in_f = linear.weight.shape
        if tuple(result.codes.shape) != (out_f, in_f):
            raise ValueError(f"The result's codes have shape {tuple(result.codes.shape)}, the layer's weight "
                             f"{(out_f, in_f)}: pass the GPTQResult of this layer.")
        bias = linear.bias
        layer = cls(in_f, out_f, bits=result.bits, group_size=result.group_size, bias=bias is not None,
                    device=linear.weight.device, bias_dtype=bias.dtype if bias is not None else torch.float16)
        half = 2 ** (result.bits - 1)
        if result.symmetric:  # signed q with z = 0  ->  unsigned u = q + 2^(b-1) with z = 2^(b-1)
            u = to_unsigned(result.codes, result.bits)
            z = result.zeros + half
        else:
            u, z = result.codes, result.zeros
        layer.qweight.copy_(pack_rows(u.T.contiguous(), result.bits))
        layer.qzeros.copy_(pack_zeros_v1(z.round().to(torch.int64).T.contiguous(), result.bits))
        layer.scales.copy_(result.scales.T)
        layer.g_idx.copy_(result.g_idx)
        if bias is not None:
            layer.bias.copy_(bias.detach())
        return layer

    def codes(self) -> torch.Tensor:
        """Unsigned integer codes u, shape (out, in)."""
        return unpack_rows(self.qweight, self.bits).T

    def zero_points(self) -> torch.Tensor:
        """Zero points z (with the v1 minus-one undone), shape (G, out)."""
        return unpack_zeros_v1(self.qzeros, self.bits)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W[o, i] = scales[g, o] * (u[o, i] - z[g, o]) with g = g_idx[i], computed in float32."""
        g = self.g_idx.long()
        scales = self.scales.to(torch.float32)[g].T  # (out, in)
        zeros = self.zero_points().to(torch.float32)[g].T
        return (scales * (self.codes().to(torch.float32) - zeros)).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")
