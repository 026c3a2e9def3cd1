"""A readable Linear4bit: what bitsandbytes' Linear4bit stores and does in its forward.

It keeps the packed 4-bit codes and the absmaxes (double-quantized or not) as buffers, and in every
forward de-quantizes the whole weight to the compute dtype and calls an ordinary matmul. That
de-quantization is the extra work behind "4-bit is slower than 16-bit" in plain PyTorch; fused kernels
(chapter 11) do it in registers instead of memory.
"""

from __future__ import annotations

import torch
from torch import nn

from .nf4 import Quantized4bit, dequantize_4bit, quantize_4bit


class Linear4bit(nn.Module):
    """y = x · dequant(W)^T + b, with W stored as NF4/FP4 codes (about 4.13 or 4.5 bits per weight)."""

    def __init__(self, q: Quantized4bit, bias: torch.Tensor | None, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        if len(q.shape) != 2:
            raise ValueError(f"Linear4bit stores a 2-D weight (out x in); got shape {tuple(q.shape)}.")
        self.out_features, self.in_features = q.shape
        self.blocksize, self.blocksize2, self.compute_dtype = q.blocksize, q.blocksize2, compute_dtype
        self.register_buffer("packed", q.packed)
        self.register_buffer("code", q.code)
        for name in ("absmax", "absmax_codes", "absmax_scale", "offset"):
            self.register_buffer(name, getattr(q, name))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, quant_type: str = "nf4", blocksize: int = 64, *,
                    double_quant: bool = True, compute_dtype: torch.dtype | None = None) -> Linear4bit:
        w = linear.weight.detach()
        q = quantize_4bit(w, quant_type, blocksize, double_quant=double_quant)
        return cls(q, linear.bias, compute_dtype or w.dtype)

    def quantized(self) -> Quantized4bit:
        return Quantized4bit(self.packed, torch.Size((self.out_features, self.in_features)), self.code,
                             self.blocksize, self.absmax, self.absmax_codes, self.absmax_scale, self.offset,
                             self.blocksize2)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize_4bit(self.quantized(), self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight()  # the whole weight, every call: memory traffic a fused kernel avoids
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return nn.functional.linear(x.to(self.compute_dtype), w, bias).to(x.dtype)

    def storage_bytes(self) -> int:
        return sum(self.quantized().storage_bytes().values())

    def extra_repr(self) -> str:
        kind = "double-quantized absmax" if self.absmax_codes is not None else "fp32 absmax"
        return f"{self.in_features} -> {self.out_features}, blocks of {self.blocksize}, {kind}"


def quantize_model_4bit(model: nn.Module, quant_type: str = "nf4", blocksize: int = 64, *,
                        double_quant: bool = True, compute_dtype: torch.dtype | None = None,
                        skip: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Replace every nn.Linear (except names containing a `skip` entry) by Linear4bit, in place, the way
    transformers' bitsandbytes integration does (it also keeps lm_head in 16 bits). Returns the names replaced."""
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not any(s in name for s in skip)]
    if not targets:
        raise ValueError("The model has no nn.Linear layers to quantize (GPT-2's Conv1D layers are not nn.Linear: "
                         "transformers' bitsandbytes integration converts those itself).")
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Linear4bit.from_linear(m, quant_type, blocksize, double_quant=double_quant,
                                                      compute_dtype=compute_dtype))
    return [name for name, _ in targets]
