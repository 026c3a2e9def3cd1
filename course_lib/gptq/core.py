"""GPTQ for one weight matrix (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"), readable next to the paper.

    res = gptq_quantize_weight(W, H, bits=4, group_size=128, act_order=True)
    res.qweight_float        # dequantized Q, W's shape and dtype: write it into the layer
    res.codes, res.scales, res.zeros, res.g_idx    # what a packed checkpoint stores

The idea (OBS, one column at a time). Let F be the columns not yet quantized and Hinv = [H_F]^-1.
Quantize column j to the grid; the error it makes, e_j = (w_j - q_j) / Hinv_jj, is spread over the
rest as w_k <- w_k - e_j Hinv_jk (k in F), the least-squares correction for the objective
1/2 tr(dW H dW^T) (see hessian.py); then j leaves F (Hinv loses row/column j by Gaussian
elimination). GPTQ's three tricks: every row uses the same column order, so one Hinv serves all
rows; the rows of the successive Hinv's, divided by sqrt(Hinv_jj), are exactly the rows of the
upper Cholesky factor U of H^-1 (H^-1 = U^T U), computed once and stably; and updates are applied
lazily, within a block of `blocksize` columns first and to all later columns with one matmul.
In terms of U:  err_j = (w_j - q_j) / U_jj,   w_k <- w_k - err_j U_jk.

Loss. With Err[:, j] = err_j (w_j the column as updated when it is quantized), the algorithm gives
W - Q = Err @ U, so with H' = H + lambda I = (U^T U)^-1:
    res.loss = 1/2 ||Err||_F^2 = sum_j ||w_j - q_j||^2 / (2 U_jj^2) = 1/2 tr((Q - W) H' (Q - W)^T)
             = (1/n) sum_t ||(Q - W) x_t||^2 + lambda/2 ||Q - W||_F^2        (H = 2/n sum_t x_t x_t^T)
the mean over calibration tokens of the squared output error (summed over output features), plus
the dampening term. With dead columns, W means W with those columns zeroed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..quant.affine import _check_bits, _suggest_group_sizes, compute_scale_zero, qrange, quantize_blocks
from .hessian import fix_dead_columns, inverse_cholesky_upper


@dataclass
class GPTQResult:
    """One quantized matrix. Shapes for W (out, in) with G groups (G = 1 for per-channel):

    qweight_float  (out, in)  Q = scales[:, g_idx] * (codes - zeros[:, g_idx]), in W's dtype
    codes          (out, in)  int8 in [-2^(b-1), 2^(b-1)-1] (symmetric) or uint8 in [0, 2^b-1]
    scales, zeros  (out, G)   float32 (zeros are 0 for symmetric; scales rounded to scale_dtype)
    g_idx          (in,)      int32 group of each input column
    perm           (in,)      the column order used (act-order), None for the natural order
    loss           float      1/2 tr((Q-W)(H+lambda I)(Q-W)^T), see the module docstring
    damp           float      lambda actually added to diag(H) (after any retries)
    """

    qweight_float: torch.Tensor
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    perm: torch.Tensor | None
    loss: float
    damp: float
    bits: int
    group_size: int | None
    symmetric: bool
    static_groups: bool = False

    @property
    def act_order(self) -> bool:
        return self.perm is not None

    @property
    def damp_used(self) -> float:
        return self.damp

    def to(self, device: torch.device | str) -> GPTQResult:
        """The same result with its tensors on `device`."""
        moved = {k: getattr(self, k).to(device) for k in ("qweight_float", "codes", "scales", "zeros", "g_idx")}
        return replace(self, perm=None if self.perm is None else self.perm.to(device), **moved)


def group_params(w: torch.Tensor, bits: int, symmetric: bool,
                 scale_dtype: torch.dtype = torch.float32,
                 restricted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of w (out, k), shapes (out, 1), on GPTQ's grid
    (course_lib.quant.affine.compute_scale_zero with gptq_grid=True; symmetric: s = 2 max|w| / (2^b - 1)),
    or with restricted=True on the restricted symmetric grid s = max|w| / (2^(b-1) - 1), codes
    [-(2^(b-1) - 1), 2^(b-1) - 1] (chapter 02's RTN grid; not GPTQ's, only for like-for-like comparisons).
    With scale_dtype=float16 the scale is rounded to what a GPTQ checkpoint stores and the (asymmetric)
    zero point is recomputed from it."""
    if restricted and not symmetric:
        raise ValueError("restricted=True is a symmetric grid; use symmetric=True with it.")
    scale, zero = compute_scale_zero(w, bits, symmetric, restricted=restricted, gptq_grid=not restricted)
    if scale_dtype != torch.float32:
        scale = scale.to(scale_dtype).to(torch.float32)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # underflow in float16: any s works
        if not symmetric:
            qmin, qmax = qrange(bits, False)
            zero = torch.round(-w.amin(dim=-1, keepdim=True).clamp(max=0.0) / scale).clamp(qmin, qmax)
    return scale, zero


