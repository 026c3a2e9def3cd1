"""NF4 and FP4 from scratch: blockwise absmax, 16-value codes, two codes per byte, double quantization.

QLoRA (Dettmers et al., 2023) stores a weight tensor as
    1. blocks of 64 consecutive values (the tensor read flat, row by row), each divided by its absmax c_b;
    2. every normalised value replaced by the index (0..15) of the nearest of 16 code values;
    3. two indices per byte, the first in the high nibble;
    4. with double quantization, the absmaxes themselves (minus their mean) stored as 8-bit codes of
       bitsandbytes' "dynamic" code, in blocks of 256 with one float32 absmax each.
Bits per parameter: 4 + 32/64 = 4.5 without double quantization, 4 + 8/64 + 32/(64·256) ≈ 4.127 with it.

NF4's 16 values are quantiles of N(0, 1) (chapter 01: ``formats.nf4_code_book``). FP4 is bitsandbytes'
E2M1 float: sign, 2 exponent bits, 1 mantissa bit, normalised to [-1, 1] (its smallest non-zero value is
0.0625/12, not OCP E2M1's 0.5/6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import nf4_code_book
from ..formats.demos import nf4_bits_per_param

BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes accepts
# bitsandbytes' FP4 in code order (bit 3 = sign; bits 2..0 index these magnitudes), before dividing by 12
_FP4_MAGNITUDES = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)


def code_values(quant_type: str = "nf4") -> torch.Tensor:
    """The 16 float32 values that codes 0..15 stand for, in code order ('nf4' is sorted, 'fp4' is not)."""
    if quant_type == "nf4":
        return torch.tensor(nf4_code_book(), dtype=torch.float32)
    if quant_type == "fp4":
        magnitudes = torch.tensor(_FP4_MAGNITUDES, dtype=torch.float32) / 12.0
        return torch.cat([magnitudes, -magnitudes])
    raise ValueError(f"quant_type must be 'nf4' or 'fp4'; got {quant_type!r}.")


def dynamic_code() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code (256 sorted values in [-1, 1]) for the absmaxes.

    A decimal exponent 10^-6 .. 10^0 and a linear fraction: at exponent 10^(i-6) there are 2^i values,
    the midpoints of 2^i equal steps between 0.1 and 1 (so large numbers get finer steps); each with
    both signs, plus 0 and 1: 2·127 + 2 = 256 values.
    """
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1.0, 2**i + 1, dtype=torch.float32)
        mids = ((edges[:-1] + edges[1:]) / 2 * 10.0 ** (i - 6)).tolist()
        values += mids + [-m for m in mids]
    return torch.tensor(sorted(values), dtype=torch.float32)


def _check_blocksize(blocksize: int) -> None:
    if blocksize not in BLOCK_SIZES:
        raise ValueError(f"blocksize must be one of {BLOCK_SIZES} (what bitsandbytes supports); got {blocksize}. "
                         "QLoRA uses 64.")


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the nearest code value to x / absmax of its block: (uint8 indices, shape of x; float32 absmax
    per block). x is read flat; a last, shorter block gets its own absmax."""
    flat, code = x.reshape(-1).float(), code.to(x.device)
    n_blocks = -(-flat.numel() // blocksize)
    padded = torch.nn.functional.pad(flat, (0, n_blocks * blocksize - flat.numel()))
    blocks = padded.view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    normed = (blocks * (1.0 / absmax.clamp_min(1e-38))[:, None]).clamp(-1, 1).reshape(-1)[: flat.numel()]
    order = torch.argsort(code)  # nearest value = which interval between midpoints of the sorted code
    ordered = code[order]
    idx = torch.bucketize(normed, (ordered[:-1] + ordered[1:]) / 2)
    return order[idx].to(torch.uint8).reshape(x.shape), absmax


def dequantize_blockwise(idx: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int) -> torch.Tensor:
    """code[idx] · absmax of its block, float32, idx's shape."""
    vals = code.to(idx.device)[idx.reshape(-1).long()]
    block_of = torch.arange(vals.numel(), device=vals.device) // blocksize
    return (vals * absmax.to(idx.device)[block_of]).reshape(idx.shape)


