"""Chapter 10's forward kernel rewritten for Hopper (H100/H200, sm_90): the same algorithm, fed by the copy engine.

    out = flash_attention_hopper(q, k, v, causal=True)    # q (B, H, Tq, d), k/v (B, H_kv, Tk, d), fp16/bf16

``triton_flash._flash_fwd`` is the teaching version: every thread computes addresses and issues its own loads. This
one keeps its online softmax and its two loop stages (unmasked blocks, then the diagonal and the sequence end) and
changes what Hopper rewards, each change a switch so that the benchmark can price it on its own:

* **TMA loads** (``TensorDescriptor``): the host describes each of q, k, v, o as a 4-D tensor (B, H, T, d) with its
  strides; a program asks for the tile at (b, h, row, 0) and the tensor memory accelerator copies it into shared
  memory asynchronously, with no address arithmetic in the threads and zeros for rows past the end (ragged lengths
  need no masks on the loads), while the warpgroup matrix instructions (wgmma) read their operands from there.
* **One FMA per score** in the unmasked stage: the row max is taken over the raw scores q·k and scaled once
  (the scale is positive), so that exp2(s·c − m) costs a fused multiply-add instead of a multiply and a subtract:
  the exponentials and their bookkeeping, not the matrix products, are what FlashAttention-3 sets out to hide.
* **Warp specialisation** (``warp_spec``): Triton's Hopper pass splits the key loop into a producer warp that only
  issues TMA copies and consumer warpgroups that only compute, FlashAttention-3's producer/consumer split.
* **Heaviest blocks first** (causal): the last query blocks see the most keys, so program 0 takes the last block
  and the short ones fill the gaps at the end, a longest-job-first schedule (always on; not priced apart).
* **Persistent grid** (``persistent``): one program per multiprocessor walks over the tiles instead of one program
  per tile.
* **Scores ahead** (``ahead``): the scores of key block j+1 are issued before the softmax of block j, FlashAttention-3's
  intra-warpgroup overlap written into the loop by hand.

Measured on the H200 (data/results/h200_attention_hopper_sweep.json, h200_attention_ahead_sweep.json, notebook 10,
section 11): TMA with block shapes of its own pays (1.06-1.12x chapter 10's kernel over 4k-16k tokens); warp
specialisation builds only with 8 warps and loses there, the persistent grid loses, and scores ahead loses 13-38%.
So ``CONFIGS`` leaves the three switches off; they stay so that the sweep can be run again. FlashAttention-3's
overlap comes from two consumer warpgroups taking turns under explicit barriers ("ping-pong"), which Triton's
automatic passes do not produce (Triton's lower-level Gluon dialect can express it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .triton_flash import check_inputs, interpreter_numpy_fix, interpreting, triton

if triton is not None:
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    from .triton_flash import _key_range

LOG2E = 1.4426950408889634



class HopperConfig(NamedTuple):
    """A launch of the Hopper kernel: block shape, warps, pipeline depth and the three switches."""
    block_m: int
    block_n: int
    warps: int
    stages: int
    warp_spec: bool = False   # Triton's automatic producer/consumer split of the key loop
    persistent: bool = False  # one program per multiprocessor, walking over the tiles
    ahead: bool = False       # the scores of the next key block issued before this block's softmax


# Per (head_dim, causal): the fastest of the sweep on the H200 at 4k tokens (data/results/h200_attention_hopper_sweep.json).
CONFIGS = {(64, True): HopperConfig(64, 128, 4, 2), (64, False): HopperConfig(64, 128, 4, 2),
           (128, True): HopperConfig(64, 64, 4, 3), (128, False): HopperConfig(128, 64, 4, 2)}


if triton is not None:

    @triton.jit
    def _softmax_step(acc, l_i, m_i, qk, v, qk_scale, cols, offs_m, T_K, OFFSET, MASKED: tl.constexpr,
                      CAUSAL: tl.constexpr):
        """One key block's online-softmax update from its raw scores qk = q·k and its values v. Masked blocks
        (the diagonal, the sequence end) hide keys past T_K and, causal, in a row's future; unmasked ones see every
        score, so every row max is finite and each score costs one FMA."""
        if MASKED:
            keep = cols[None, :] < T_K
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + OFFSET)
            qk = tl.where(keep, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see nothing yet
            p = tl.math.exp2(qk - m_safe[:, None])
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_safe = m_new
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        return acc, l_i, m_new

    @triton.jit
    def _hopper_blocks(acc, l_i, m_i, q, desc_k, desc_v, b, h_kv, offs_m, start, stop, T_K, OFFSET, qk_scale,
                       HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                       WARP_SPEC: tl.constexpr):
        offs_n = tl.arange(0, BLOCK_N)
        for start_n in tl.range(start, stop, BLOCK_N, warp_specialize=WARP_SPEC):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            k = desc_k.load([b, h_kv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)  # TMA: zeros past T_K
            v = desc_v.load([b, h_kv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, tl.dot(q, k.T), v, qk_scale, start_n + offs_n, offs_m, T_K,
                                          OFFSET, MASKED, CAUSAL)
        return acc, l_i, m_i

    @triton.jit
    def _hopper_blocks_ahead(acc, l_i, m_i, q, desc_k, desc_v, b, h_kv, start, stop, qk_scale,
                             HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
        """The unmasked stage with the scores of block j+1 issued before the softmax of block j (FlashAttention-3's
        intra-warpgroup overlap): the matrix units can work on q·k_{j+1} while the threads exponentiate block j."""
        if stop > start:
            k = desc_k.load([b, h_kv, start, 0]).reshape(BLOCK_N, HEAD_DIM)
            qk = tl.dot(q, k.T)
            for start_n in range(start, stop - BLOCK_N, BLOCK_N):
                start_n = tl.multiple_of(start_n, BLOCK_N)
                k_next = desc_k.load([b, h_kv, start_n + BLOCK_N, 0]).reshape(BLOCK_N, HEAD_DIM)
                qk_next = tl.dot(q, k_next.T)
                v = desc_v.load([b, h_kv, start_n, 0]).reshape(BLOCK_N, HEAD_DIM)
                acc, l_i, m_i = _softmax_step(acc, l_i, m_i, qk, v, qk_scale, 0, 0, 0, 0, False, False)
                qk = qk_next
            v = desc_v.load([b, h_kv, stop - BLOCK_N, 0]).reshape(BLOCK_N, HEAD_DIM)
            acc, l_i, m_i = _softmax_step(acc, l_i, m_i, qk, v, qk_scale, 0, 0, 0, 0, False, False)
        return acc, l_i, m_i

    @triton.jit
    def _hopper_tile(tile, desc_q, desc_k, desc_v, desc_o, L, qk_scale, H, GROUP, T_Q, T_K, OFFSET, N_M,
                     HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     STORE_LSE: tl.constexpr, WARP_SPEC: tl.constexpr, AHEAD: tl.constexpr):
        bh = tile // N_M
        start_m = tile % N_M
        if CAUSAL:
            start_m = N_M - 1 - start_m  # heaviest query blocks (the most keys) first
        b, h = bh // H, bh % H
        h_kv = h // GROUP
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        q = desc_q.load([b, h, start_m * BLOCK_M, 0]).reshape(BLOCK_M, HEAD_DIM)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        full_stop, hi = _key_range(start_m, T_K, OFFSET, CAUSAL, BLOCK_M, BLOCK_N)
        if AHEAD:
            acc, l_i, m_i = _hopper_blocks_ahead(acc, l_i, m_i, q, desc_k, desc_v, b, h_kv, 0, full_stop, qk_scale,
                                                 HEAD_DIM, BLOCK_N)
        else:
            acc, l_i, m_i = _hopper_blocks(acc, l_i, m_i, q, desc_k, desc_v, b, h_kv, offs_m, 0, full_stop, T_K,
                                           OFFSET, qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL, WARP_SPEC)
        acc, l_i, m_i = _hopper_blocks(acc, l_i, m_i, q, desc_k, desc_v, b, h_kv, offs_m, full_stop, hi, T_K, OFFSET,
                                       qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL, WARP_SPEC)
        seen = l_i > 0
        out = tl.where(seen[:, None], acc / tl.where(seen, l_i, 1.0)[:, None], 0.0)  # no key seen: 0
        desc_o.store([b, h, start_m * BLOCK_M, 0], out.to(desc_o.dtype).reshape(1, 1, BLOCK_M, HEAD_DIM))
        if STORE_LSE:  # base-2 logsumexp per row for the backward pass; +inf if the row saw no key
            lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("inf"))
            tl.store(L + bh * T_Q + offs_m, lse, mask=offs_m < T_Q)

    @triton.jit
    def _hopper_fwd(desc_q, desc_k, desc_v, desc_o, L, qk_scale, H, GROUP, T_Q, T_K, OFFSET, N_M, N_TILES,
                    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    STORE_LSE: tl.constexpr, WARP_SPEC: tl.constexpr, PERSISTENT: tl.constexpr,
                    AHEAD: tl.constexpr):
        if PERSISTENT:  # one program per multiprocessor, striding over the tiles
            for tile in range(tl.program_id(0), N_TILES, tl.num_programs(0)):
                _hopper_tile(tile, desc_q, desc_k, desc_v, desc_o, L, qk_scale, H, GROUP, T_Q, T_K, OFFSET, N_M,
                             HEAD_DIM, CAUSAL, BLOCK_M, BLOCK_N, STORE_LSE, WARP_SPEC, AHEAD)
        else:
            _hopper_tile(tl.program_id(0), desc_q, desc_k, desc_v, desc_o, L, qk_scale, H, GROUP, T_Q, T_K, OFFSET,
                         N_M, HEAD_DIM, CAUSAL, BLOCK_M, BLOCK_N, STORE_LSE, WARP_SPEC, AHEAD)


def is_hopper(device: torch.device | None = None) -> bool:
    """A CUDA GPU of compute capability 9.x (H100, H200, GH200): the copy engine (TMA) and wgmma are there."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] == 9


