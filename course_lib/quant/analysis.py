"""Measurements behind chapter 02: quantization error against bits, granularity and group size, the
symmetric grids in common use, the storage of packed int4 layers, and round-to-nearest perplexity sweeps.

    rows = granularity_table(weights, bits=(2, 3, 4, 8), group_sizes=(32, 64, 128))
    rows = group_size_table(w, bits=4, group_sizes=(16, 32, 64, 128, 256))
    rows = grid_table(weights, bits=(2, 3, 4, 8))
    row = packed_int4_storage(w, group_size=128)
    rows = rtn_sweep(model, tok, [dict(bits=4, granularity="group", group_size=128), ...])

Activation ranges (forward hooks) are in ``course_lib.quant.activations``, the error-histogram widget
in ``course_lib.quant.widgets``.

Errors are aggregated over several matrices as one relative Frobenius error,
sqrt(sum ||W - W_hat||^2 / sum ||W||^2), so big matrices weigh more, as they do in the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from .affine import dequantize, quantize
from .pack import pack_int4, to_unsigned, unpack_int4

Weights = Mapping[str, torch.Tensor]


def _as_weights(weights: Weights | torch.Tensor) -> dict[str, torch.Tensor]:
    if isinstance(weights, torch.Tensor):
        return {"w": weights}
    if not isinstance(weights, Mapping) or not weights:
        raise TypeError("Pass a tensor or a non-empty {name: weight} dict, e.g. "
                        "{n: weight_matrix(m) for n, m in linear_layers(model).items()}.")
    return dict(weights)


def model_weights(model, *, skip: tuple[str, ...] = ("lm_head",)) -> dict[str, torch.Tensor]:
    """Every linear layer's weight as a detached float32 (out, in) matrix, by name."""
    from ..lm.models import linear_layers, weight_matrix

    return {n: weight_matrix(m).detach().float() for n, m in linear_layers(model, skip=skip).items()}


def aggregate_rel_error(weights: Weights | torch.Tensor, quantizer) -> float:
    """sqrt(sum ||W - quantizer(W)||^2 / sum ||W||^2) over the matrices (quantizer: tensor -> tensor)."""
    err = norm = 0.0
    for w in _as_weights(weights).values():
        w = w.detach().float()
        err += (w - quantizer(w).float()).pow(2).sum().item()
        norm += w.pow(2).sum().item()
    return math.sqrt(err / norm) if norm > 0 else 0.0


def _fq(w: torch.Tensor, bits: int, **kw) -> torch.Tensor:
    """fake_quantize: dequantize(quantize(w))."""
    return dequantize(quantize(w, bits, **kw))


def granularity_configs(group_sizes: Sequence[int] = (32, 64, 128)) -> list[tuple[str, dict]]:
    """(label, quantize kwargs) for per-tensor, per-channel and each group size, coarse to fine."""
    configs = [("tensor", {"granularity": "tensor"}), ("channel", {"granularity": "channel"})]
    configs += [(f"group {g}", {"granularity": "group", "group_size": g}) for g in sorted(group_sizes, reverse=True)]
    return configs


def granularity_table(weights: Weights | torch.Tensor, bits: Iterable[int] = (2, 3, 4, 8),
                      group_sizes: Sequence[int] = (32, 64, 128), *, symmetric: bool = True) -> list[dict]:
    """One row per bit width: the aggregate relative error per tensor, per channel and per group."""
    weights = _as_weights(weights)
    rows = []
    for b in bits:
        row: dict = {"bits": b}
        for label, kw in granularity_configs(group_sizes):
            row[label] = aggregate_rel_error(weights, lambda w: _fq(w, b, symmetric=symmetric, **kw))
        rows.append(row)
    return rows


def group_size_table(w: Weights | torch.Tensor, bits: int = 4, group_sizes: Sequence[int] = (16, 32, 64, 128, 256),
                     *, symmetric: bool = True) -> list[dict]:
    """Relative error and mean squared error against the group size (one row per size, small to large)
    with the storage cost of the scales: 16 extra bits (one fp16 scale) per group of g weights."""
    weights = _as_weights(w)
    rows = []
    for g in sorted(group_sizes):
        err = norm = sq = 0.0
        count = 0
        for m in weights.values():
            m = m.detach().float()
            d = m - _fq(m, bits, symmetric=symmetric, granularity="group", group_size=g).float()
            err += d.pow(2).sum().item()
            norm += m.pow(2).sum().item()
            count += m.numel()
        rows.append({"group size": g, "rel error": math.sqrt(err / norm), "mse": err / count,
                     "bits per weight": bits + 16 / g + (0 if symmetric else bits / g)})
    return rows


# --- The symmetric grids in common use --------------------------------------------------------------

def symmetric_grids(bits: int) -> dict[str, tuple[float, int, int]]:
    """name -> (divisor d, qmin, qmax) of a symmetric grid: s = max|w| / d, q = clamp(round(w / s), qmin, qmax).

    restricted symmetric  [-(2^(b-1)-1), 2^(b-1)-1], d = 2^(b-1)-1   max|w| lands on the top code
    full, s=max/qmax      [-2^(b-1),     2^(b-1)-1], d = 2^(b-1)-1   same scale: -2^(b-1) is never reached
    full, s=max/2^(b-1)                              d = 2^(b-1)     -max|w| is exact, +max|w| is clipped one step
    GPTQ's grid           [-2^(b-1),     2^(b-1)-1], d = 2^(b-1)-1/2 (s = 2 max|w| / (2^b - 1), GPTQ's sym=True)
    The first and the last are course_lib.quant.grid_name's "restricted symmetric" and "GPTQ's grid".
    """
    h = 2 ** (bits - 1)
    return {"restricted symmetric": (h - 1, -(h - 1), h - 1), "full, s=max/qmax": (h - 1, -h, h - 1),
            "full, s=max/2^(b-1)": (h, -h, h - 1), "GPTQ's grid, s=2max/(2^b-1)": (h - 0.5, -h, h - 1)}


