"""Reference solutions for chapter 05's exercises (kept out of the notebooks).

Plain torch, written from scratch: course_lib.bnb is what the checks compare against, so it is not used here.
"""

import torch

from course_lib.formats import nf4_code_book

# NF4's 16 values (quantiles of N(0, 1) scaled to [-1, 1], sorted): the same table as
# course_lib.bnb.nf4.code_values("nf4"), which the learner is given.
NF4 = torch.tensor(nf4_code_book(), dtype=torch.float32)


def nf4_roundtrip(w: torch.Tensor, blocksize: int) -> torch.Tensor:
    # One row per block of `blocksize` consecutive values of the flattened tensor.
    blocks = w.reshape(-1, blocksize).float()
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    # A block of zeros: divide by 1 instead of 0, so it stays zeros (and the nearest code value is 0.0).
    normed = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    # Nearest of the 16 values: the one with the smallest distance (NF4 is not evenly spaced, so no rounding).
    idx = (normed[..., None] - NF4).abs().argmin(dim=-1)
    # De-quantize: code value times its block's absmax, back in w's shape.
    return (NF4[idx] * absmax).reshape(w.shape)


def _rowwise_int8(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Absmax per row; codes round(v * 127 / absmax) in -127..127; a zero row keeps codes 0 (no 0 / 0).
    absmax = v.abs().amax(dim=1)
    scale = torch.where(absmax > 0, 127 / absmax, torch.zeros_like(absmax))
    return torch.round(v * scale[:, None]).to(torch.int8), absmax


def int8_outlier_matmul(x: torch.Tensor, w: torch.Tensor, threshold: float) -> torch.Tensor:
    # 1. The outlier entries and columns (threshold <= 0: none, plain vector-wise int8).
    if threshold > 0:
        big = x.abs() >= threshold
    else:
        big = torch.zeros_like(x, dtype=torch.bool)
    cols = big.any(dim=0)
    # 2. int8 part: outlier entries zeroed before the row absmax, outlier columns' codes zeroed after.
    xq, cx = _rowwise_int8(x.masked_fill(big, 0))
    xq[:, cols] = 0
    wq, cw = _rowwise_int8(w)  # per output row, over the whole row
    acc = xq.to(torch.int32) @ wq.to(torch.int32).t()  # integer products, summed in int32
    y = acc.float() * (cx[:, None] * cw[None, :]) / 127**2
    # 3. float part: the outlier columns with the original float weight columns.
    return y + x[:, cols] @ w[:, cols].t()


def double_quant_bits(blocksize: int, blocksize2: int) -> float:
    # 4-bit code per weight; an 8-bit absmax per block; a float32 scale per block of blocksize2 absmaxes.
    return 4 + 8 / blocksize + 32 / (blocksize * blocksize2)
