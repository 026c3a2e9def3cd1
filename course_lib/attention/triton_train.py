"""FlashAttention for training: chapter 10's forward kernel with its logsumexp store on (``triton_flash._flash_fwd``,
STORE_LSE), FlashAttention-2's backward pass in Triton, and ``tiled.LseAttention`` joining them for autograd.

    out = flash_attention_train(q, k, v, causal=True)     # q (B, H, Tq, d), k/v (B, H_kv, Tk, d), fp16/bf16
    out.sum().backward()                                  # q.grad, k.grad, v.grad from the Triton kernels

Why the logsumexp is enough. The forward pass never stores the (Tq, Tk) probabilities P. For row i it keeps
L_i = log Σ_j exp(s_ij), the logsumexp of its scores s_ij = scale · q_i·k_j; then P_ij = exp(s_ij − L_i) for any
block of keys, recomputed from q_i, k_j and one number per row. The backward pass of O = P V is then, block by block:

    dV = Pᵀ dO          dP = dO Vᵀ          dS = P ∘ (dP − Δ),  Δ_i = Σ_j P_ij dP_ij = dO_i · O_i
    dQ = scale · dS K   dK = scale · dSᵀ Q

Δ is the one reduction over a whole row that the blocks cannot see; it equals dO_i·O_i, so a small kernel computes it
first from O and dO. Two kernels then split the work so that no two programs write the same gradient:

* ``_bwd_dkdv``: one program per block of keys of one KV head. It loads its K and V block once and walks the query
  blocks that can see it (for GQA, those of every query head sharing the KV head), accumulating dK and dV in
  registers: the gradients of the heads that share a KV head are summed there, with no atomics.
* ``_bwd_dq``: one program per block of queries, walking the key blocks as the forward pass does and accumulating dQ.

Everything is in base 2 as in the forward kernel (exp2, scores times log2(e)·scale; the saved L is in base 2 too).
Rows that see no key (bottom-right causal with Tq > Tk) output zeros, and their L is +inf so that every P_ij of theirs
is exactly 0 in the backward pass: their gradients are zero, never NaN.
"""

from __future__ import annotations

import math

import torch

from .tiled import LseAttention
from .triton_hopper import flash_attention_hopper, is_hopper, tma_ready
from .triton_flash import check_inputs, interpreter_numpy_fix, interpreting, triton

if triton is not None:
    import triton.language as tl

    from .triton_flash import _flash_fwd, _key_range

LOG2E = 1.4426950408889634


