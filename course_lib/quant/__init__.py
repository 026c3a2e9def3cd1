"""Quantization primitives shared by every chapter.

    affine  quantize / dequantize / fake_quantize / quant_error, QTensor, qrange, grid_name
    pack    pack_int4 / unpack_int4, to_unsigned / to_signed
    fake    round_ste, fake_quantize_ste, FakeQuantLinear, attach_fake_quant / detach_fake_quant (QAT)
    rtn     quantize_model_rtn: round-to-nearest weight-only quantization of a model
"""

from __future__ import annotations

from .affine import (
    GRANULARITIES,
    QTensor,
    broadcast_scale,
    dequantize,
    fake_quantize,
    grid_name,
    qrange,
    quant_error,
    quantize,
)
from .fake import FakeQuantLinear, attach_fake_quant, detach_fake_quant, fake_quantize_ste, round_ste
from .pack import pack_int4, to_signed, to_unsigned, unpack_int4
from .rtn import RTNReport, quantize_model_rtn, rel_fro

__all__ = [
    "GRANULARITIES",
    "FakeQuantLinear",
    "QTensor",
    "RTNReport",
    "attach_fake_quant",
    "broadcast_scale",
    "dequantize",
    "detach_fake_quant",
    "fake_quantize",
    "fake_quantize_ste",
    "grid_name",
    "pack_int4",
    "qrange",
    "quant_error",
    "quantize",
    "quantize_model_rtn",
    "rel_fro",
    "round_ste",
    "to_signed",
    "to_unsigned",
    "unpack_int4",
]
