"""AWQ (Lin et al. 2023), written for the course: activation-aware scales, folded, clipping, then round-to-nearest.

    core   ScaleGroup, AWQ_ARCHITECTURES, scale_groups, awq_scales, search_scales -> ScaleSearch, fold_scales,
           search_clip / apply_clip (the clipping search)
    model  awq_quantize_model(model, calibration, bits, group_size=...) -> AWQReport (block by block, float inputs)
    export        the AWQ "GEMM" checkpoint: save_awq_checkpoint / load_awq_checkpoint
    smoothquant   SmoothQuant: activation maxima, the migration scales, simulated W8A8
    teach         chapter 04's experiments; quantize_grid with AWQ among the methods
    tools, tools_status   llm-compressor's and GPTQModel's AWQ and SmoothQuant; AutoAWQ's state today
    bench         awq-time and awq-seeds (python -m course_lib.bench ...)

    from course_lib.awq import awq_quantize_model
    report = awq_quantize_model(model, calibration_batches(tok, 128, 256), bits=4, group_size=128)
"""

from __future__ import annotations

from .core import (AWQ_ARCHITECTURES, N_GRID, ScaleGroup, ScaleSearch, apply_clip, architecture_groups, awq_scales,
                   fold_scales, normalise, scale_groups, search_clip, search_scales, weight_mean)
from .model import AWQReport, awq_quantize_model

__all__ = [
    "AWQ_ARCHITECTURES",
    "AWQReport",
    "architecture_groups",
    "N_GRID",
    "apply_clip",
    "ScaleGroup",
    "ScaleSearch",
    "awq_quantize_model",
    "awq_scales",
    "fold_scales",
    "normalise",
    "scale_groups",
    "search_clip",
    "search_scales",
    "weight_mean",
]