def symmetric_grid_quantize(w: torch.Tensor, bits: int, grid: str, *, group_size: int | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, w_hat) of `w` (2-D) on one of ``symmetric_grids(bits)``, per row or per group of a row."""
    grids = symmetric_grids(bits)
    if grid not in grids:
        raise ValueError(f"Unknown grid {grid!r}; choose one of {', '.join(grids)}.")
    if w.dim() != 2:
        raise ValueError(f"Expected a 2-D (out, in) weight, got shape {tuple(w.shape)}.")
    d, qmin, qmax = grids[grid]
    g = group_size or w.shape[1]
    if w.shape[1] % g:
        raise ValueError(f"group_size {g} does not divide in_features {w.shape[1]}.")
    x = w.detach().float().reshape(w.shape[0], -1, g)
    scale = x.abs().amax(dim=-1, keepdim=True) / d
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale works
    q = torch.clamp(torch.round(x / scale), qmin, qmax)  # q = clamp(round(w / s), qmin, qmax)
    return q.reshape(w.shape), (q * scale).reshape(w.shape)


def grid_table(weights: Weights | torch.Tensor, bits: Iterable[int] = (2, 3, 4, 8), *,
               group_size: int | None = None) -> list[dict]:
    """Aggregate relative error of each symmetric grid (columns) at each bit width (rows), plus the
    number of distinct codes each grid actually uses."""
    weights = _as_weights(weights)
    rows = []
    for b in bits:
        row: dict = {"bits": b}
        for name in symmetric_grids(b):
            row[name] = aggregate_rel_error(weights, lambda w: symmetric_grid_quantize(w, b, name, group_size=group_size)[1])
        rows.append(row)
    return rows


def codes_used(weights: Weights | torch.Tensor, bits: int, grid: str, *, group_size: int | None = None) -> int:
    """How many distinct integer codes a grid uses over all the matrices (at most 2^bits)."""
    used: set[int] = set()
    for w in _as_weights(weights).values():
        q, _ = symmetric_grid_quantize(w, bits, grid, group_size=group_size)
        used |= set(torch.unique(q).to(torch.int64).tolist())
    return len(used)


# --- Storage of a packed int4 layer ----------------------------------------------------------------

def packed_int4_storage(w: torch.Tensor, group_size: int = 128, *, scale_dtype: torch.dtype = torch.float16,
                        symmetric: bool = True) -> dict:
    """Quantize `w` to int4 per group, pack two codes per byte, and measure the bytes actually held.

    Returns the bytes of the packed codes, the scales (and zero points if asymmetric) in `scale_dtype`,
    the total, the fp16/bf16 size of the same weight, bits per weight, and whether unpacking gives the
    codes back exactly."""
    qt = quantize(w, 4, symmetric=symmetric, granularity="group", group_size=group_size)
    codes = to_unsigned(qt.q, 4) if symmetric else qt.q  # 0..15 either way
    packed = pack_int4(codes)
    scales = qt.scale.to(scale_dtype)
    zeros = None if symmetric else qt.zero.to(torch.uint8)  # zero points are integers in 0..15
    code_bytes = packed.numel() * packed.element_size()
    scale_bytes = scales.numel() * scales.element_size()
    zero_bytes = 0 if zeros is None else zeros.numel() * zeros.element_size()
    total = code_bytes + scale_bytes + zero_bytes
    fp16_bytes = w.numel() * 2
    return {"shape": "x".join(map(str, w.shape)), "packed codes B": code_bytes, "scales B": scale_bytes,
            "zeros B": zero_bytes, "total B": total, "fp16 B": fp16_bytes, "vs fp16": total / fp16_bytes,
            "bits/weight": 8 * total / w.numel(), "roundtrip exact": bool(torch.equal(unpack_int4(packed), codes))}


# --- Round-to-nearest over the whole model -----------------------------------------------------------

def rtn_sweep(model, tokenizer, configs: Sequence[Mapping], protocol=None, *, stream=None) -> list[dict]:
    """Perplexity of an RTN-quantized copy of `model` for each config (kwargs of quantize_model_rtn:
    bits, granularity, group_size, symmetric...). The model itself is left unchanged. Each row names its
    grid (``grid_name``: the default is the restricted symmetric grid).
    `stream` (a 1-D LongTensor) replaces the protocol split's tokens, as in ``perplexity``."""
    from ..lm.perplexity import FAST, perplexity
    from .affine import grid_name
    from .rtn import quantize_model_rtn

    protocol = protocol or FAST
    rows = []
    for cfg in configs:
        cfg = dict(cfg)
        bits = cfg.pop("bits")
        report = quantize_model_rtn(model, bits, inplace=False, **cfg)
        label = "channel" if cfg.get("granularity") == "channel" else f"group {cfg.get('group_size', 128)}"
        grid = grid_name(bits, cfg.get("symmetric", True), restricted=cfg.get("restricted", False),
                         gptq_grid=cfg.get("gptq_grid", False))
        rows.append({"bits": bits, "grid": grid, "granularity": label, "weight rel error": report.mean_rel_fro,
                     "perplexity": perplexity(report.model, tokenizer, protocol, stream=stream).ppl})
        del report
    return rows