def pack_nibbles(idx: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """Two 4-bit codes per byte, the first in the high nibble; an odd count is padded with code `fill`."""
    flat = idx.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_full((1,), fill)])
    return (flat[0::2] << 4) | flat[1::2]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first n 4-bit codes of a packed byte tensor (inverse of pack_nibbles)."""
    out = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)
    return out[:n]


@dataclass
class Quantized4bit:
    """A tensor in bitsandbytes' 4-bit format: packed codes plus the absmaxes (plain or double-quantized)."""

    packed: torch.Tensor  # uint8 [ceil(n/2)]
    shape: torch.Size
    code: torch.Tensor  # the 16 values, in code order (a per-format table, like bitsandbytes' QuantState.code)
    blocksize: int
    absmax: torch.Tensor | None  # float32 [n_blocks] (no double quantization)
    absmax_codes: torch.Tensor | None = None  # uint8 [n_blocks] (double quantization)
    absmax_scale: torch.Tensor | None = None  # float32 [ceil(n_blocks / blocksize2)]
    offset: torch.Tensor | None = None  # float32 scalar: the mean absmax, subtracted before quantizing
    blocksize2: int = 256

    @property
    def double_quant(self) -> bool:
        return self.absmax_codes is not None

    def block_absmax(self) -> torch.Tensor:
        """The absmax of every block, float32 (de-quantized first under double quantization)."""
        if not self.double_quant:
            return self.absmax
        code2 = dynamic_code().to(self.absmax_codes.device)
        return dequantize_blockwise(self.absmax_codes, self.absmax_scale, code2, self.blocksize2) + self.offset

    def storage_bytes(self) -> dict[str, int]:
        """Bytes of each stored part (the 16- and 256-entry tables are per format, not per tensor: left out)."""
        parts = {"codes": self.packed.numel()}
        if self.double_quant:
            parts["absmax (8-bit)"] = self.absmax_codes.numel()
            parts["second-level scales"] = 4 * self.absmax_scale.numel() + 4  # + the float32 offset
        else:
            parts["absmax (fp32)"] = 4 * self.absmax.numel()
        return parts

    def bits_per_param(self) -> float:
        return 8 * sum(self.storage_bytes().values()) / self.shape.numel()


def quantize_4bit(w: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, *, double_quant: bool = True,
                  blocksize2: int = 256, code: torch.Tensor | None = None) -> Quantized4bit:
    """Quantize w (any shape, float) to NF4/FP4 codes in blocks of `blocksize`, optionally double-quantized.
    `code` replaces the 16-value table (e.g. bitsandbytes' own, to compare the algorithm alone)."""
    _check_blocksize(blocksize)
    if not w.is_floating_point() or w.numel() == 0:
        raise ValueError(f"quantize_4bit needs a non-empty float tensor; got {w.dtype} with {w.numel()} values.")
    code = (code_values(quant_type) if code is None else code.float()).to(w.device)
    if code.numel() != 16:
        raise ValueError(f"a 4-bit code has 16 values; got {code.numel()}.")
    idx, absmax = quantize_blockwise(w, code, blocksize)
    packed = pack_nibbles(idx, fill=int(code.abs().argmin()))  # pad an odd count with the code of 0.0
    if not double_quant:
        return Quantized4bit(packed, w.shape, code, blocksize, absmax)
    _check_blocksize(blocksize2)
    offset = absmax.mean()  # absmaxes are all positive: centre them so the signed 8-bit code is used fully
    codes2, scale2 = quantize_blockwise(absmax - offset, dynamic_code().to(w.device), blocksize2)
    return Quantized4bit(packed, w.shape, code, blocksize, None, codes2, scale2, offset, blocksize2)


def dequantize_4bit(q: Quantized4bit, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float tensor that q stands for: code value · block absmax."""
    idx = unpack_nibbles(q.packed, q.shape.numel())
    return dequantize_blockwise(idx, q.block_absmax(), q.code, q.blocksize).reshape(q.shape).to(dtype)


def bits_per_param(blocksize: int = 64, double_quant: bool = True, blocksize2: int = 256) -> float:
    """By formula: 4 + 32/blocksize, or 4 + 8/blocksize + 32/(blocksize·blocksize2) with double quantization."""
    return nf4_bits_per_param(blocksize, double_quant, blocksize2)


def int4_code() -> torch.Tensor:
    """A symmetric absmax INT4 grid on [-1, 1] for comparison: -7/7 .. 7/7 (15 levels, as absmax int4 uses)."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def roundtrip(w: torch.Tensor, code: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """w quantized to `code` with blockwise absmax and de-quantized (any 1-D code table; no packing)."""
    idx, absmax = quantize_blockwise(w, code, blocksize)
    return dequantize_blockwise(idx, absmax, code, blocksize)