def check_gptq_args(in_features: int, bits: int, group_size: int | None, blocksize: int,
                    name: str = "layer") -> int | None:
    """Validate the quantization settings for a layer with `in_features` inputs; return the group size
    (None for per-channel: group_size None, -1 or in_features)."""
    _check_bits(bits)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int (128 is usual), got {blocksize!r}.")
    if group_size is None or group_size == -1 or group_size == in_features:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int, None or -1 (per-channel), got {group_size!r}.")
    if in_features % group_size:
        raise ValueError(f"{name}: group_size {group_size} does not divide in_features {in_features}; use a divisor "
                         f"such as {_suggest_group_sizes(in_features)}, or None for per-channel.")
    return group_size


def _check_tensors(W: torch.Tensor, H: torch.Tensor, name: str) -> None:
    if not isinstance(W, torch.Tensor) or not W.is_floating_point() or W.dim() != 2:
        raise TypeError(f"{name}: W must be a 2-D floating-point (out, in) tensor, got "
                        f"{getattr(W, 'dtype', type(W).__name__)} {tuple(getattr(W, 'shape', ()))}.")
    cols = W.shape[1]
    if not isinstance(H, torch.Tensor) or tuple(H.shape) != (cols, cols):
        raise ValueError(f"{name}: H must be ({cols}, {cols}) for W of shape {tuple(W.shape)}, got "
                         f"{tuple(getattr(H, 'shape', ()))}.")
    if not torch.isfinite(W).all():
        raise ValueError(f"{name}: the weight holds NaN or inf values.")