if triton is not None:

    @triton.jit
    def _bwd_delta(O, DO, DELTA, stride_ob, stride_oh, stride_om, stride_db, stride_dh, stride_dm, H, T_Q,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
        """Δ_i = dO_i · O_i in float32, one block of rows per program."""
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b, h = bh // H, bh % H
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        rows = offs_m[:, None] < T_Q
        o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :], mask=rows,
                    other=0.0)
        do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dm + offs_d[None, :], mask=rows,
                     other=0.0)
        tl.store(DELTA + bh * T_Q + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=offs_m < T_Q)

    @triton.jit
    def _dkdv_blocks(dk, dv, k, v, q_ptrs, do_ptrs, l_ptr, d_ptr, stride_qm, stride_dm, offs_n, start, stop, T_Q, T_K,
                     OFFSET, qk_scale, BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
        """dK, dV of one key block from the query blocks start..stop of one query head (transposed scores:
        rows are keys, columns queries, so that dV += Pᵀ dO and dK += dSᵀ Q need no transpose of P)."""
        offs_m = tl.arange(0, BLOCK_M)
        for start_m in range(start, stop, BLOCK_M):
            start_m = tl.multiple_of(start_m, BLOCK_M)
            rows = start_m + offs_m
            if MASKED:
                q = tl.load(q_ptrs + start_m * stride_qm, mask=rows[:, None] < T_Q, other=0.0)
                do = tl.load(do_ptrs + start_m * stride_dm, mask=rows[:, None] < T_Q, other=0.0)
                lse = tl.load(l_ptr + rows, mask=rows < T_Q, other=float("inf"))
                delta = tl.load(d_ptr + rows, mask=rows < T_Q, other=0.0)
            else:
                q = tl.load(q_ptrs + start_m * stride_qm)
                do = tl.load(do_ptrs + start_m * stride_dm)
                lse = tl.load(l_ptr + rows)
                delta = tl.load(d_ptr + rows)
            st = tl.dot(k, tl.trans(q)) * qk_scale                 # (BLOCK_N keys, BLOCK_M queries), base 2
            if MASKED:
                keep = (offs_n[:, None] < T_K) & (rows[None, :] < T_Q)
                if CAUSAL:
                    keep = keep & (offs_n[:, None] <= rows[None, :] + OFFSET)
                st = tl.where(keep, st, float("-inf"))
            pt = tl.math.exp2(st - lse[None, :])                   # Pᵀ, recomputed from L
            dv += tl.dot(pt.to(do.dtype), do)
            dpt = tl.dot(v, tl.trans(do))                          # (dO Vᵀ)ᵀ
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(q.dtype), q)
        return dk, dv

    @triton.jit
    def _bwd_dkdv(Q, K, V, DO, L, DELTA, DK, DV, qk_scale, sm_scale,
                  stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dm,
                  stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                  H, H_KV, GROUP, T_Q, T_K, OFFSET,
                  HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        start_n = tl.program_id(0) * BLOCK_N
        bh_kv = tl.program_id(1)
        b, h_kv = bh_kv // H_KV, bh_kv % H_KV
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        cols = offs_n[:, None] < T_K
        k = tl.load(K + b * stride_kb + h_kv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :], mask=cols,
                    other=0.0)
        v = tl.load(V + b * stride_vb + h_kv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :], mask=cols,
                    other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        # The query blocks that can see this key block: causal ones from the first row whose diagonal reaches it.
        # Rows from `mid` on see every key of the block (no mask), up to the last whole query block.
        q_full = T_Q // BLOCK_M * BLOCK_M
        if CAUSAL:
            lo = tl.maximum(start_n - OFFSET, 0) // BLOCK_M * BLOCK_M
            mid = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - OFFSET, 0), BLOCK_M) * BLOCK_M
        else:
            lo = 0
            mid = 0
        if start_n + BLOCK_N > T_K:   # a ragged last key block: every query block needs the column mask
            mid = q_full
        mid = tl.minimum(tl.maximum(mid, lo), q_full)
        tail = tl.maximum(q_full, lo)
        for g in range(0, GROUP):     # GQA: the query heads that share this KV head, their gradients summed here
            h = h_kv * GROUP + g
            q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
            do_ptrs = DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dm + offs_d[None, :]
            l_ptr = L + (b * H + h) * T_Q
            d_ptr = DELTA + (b * H + h) * T_Q
            dk, dv = _dkdv_blocks(dk, dv, k, v, q_ptrs, do_ptrs, l_ptr, d_ptr, stride_qm, stride_dm, offs_n, lo, mid,
                                  T_Q, T_K, OFFSET, qk_scale, BLOCK_M, True, CAUSAL)
            dk, dv = _dkdv_blocks(dk, dv, k, v, q_ptrs, do_ptrs, l_ptr, d_ptr, stride_qm, stride_dm, offs_n, mid,
                                  q_full, T_Q, T_K, OFFSET, qk_scale, BLOCK_M, False, CAUSAL)
            dk, dv = _dkdv_blocks(dk, dv, k, v, q_ptrs, do_ptrs, l_ptr, d_ptr, stride_qm, stride_dm, offs_n, tail,
                                  T_Q, T_Q, T_K, OFFSET, qk_scale, BLOCK_M, True, CAUSAL)
        tl.store(DK + b * stride_dkb + h_kv * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :],
                 (dk * sm_scale).to(DK.dtype.element_ty), mask=cols)
        tl.store(DV + b * stride_dvb + h_kv * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=cols)

    @triton.jit
    def _dq_blocks(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, start, stop, T_K, OFFSET,
                   qk_scale, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
        offs_n = tl.arange(0, BLOCK_N)
        for start_n in range(start, stop, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            if MASKED:
                k = tl.load(k_ptrs + start_n * stride_kn, mask=cols[:, None] < T_K, other=0.0)
                v = tl.load(v_ptrs + start_n * stride_vn, mask=cols[:, None] < T_K, other=0.0)
            else:
                k = tl.load(k_ptrs + start_n * stride_kn)
                v = tl.load(v_ptrs + start_n * stride_vn)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            if MASKED:
                keep = cols[None, :] < T_K
                if CAUSAL:
                    keep = keep & (cols[None, :] <= offs_m[:, None] + OFFSET)
                s = tl.where(keep, s, float("-inf"))
            p = tl.math.exp2(s - lse[:, None])
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
        return dq

    @triton.jit
    def _bwd_dq(Q, K, V, DO, L, DELTA, DQ, qk_scale, sm_scale,
                stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dm,
                stride_dqb, stride_dqh, stride_dqm,
                H, GROUP, T_Q, T_K, OFFSET,
                HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b, h = bh // H, bh % H
        h_kv = h // GROUP
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        rows = offs_m[:, None] < T_Q
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :], mask=rows,
                    other=0.0)
        do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dm + offs_d[None, :], mask=rows,
                     other=0.0)
        lse = tl.load(L + bh * T_Q + offs_m, mask=offs_m < T_Q, other=float("inf"))
        delta = tl.load(DELTA + bh * T_Q + offs_m, mask=offs_m < T_Q, other=0.0)
        k_ptrs = K + b * stride_kb + h_kv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = V + b * stride_vb + h_kv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        # the forward pass's bounds: whole visible blocks unmasked, then the diagonal and the end
        full_stop, hi = _key_range(start_m, T_K, OFFSET, CAUSAL, BLOCK_M, BLOCK_N)
        dq = _dq_blocks(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, 0, full_stop, T_K,
                        OFFSET, qk_scale, BLOCK_N, False, CAUSAL)
        dq = _dq_blocks(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, full_stop, hi, T_K,
                        OFFSET, qk_scale, BLOCK_N, True, CAUSAL)
        tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :],
                 (dq * sm_scale).to(DQ.dtype.element_ty), mask=rows)


