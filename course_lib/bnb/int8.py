"""LLM.int8() from scratch: vector-wise int8 quantization and the mixed-precision outlier decomposition.

Dettmers et al. (2022) multiply X (tokens x inputs) by W^T (W: outputs x inputs) in int8:

    X ≈ diag(c_x) · X_q / 127      c_x[t] = max_j |X[t, j]|     (absmax per token, per row of X)
    W ≈ diag(c_w) · W_q / 127      c_w[o] = max_j |W[o, j]|     (absmax per output, per column of W^T)
    X W^T ≈ (X_q W_q^T) ⊙ (c_x c_w^T) / 127²                     (int8 products summed in int32)

A single activation of magnitude 60 in a token's row sets that row's scale: every other entry of
the row is then rounded on a grid 60/127 wide. The decomposition takes the input columns that hold
any |x| ≥ threshold (6.0 by default) out of the int8 product and multiplies them in 16 bits:

    X W^T = X[:, O] W[:, O]^T  (16-bit)  +  X[:, ¬O] W[:, ¬O]^T  (int8)

bitsandbytes' Linear8bitLt (inference) does exactly this, with one detail the paper does not have:
it keeps only the int8 weight, so the 16-bit part uses the de-quantized int8 weight columns
(``outlier_weight="int8"``); the paper's 16-bit weight columns are ``outlier_weight="float"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Q_MAX = 127  # symmetric int8 grid: -127..127 (bitsandbytes never uses -128)


def vectorwise_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax int8 per row: (codes int8 [rows, cols], absmax float32 [rows]). A zero row stays zero."""
    if x.dim() != 2:
        raise ValueError(f"vectorwise_quant takes a 2-D tensor (rows x columns); got shape {tuple(x.shape)}.")
    absmax = x.abs().amax(dim=1).float()
    scale = torch.where(absmax > 0, Q_MAX / absmax, torch.zeros_like(absmax))  # 127 / c per row
    return torch.round(x * scale[:, None]).to(torch.int8), absmax


def vectorwise_dequant(q: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """float32 values of int8 codes: q · c / 127 per row."""
    return q.float() * (absmax.float()[:, None] / Q_MAX)


def int8_matmul(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """X_q W_q^T with every product and sum in integers (int32 accumulation, as the int8 tensor cores do)."""
    if xq.dtype != torch.int8 or wq.dtype != torch.int8:
        raise TypeError(f"int8_matmul multiplies int8 codes; got {xq.dtype} and {wq.dtype}.")
    if xq.is_cuda and xq.shape[0] > 16 and xq.shape[1] % 8 == 0 and wq.shape[0] % 8 == 0:
        return torch._int_mm(xq, wq.t().contiguous())  # cuBLAS int8 GEMM (its shape rules: m > 16, k, n % 8)
    return xq.to(torch.int32) @ wq.to(torch.int32).t()  # exact: |sum| <= 127² · k fits in int32 for k < 133,000


@dataclass
class Int8Weight:
    """A weight stored the LLM.int8() way: int8 codes and one float32 absmax per output row."""

    codes: torch.Tensor  # int8 [out, in]
    absmax: torch.Tensor  # float32 [out]

    @classmethod
    def from_float(cls, w: torch.Tensor) -> Int8Weight:
        return cls(*vectorwise_quant(w))

    def dequantize(self) -> torch.Tensor:
        return vectorwise_dequant(self.codes, self.absmax)


@dataclass
class Int8Result:
    out: torch.Tensor  # X W^T (+ bias), in the input's dtype
    outlier_cols: torch.Tensor  # int64 indices of the input columns that went through 16 bits


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the columns of x (tokens x inputs) that hold any |x| >= threshold; none if threshold <= 0."""
    if threshold <= 0:
        return torch.empty(0, dtype=torch.long, device=x.device)
    return torch.nonzero((x.abs() >= threshold).any(dim=0)).flatten()


def llm_int8_linear(x: torch.Tensor, weight: Int8Weight | torch.Tensor, bias: torch.Tensor | None = None, *,
                    threshold: float = 6.0, outlier_weight: str | torch.Tensor = "int8") -> Int8Result:
    """y = x W^T + b by LLM.int8(): outlier columns (|x| >= threshold) in 16 bits, the rest in int8.

    x: [..., in] (any float dtype; bitsandbytes computes in float16). weight: an Int8Weight, or a float
    tensor [out, in] quantized here. threshold <= 0 turns the decomposition off (plain vector-wise int8).
    outlier_weight: "int8" (bitsandbytes: de-quantized int8 weight columns) or the float weight [out, in]
    (the paper: the original 16-bit columns).
    """
    w = weight if isinstance(weight, Int8Weight) else Int8Weight.from_float(weight)
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.shape[1] != w.codes.shape[1]:
        raise ValueError(f"x has {x2.shape[1]} input features but the weight expects {w.codes.shape[1]}.")
    cols = outlier_columns(x2, threshold)
    # 1. int8 part: outlier entries are zeroed before the row absmax is taken, and the outlier columns' codes are
    #    zeroed afterwards, so those columns contribute nothing to the int8 product.
    inliers = x2.masked_fill(x2.abs() >= threshold, 0) if cols.numel() else x2
    xq, cx = vectorwise_quant(inliers)
    if cols.numel():
        xq[:, cols] = 0
    acc = int8_matmul(xq, w.codes)  # int32
    out = acc.float() * (cx[:, None] * w.absmax[None, :]) / Q_MAX**2
    if bias is not None:
        out = out + bias.float()
    out = out.to(x.dtype)
    # 2. the outlier columns in 16-bit precision
    if cols.numel():
        if isinstance(outlier_weight, torch.Tensor):
            w_cols = outlier_weight[:, cols]
        elif outlier_weight == "int8":
            w_cols = vectorwise_dequant(w.codes[:, cols], w.absmax)
        else:
            raise ValueError(f'outlier_weight must be "int8" or the float weight tensor; got {outlier_weight!r}.')
        out = out.addmm(x2[:, cols], w_cols.to(x.dtype).t())  # out + X[:, O] W[:, O]^T, one rounding
    return Int8Result(out.reshape(*shape[:-1], -1), cols)


def per_token_error(x: torch.Tensor, w: torch.Tensor, *, threshold: float = 6.0) -> dict[str, torch.Tensor]:
    """Per token (row of x): the error ||y_hat - y|| of plain absmax int8 and of the decomposition, relative to the
    norm of the ordinary part of the output, y_ord = X[:, ¬O] W[:, ¬O]^T (O: the outlier columns). That part is
    what a token's ordinary features carry, and what one huge value in the row can wipe out."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    ref = x2 @ w.float().t()
    wq = Int8Weight.from_float(w.float())
    plain = llm_int8_linear(x2, wq, threshold=0.0).out
    mixed = llm_int8_linear(x2, wq, threshold=threshold, outlier_weight=w.float())
    ordinary = x2.clone()
    ordinary[:, mixed.outlier_cols] = 0
    norm = (ordinary @ w.float().t()).norm(dim=1).clamp_min(1e-12)
    return {"int8": (plain - ref).norm(dim=1) / norm, "decomposed": (mixed.out - ref).norm(dim=1) / norm,
            "outlier_cols": mixed.outlier_cols, "has_outlier": (x2.abs() >= threshold).any(dim=1)}