@torch.no_grad()
def gptq_quantize_weight(W: torch.Tensor, H: torch.Tensor, bits: int = 4, *, group_size: int | None = 128,
                         symmetric: bool = True, act_order: bool = False, static_groups: bool = False,
                         blocksize: int = 128, percdamp: float = 0.01, scale_dtype: torch.dtype = torch.float32,
                         restricted: bool = False, name: str = "layer") -> GPTQResult:
    """Quantize W (out, in) to `bits` with GPTQ given the layer Hessian H (in, in); see the module docstring.

    group_size: inputs per scale (None or -1: one scale per output row).
    act_order: quantize columns in descending diag(H) order (most-used inputs first, while the most
      columns are left to absorb their error); the order is undone at the end.
    static_groups: take every group's scale/zero from the original W up front (contiguous groups of
      the natural column order, g_idx = column // group_size); otherwise a group's scale/zero is
      computed when its first column comes up, from the error-updated weights of the group's
      columns in processing order (with act_order, g_idx = position in that order // group_size).
    scale_dtype: float16 rounds scales to what a GPTQ checkpoint stores (exact export round trip).
    restricted: round to the restricted symmetric grid (codes -(2^(b-1)-1) .. 2^(b-1)-1, s = max|w| / qmax)
      instead of GPTQ's (see group_params): the same algorithm on chapter 02's RTN grid.
    """
    _check_tensors(W, H, name)
    g = check_gptq_args(W.shape[1], bits, group_size, blocksize, name)
    out_f, cols = W.shape
    dtype = W.dtype
    if restricted and not symmetric:
        raise ValueError(f"{name}: restricted=True is a symmetric grid; use symmetric=True with it.")
    qmin, qmax = qrange(bits, symmetric, restricted=restricted)
    W = W.detach().to(torch.float32).clone()
    H = H.detach().to(device=W.device, dtype=torch.float32).clone()
    fix_dead_columns(W, H)

    n_groups = cols // g if g else 1
    scales = torch.ones(out_f, n_groups, device=W.device)
    zeros = torch.zeros(out_f, n_groups, device=W.device)
    if g and static_groups:  # from the original W, before any column moves or error update
        for k in range(n_groups):
            s, z = group_params(W[:, k * g:(k + 1) * g], bits, symmetric, scale_dtype, restricted)
            scales[:, k], zeros[:, k] = s[:, 0], z[:, 0]
    elif not g:  # per-channel: the whole row, also from the original W (as in the reference)
        s, z = group_params(W, bits, symmetric, scale_dtype, restricted)
        scales[:, 0], zeros[:, 0] = s[:, 0], z[:, 0]

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    order = perm.tolist() if perm is not None else range(cols)  # order[j] = original column at position j
    U, damp = inverse_cholesky_upper(H, percdamp, name=name)
    del H

    Q = torch.zeros_like(W)
    codes = torch.zeros_like(W)
    losses = torch.zeros(out_f, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()          # this block's columns, updated column by column
        Err1 = torch.zeros_like(W1)       # (w - q) / U_jj of each column of the block
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i                    # position in processing order
            if g and not static_groups and j % g == 0:  # a dynamic group starts: fit it to current weights
                s, z = group_params(_current_columns(W, W1, Err1, U, i1, i, j + g), bits, symmetric, scale_dtype,
                                    restricted)
                scales[:, j // g], zeros[:, j // g] = s[:, 0], z[:, 0]
            # static groups belong to original columns, dynamic ones to processing positions
            k = 0 if not g else (order[j] // g if static_groups else j // g)
            s, z = scales[:, k:k + 1], zeros[:, k:k + 1]
            w = W1[:, i:i + 1]
            c = quantize_blocks(w, s, z, qmin, qmax)         # round to the grid: clamp(round(w/s) + z)
            q = s * (c - z)
            codes[:, j], Q[:, j] = c[:, 0], q[:, 0]
            err = (w - q) / U1[i, i]
            losses += err[:, 0] ** 2 / 2
            W1[:, i:] -= err @ U1[i:i + 1, i:]             # OBS update of the rest of the block
            Err1[:, i] = err[:, 0]
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]                   # lazy update of all later columns at once

    # g_idx[c] = group of original column c
    position = torch.arange(cols, device=W.device)
    if perm is not None:  # back to the original column order
        inv = torch.argsort(perm)  # inv[c] = position of column c in processing order
        Q, codes = Q[:, inv], codes[:, inv]
        if g and not static_groups:
            position = inv
    g_idx = position // g if g else torch.zeros(cols, dtype=torch.long, device=W.device)
    return GPTQResult(qweight_float=Q.to(dtype), codes=codes.to(torch.int8 if symmetric else torch.uint8),
                      scales=scales, zeros=zeros, g_idx=g_idx.to(torch.int32), perm=perm, loss=losses.sum().item(),
                      damp=damp, bits=bits, group_size=g, symmetric=symmetric,
                      static_groups=bool(static_groups and g))


def _current_columns(W: torch.Tensor, W1: torch.Tensor, Err1: torch.Tensor, U: torch.Tensor,
                     i1: int, i: int, end: int) -> torch.Tensor:
    """Columns i1+i .. end-1 (processing order) as they are right now, lazy updates included:
    inside the block they are in W1; beyond it (i2 = i1 + W1.shape[1]) W lacks the updates of this
    block's first i columns, which are -Err1[:, :i] @ U[i1:i1+i, i2:end]."""
    i2 = i1 + W1.shape[1]
    inside = W1[:, i:min(end, i2) - i1]
    if end <= i2:
        return inside
    beyond = W[:, i2:end] - Err1[:, :i] @ U[i1:i1 + i, i2:end]
    return torch.cat([inside, beyond], dim=1)