def _blocks(d: int) -> dict:
    """(BLOCK_M, BLOCK_N, warps, stages) per kernel. The interpreter (CPU tests) runs small blocks so that the
    tests cross several of them. On the H200, head_dim 128 at 4k tokens: the best of 35 pairs of dK/dV and dQ
    shapes (data/results/h200_attention_backward_tune.log; 64 x 128 keys per dK/dV program, 304 and 350 TFLOP/s
    causal and not, against 164 and 175 for 64 x 64); head_dim 64: the best pair of the same sweep for both
    causal and not (h200_attention_backward_tune_d64.log: 270 and 333 TFLOP/s, against 217 and 290 before).
    On Hopper the forward runs the TMA kernel with its own blocks (triton_hopper.CONFIGS); "fwd" serves the rest."""
    if interpreting():
        return {"fwd": (32, 16, 4, 1), "dkdv": (16, 32, 4, 1), "dq": (32, 16, 4, 1)}
    if d <= 64:
        return {"fwd": (128, 64, 8, 3), "dkdv": (32, 128, 4, 2), "dq": (128, 64, 8, 3)}
    return {"fwd": (128, 64, 8, 3), "dkdv": (64, 128, 8, 3), "dq": (128, 64, 8, 3)}


def _launch(kernel, grid, *args, block: tuple, **meta):
    """kernel[grid](*args) with the block shape (BLOCK_M, BLOCK_N or None, warps, stages); the interpreter takes
    no warps or stages."""
    bm, bn, warps, stages = block
    shape = {"BLOCK_M": bm} if bn is None else {"BLOCK_M": bm, "BLOCK_N": bn}
    if interpreting():
        interpreter_numpy_fix()
        return kernel[grid](*args, **shape, **meta)
    return kernel[grid](*args, **shape, num_warps=warps, num_stages=stages, **meta)


def flash_forward_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                      scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): attention and each row's logsumexp of its scaled scores in base 2, float32 (B, H, Tq); +inf
    for a row that sees no key. lse · ln 2 is the natural logsumexp. On Hopper the TMA kernel computes it
    (triton_hopper), elsewhere chapter 10's kernel."""
    check_inputs(q, k, v)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if q.is_cuda and is_hopper(q.device) and (scale is None or scale > 0) and tma_ready(q, k, v):  # faster on sm_90
        return flash_attention_hopper(q, k, v, causal=causal, scale=scale, lse=True)
    b, h, t_q, d = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q)
    lse = torch.empty((b, h, t_q), device=q.device, dtype=torch.float32)
    block = _blocks(d)["fwd"]
    # chapter 10's kernel with its logsumexp store on, at a fixed block shape (.fn: past the autotuner)
    _launch(_flash_fwd.fn, (triton.cdiv(t_q, block[0]), b * h), q, k, v, out, lse, scale * LOG2E,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            h, h // h_kv, t_q, t_k, t_k - t_q, min(triton.next_power_of_2(t_k), 16384), block=block, HEAD_DIM=d,
            CAUSAL=causal, STORE_LSE=True)
    return out, lse


def flash_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, causal: bool = True, scale: float | None = None):
    """(dq, dk, dv) of attention from the forward pass's inputs, output and lse (flash_forward_lse)."""
    q, k, v, out, do = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, out, do))
    b, h, t_q, d = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    blocks = _blocks(d)
    delta = torch.empty_like(lse)
    bm = blocks["dq"][0]
    grid = (triton.cdiv(t_q, bm), b * h)
    _launch(_bwd_delta, grid, out, do, delta, out.stride(0), out.stride(1), out.stride(2), do.stride(0),
            do.stride(1), do.stride(2), h, t_q, block=(bm, None, 4, 1), HEAD_DIM=d)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    bn = blocks["dkdv"][1]
    _launch(_bwd_dkdv, (triton.cdiv(t_k, bn), b * h_kv), q, k, v, do, lse, delta, dk, dv, scale * LOG2E, scale,
            *strides, dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
            h, h_kv, h // h_kv, t_q, t_k, t_k - t_q, block=blocks["dkdv"], HEAD_DIM=d, CAUSAL=causal)
    _launch(_bwd_dq, (triton.cdiv(t_q, blocks["dq"][0]), b * h), q, k, v, do, lse, delta, dq, scale * LOG2E, scale,
            *strides, dq.stride(0), dq.stride(1), dq.stride(2), h, h // h_kv, t_q, t_k, t_k - t_q,
            block=blocks["dq"], HEAD_DIM=d, CAUSAL=causal)
    return dq, dk, dv


def flash_attention_train(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                          scale: float | None = None) -> torch.Tensor:
    """Attention of q (B, H, Tq, d) over k, v (B, H_kv, Tk, d), differentiable through the Triton kernels."""
    return LseAttention.apply(q, k, v, causal, scale, flash_forward_lse, flash_backward)
