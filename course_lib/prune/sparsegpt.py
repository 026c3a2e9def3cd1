"""SparseGPT for one weight matrix (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can
Be Accurately Pruned in One-Shot"), readable next to the paper and next to course_lib.gptq.core.

    res = sparsegpt_prune_weight(W, H, sparsity=0.5)            # unstructured 50%
    res = sparsegpt_prune_weight(W, H, nm="2:4")                # 2:4
    res = sparsegpt_prune_weight(W, H, 0.5, bits=4)             # pruned and quantized jointly
    layer.weight.copy_(res.weight)

It is GPTQ's loop with "round to the grid" replaced by "set to zero (if masked)". The objective is
the same, the layer's output error 1/2 tr(dW H dW^T) with H = 2/n X X^T (course_lib.gptq.hessian),
and so is the machinery, reused from there: dampening, dead columns, and U, the upper Cholesky
factor of H^-1. Column j is fixed to q_j (0 where masked, w_j elsewhere; rounded too with bits);
its error err_j = (w_j - q_j) / U_jj is spread over the later columns, w_k <- w_k - err_j U_jk, so
the weights that stay absorb what the pruned ones did. Kept weights therefore change: this is what
magnitude pruning and Wanda do not do.

Mask selection. Which weights to prune is decided on the *updated* weights, one block of columns
at a time ("adaptive mask selection"): when a block of `blocksize` (128) columns starts, its
weights already hold the updates from every earlier block, and the OBS saliency
w^2 / [H^-1]_jj = (w / U_jj)^2 picks the k = int(rows * cols_in_block * p) weights to prune, jointly
over all rows and columns of the block. For N:M the choice is made per group of M columns, when
the group starts, keeping the N most salient of every M in each row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..gptq.core import _check_tensors, group_params
from ..gptq.hessian import fix_dead_columns, inverse_cholesky_upper
from ..quant.affine import _check_bits, qrange, quantize_blocks
from .unstructured import check_nm_fits, check_sparsity, parse_nm, prune_lowest


@dataclass
class SparseGPTResult:
    """One pruned matrix: weight (W's shape and dtype, zeros where pruned, kept weights updated),
    mask (True = kept), loss = 1/2 sum_j ||w_j - q_j||^2 / U_jj^2 (the output error GPTQ's loss
    measures, see course_lib.gptq.core), damp = the lambda added to diag(H)."""

    weight: torch.Tensor
    mask: torch.Tensor
    loss: float
    damp: float
    sparsity: float
    nm: tuple[int, int] | None
    bits: int | None


@torch.no_grad()
def sparsegpt_prune_weight(W: torch.Tensor, H: torch.Tensor, sparsity: float = 0.5, *, nm=None,
                           bits: int | None = None, symmetric: bool = True, blocksize: int = 128,
                           percdamp: float = 0.01, name: str = "layer") -> SparseGPTResult:
    """Prune W (out, in) to `sparsity` (or an N:M pattern) with SparseGPT given the layer Hessian H (in, in).

    bits: also quantize the kept weights to this many bits, one scale per output row fitted on the
      original W (the reference's joint mode); pruned weights stay exactly 0.
    blocksize: columns per block (mask selection and lazy updates); with N:M it must divide by M.
    """
    _check_tensors(W, H, name)
    nm = parse_nm(nm)
    check_nm_fits(W.shape[1], nm, name)
    sparsity = 1 - nm[0] / nm[1] if nm else check_sparsity(sparsity)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int (128 is usual), got {blocksize!r}.")
    if nm and blocksize % nm[1]:
        raise ValueError(f"{name}: blocksize {blocksize} must be a multiple of M={nm[1]} for {nm[0]}:{nm[1]}.")
    if bits is not None:
        _check_bits(bits)

    out_f, cols = W.shape
    dtype = W.dtype
    W = W.detach().to(torch.float32).clone()
    H = H.detach().to(device=W.device, dtype=torch.float32).clone()
    fix_dead_columns(W, H)
    if bits is not None:  # one grid per row, from the original weights
        qmin, qmax = qrange(bits, symmetric)
        scale, zero = group_params(W, bits, symmetric)
    U, damp = inverse_cholesky_upper(H, percdamp, name=name)
    del H

    mask = torch.ones_like(W, dtype=torch.bool)
    loss = 0.0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        if nm is None:  # adaptive mask: the k least salient weights of the whole (updated) block
            saliency = (W1 / d) ** 2
            mask[:, i1:i2] = prune_lowest(saliency.reshape(-1), int(saliency.numel() * sparsity)).reshape(W1.shape)
        keep1 = mask[:, i1:i2].to(W1.dtype)  # a view's copy: refreshed below for N:M groups
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:  # a group of M columns starts: keep N per row
                n, m = nm
                saliency = (W1[:, i:i + m] / d[i:i + m]) ** 2
                group = prune_lowest(saliency, m - n)
                mask[:, i1 + i:i1 + i + m] = group
                keep1[:, i:i + m] = group
            w = W1[:, i]
            q = w * keep1[:, i]                                   # pruned weights become 0
            if bits is not None:  # 0 stays 0: s * (round(0 / s) + z - z)
                q = (scale * (quantize_blocks(q.unsqueeze(1), scale, zero, qmin, qmax) - zero))[:, 0]
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1)             # OBS update of the rest of the block
            Err1[:, i] = err
        loss += (Err1 ** 2).sum().item() / 2
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]                         # lazy update of all later columns
    return SparseGPTResult(weight=W.to(dtype), mask=mask, loss=loss, damp=damp,
                           sparsity=sparsity, nm=nm, bits=bits)


@torch.no_grad()
def sparsegpt_block(W: torch.Tensor, U: torch.Tensor, i1: int, i2: int, sparsity: float = 0.5, *,
                    nm=None) -> torch.Tensor:
    """One block of sparsegpt_prune_weight's loop on its own (no quantization): columns i1:i2 of W (out, in).

    U is the upper Cholesky factor of the damped H^-1 (course_lib.gptq.hessian.inverse_cholesky_upper). The mask
    is chosen on the block's weights as given (which hold the updates of the blocks before): the k =
    int(rows * (i2 - i1) * sparsity) lowest saliencies (w / U_jj)^2 of the block jointly, or with nm the M - N
    lowest of each row in every group of M columns, chosen when the group starts. Then column by column: q = w
    (0 where pruned), err = (w - q) / U_jj, the block's later columns w_k -= err U_jk; finally every column from i2
    on gets the block's errors at once (W[:, i2:] -= Err @ U[i1:i2, i2:]).

    Returns a float32 copy of W with columns before i1 unchanged. Looped over i1 = 0, blocksize, 2 blocksize, ...
    it gives sparsegpt_prune_weight(W, H, sparsity, nm=nm, blocksize=blocksize).weight (after fix_dead_columns).
    Chapter 07's exercise compares with it.
    """
    nm = parse_nm(nm)
    sparsity = 1 - nm[0] / nm[1] if nm else check_sparsity(sparsity)
    if not 0 <= i1 < i2 <= W.shape[1]:
        raise ValueError(f"the block must satisfy 0 <= i1 < i2 <= in_features = {W.shape[1]}, got {i1}:{i2}.")
    if nm and (i2 - i1) % nm[1]:
        raise ValueError(f"a block of {i2 - i1} columns holds no whole number of {nm[0]}:{nm[1]} groups.")
    if U.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"U must be ({W.shape[1]}, {W.shape[1]}), got {tuple(U.shape)}.")
    W = W.detach().to(torch.float32).clone()
    U = U.detach().to(device=W.device, dtype=torch.float32)
    W1 = W[:, i1:i2].clone()
    Q1 = torch.zeros_like(W1)
    Err1 = torch.zeros_like(W1)
    U1 = U[i1:i2, i1:i2]
    d = torch.diag(U1)
    if nm is None:  # adaptive mask: the k least salient weights of the whole block
        saliency = (W1 / d) ** 2
        keep1 = prune_lowest(saliency.reshape(-1), int(saliency.numel() * sparsity)).reshape(W1.shape).to(W1.dtype)
    else:
        keep1 = torch.ones_like(W1)
    for i in range(i2 - i1):
        if nm is not None and i % nm[1] == 0:  # a group of M columns starts: keep the N most salient per row
            n, m = nm
            keep1[:, i:i + m] = prune_lowest((W1[:, i:i + m] / d[i:i + m]) ** 2, m - n).to(W1.dtype)
        w = W1[:, i]
        q = w * keep1[:, i]
        Q1[:, i] = q
        err = (w - q) / d[i]
        W1[:, i:].addr_(err, U1[i, i:], alpha=-1)
        Err1[:, i] = err
    W[:, i1:i2] = Q1
    W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W