def tma_ready(*ts: torch.Tensor) -> bool:
    """Whether TMA can describe these tensors: last dimension contiguous, base and other strides 16-byte aligned."""
    return all(t.stride(-1) == 1 and t.data_ptr() % 16 == 0
               and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1]) for t in ts)


def _descriptor(t: torch.Tensor, rows: int, d: int):
    """A TMA descriptor of a (B, H, T, d) tensor whose tiles are `rows` tokens of one head."""
    if not tma_ready(t):
        raise ValueError("TMA needs 16-byte aligned tensors and strides: call .contiguous() on q, k, v first.")
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, d])


def flash_attention_hopper(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                           scale: float | None = None, lse: bool = False, config: tuple | None = None):
    """Attention of q (B, H, Tq, d) over k, v (B, H_kv, Tk, d) with the Hopper kernel; (out, lse) if lse=True.

    config: a ``HopperConfig`` (or a tuple of its fields), default ``CONFIGS[head_dim, causal]``.
    On a GPU that is not Hopper (no TMA), use ``triton_flash.flash_attention_triton``.
    """
    check_inputs(q, k, v)
    if q.is_cuda and not is_hopper(q.device):
        raise RuntimeError(f"The Hopper kernel needs compute capability 9.x (TMA, wgmma); this GPU is "
                           f"{torch.cuda.get_device_name(q.device)}. Use flash_attention_triton instead.")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    b, h, t_q, d = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    if scale <= 0:  # the unmasked stage scales the row max after taking it, which needs scale > 0
        raise ValueError(f"scale must be positive, got {scale}.")
    bm, bn, warps, stages, warp_spec, persistent, ahead = HopperConfig(*config) if config else CONFIGS[d, causal]
    if interpreting():  # small blocks so that CPU tests cross several; the interpreter has no warps or stages
        bm, bn, warp_spec = 32, 16, False
        interpreter_numpy_fix()
    out = torch.empty_like(q)
    lse_t = torch.empty((b, h, t_q), device=q.device, dtype=torch.float32) if lse else out
    n_m = triton.cdiv(t_q, bm)
    n_tiles = n_m * b * h
    if persistent:
        sms = 4 if interpreting() else torch.cuda.get_device_properties(q.device).multi_processor_count
        grid = (min(n_tiles, sms),)
    else:
        grid = (n_tiles,)
    meta = {} if interpreting() else {"num_warps": warps, "num_stages": stages}
    _hopper_fwd[grid](_descriptor(q, bm, d), _descriptor(k, bn, d), _descriptor(v, bn, d), _descriptor(out, bm, d),
                      lse_t, scale * LOG2E, h, h // h_kv, t_q, t_k, t_k - t_q, n_m, n_tiles, HEAD_DIM=d,
                      CAUSAL=causal, BLOCK_M=bm, BLOCK_N=bn, STORE_LSE=lse, WARP_SPEC=warp_spec,
                      PERSISTENT=persistent, AHEAD=ahead, **meta)
    return (out, lse_t) if lse else out
