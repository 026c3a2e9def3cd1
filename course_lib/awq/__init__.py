"""AWQ (Lin et al. 2023), written for the course: activation-aware scales, folded, then round-to-nearest.

    core   ScaleGroup, AWQ_ARCHITECTURES, scale_groups, awq_scales, search_scales -> ScaleSearch, fold_scales
    model  awq_quantize_model(model, calibration, bits, group_size=...) -> AWQReport (block by block, float inputs)

    from course_lib.awq import awq_quantize_model
    report = awq_quantize_model(model, calibration_batches(tok, 128, 256), bits=4, group_size=128)
"""

from __future__ import annotations

from .core import (AWQ_ARCHITECTURES, N_GRID, ScaleGroup, ScaleSearch, architecture_groups, awq_scales, fold_scales,
                   normalise, scale_groups, search_scales, weight_mean)
from .model import AWQReport, awq_quantize_model

__all__ = [
    "AWQ_ARCHITECTURES",
    "AWQReport",
    "architecture_groups",
    "N_GRID",
    "ScaleGroup",
    "ScaleSearch",
    "awq_quantize_model",
    "awq_scales",
    "fold_scales",
    "normalise",
    "scale_groups",
    "search_scales",
    "weight_mean",
]
