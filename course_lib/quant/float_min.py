"""Blockwise quantization with a float minimum (GGUF's Q4_1) against one with an integer zero point.

Two asymmetric 4-bit grids for a block of g weights with minimum lo and maximum hi:

    float minimum (Q4_1):      s = (hi - lo) / 15,  q = round((w - lo) / s),  w_hat = s * q + lo
    integer zero point:        s = (hi' - lo') / 15 over the range widened to include 0,
                               z = round(-lo' / s),  w_hat = s * (q - z)     (quant.affine, symmetric=False)

The float minimum puts the grid's first point exactly on the block's minimum; the integer zero point
moves the grid by up to half a step so that 0 is a grid point, and widens it when the block does not
straddle 0. GGUF's Q4_1 stores s and lo in float16, 5 bits per weight at g = 32.

Why the course needs this: the real model (course_lib.lm.real_model) is stored as Q4_1 in 32-weight
blocks, so its float weights already lie on such a grid. `grid_fact_rows` measures how exactly each
quantizer reproduces them.
"""

from __future__ import annotations

import torch

from .affine import fake_quantize


def _blocks(w: torch.Tensor, group_size: int) -> torch.Tensor:
    if w.dim() != 2:
        raise ValueError(f"Expected a 2-D (out, in) weight, got shape {tuple(w.shape)}.")
    if w.shape[1] % group_size:
        raise ValueError(f"group_size {group_size} does not divide the layer's {w.shape[1]} inputs; "
                         f"pick a divisor (GGUF's blocks are 32).")
    return w.detach().to(torch.float32).reshape(w.shape[0], w.shape[1] // group_size, group_size)


def quantize_float_min(w: torch.Tensor, bits: int = 4, group_size: int = 32
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, minimum) per block of `group_size` inputs: the Q4_1 recipe at any bit width."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8, got {bits}.")
    blocks = _blocks(w, group_size)
    lo = blocks.amin(dim=-1, keepdim=True)
    hi = blocks.amax(dim=-1, keepdim=True)
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant block: every code 0, w_hat = lo
    q = torch.clamp(torch.round((blocks - lo) / scale), 0, levels)
    return q.reshape(w.shape).to(torch.uint8), scale, lo


def fake_quantize_float_min(w: torch.Tensor, bits: int = 4, group_size: int = 32) -> torch.Tensor:
    """scale * q + minimum, block by block, in w's shape and dtype."""
    q, scale, lo = quantize_float_min(w, bits, group_size)
    blocks = q.to(torch.float32).reshape(scale.shape[0], scale.shape[1], group_size)
    return (scale * blocks + lo).reshape(w.shape).to(w.dtype)


def _error(w: torch.Tensor, w_hat: torch.Tensor, step: torch.Tensor) -> dict:
    err = (w.to(torch.float32) - w_hat.to(torch.float32)).abs()
    return {"rel_fro": (torch.linalg.vector_norm(err) / torch.linalg.vector_norm(w.float())).item(),
            "max_err_in_steps": (err / step).max().item(),
            "exact": (err <= 1e-5 * step).float().mean().item()}


def grid_fact(w: torch.Tensor, bits: int = 4, group_size: int = 32) -> dict[str, dict]:
    """How well each 4-bit quantizer with `group_size` blocks reproduces w.

    exact: share of weights reproduced to within 1e-5 of a grid step (float rounding);
    max_err_in_steps: the largest error in units of the block's step (hi - lo) / 15."""
    blocks = _blocks(w, group_size)
    step = ((blocks.amax(-1, keepdim=True) - blocks.amin(-1, keepdim=True)) / (2**bits - 1)).clamp_min(1e-12)
    step = step.expand_as(blocks).reshape(w.shape)
    return {
        "float minimum (Q4_1)": _error(w, fake_quantize_float_min(w, bits, group_size), step),
        "integer zero point": _error(w, fake_quantize(w, bits, symmetric=False, granularity="group",
                                                      group_size=group_size), step),
        "symmetric": _error(w, fake_quantize(w, bits, symmetric=True, granularity="group",
                                             group_size=group_size), step),
    }


def grid_fact_rows(weights: dict[str, torch.Tensor], bits: int = 4, group_size: int = 32) -> list[dict]:
    """One row per quantizer, aggregated over `weights` (name -> (out, in) tensor):
    relative Frobenius error over all weights, the worst error in steps, the share reproduced exactly."""
    per = {name: grid_fact(w, bits, group_size) for name, w in weights.items()}
    sizes = {name: w.numel() for name, w in weights.items()}
    norms = {name: torch.linalg.vector_norm(w.float()).item() ** 2 for name, w in weights.items()}
    rows = []
    for method in next(iter(per.values())):
        err2 = sum((per[n][method]["rel_fro"] ** 2) * norms[n] for n in per)
        rows.append({"quantizer (4-bit, blocks of %d)" % group_size: method,
                     "rel. error": (err2 / sum(norms.values())) ** 0.5,
                     "worst error (steps)": max(per[n][method]["max_err_in_steps"] for n in per),
                     "weights reproduced": sum(per[n][method]["exact"] * sizes[n] for n in per) / sum(sizes.values())})
    return rows
