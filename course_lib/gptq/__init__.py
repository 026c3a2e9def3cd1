"""GPTQ (Frantar et al. 2022), written for the course: one matrix, a whole model, int4 storage, export.

    hessian  HessianAccumulator (H = 2/n sum x x^T), fix_dead_columns, inverse_cholesky_upper (with dampening)
    core     gptq_quantize_weight(W, H, bits, group_size=..., act_order=..., static_groups=...) -> GPTQResult
    model    gptq_quantize_model(model, calibration, bits, ...) -> GPTQReport: block by block, true-sequential
    qlinear  QuantLinear: GPTQ "v1" int32 packing (qweight, qzeros, scales, g_idx), dequantize + matmul
    export   save_gptq_checkpoint / load_gptq_checkpoint: a checkpoint transformers loads as a GPTQ model
    teach    chapter 03's experiments; quantize_grid (FP / RTN / GPTQ, and extra methods) over a whole model
    tools, tools_status   llm-compressor's and GPTQModel's GPTQ, run on the same job; AutoGPTQ's state today
    bench    gptq-time and gptq-grids (python -m course_lib.bench ...)

    from course_lib.gptq import gptq_quantize_model, save_gptq_checkpoint
    report = gptq_quantize_model(model, calibration_batches(tok, 128, 256), bits=4, group_size=128)
"""

from __future__ import annotations

from .core import GPTQResult, check_gptq_args, gptq_quantize_weight, group_params
from .export import load_gptq_checkpoint, quantization_config, save_gptq_checkpoint
from .hessian import HessianAccumulator, fix_dead_columns, inverse_cholesky_upper
from .model import GPTQReport, gptq_quantize_model
from .qlinear import PACK_BITS, QuantLinear, pack_rows, pack_zeros_v1, unpack_rows, unpack_zeros_v1

__all__ = [
    "GPTQReport",
    "GPTQResult",
    "HessianAccumulator",
    "PACK_BITS",
    "QuantLinear",
    "check_gptq_args",
    "fix_dead_columns",
    "gptq_quantize_model",
    "gptq_quantize_weight",
    "group_params",
    "inverse_cholesky_upper",
    "load_gptq_checkpoint",
    "pack_rows",
    "pack_zeros_v1",
    "quantization_config",
    "save_gptq_checkpoint",
    "unpack_rows",
    "unpack_zeros_v1",
]
