"""FlashAttention's forward pass as a Triton kernel (FlashAttention-2's loop order), for CUDA GPUs.

    out = flash_attention_triton(q, k, v, causal=True)   # q (B, H, Tq, d), k/v (B, H_kv, Tk, d), fp16/bf16

One program computes one block of BLOCK_M query rows of one (batch, head): it loads its queries
once, then streams the key/value blocks of that head through on-chip memory, keeping the running
max m, sum l and output accumulator of ``tiled.py`` in registers. The loop has two stages:

1. key blocks entirely at or below the diagonal (all visible): no masking work at all;
2. the blocks that cross the diagonal (causal) or overhang the sequence end: masked.

Scores are scaled by log2(e)/√d so that exp2, the hardware's native exponential, replaces exp.
GQA: the program for query head h reads KV head h // (H / H_kv). Causal alignment is bottom-right
(query i is token Tk - Tq + i); rows with no visible key output zeros.
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the kernel is defined only where Triton exists
    triton = None

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1: Triton's interpreter runs the kernel on CPU tensors (slowly, for tests)."""
    import os

    return triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


def interpreter_numpy_fix() -> None:
    """Let Triton's interpreter run this kernel with numpy >= 2.4 (called only under TRITON_INTERPRET=1).

    The interpreter holds every scalar as a numpy array of shape (1,) and, in Triton up to 3.6, turns one
    into a Python int (the loop bounds ``range(start, stop, BLOCK_N)`` below) with ``int(array)``. NumPy
    deprecated that in 1.25 and refuses it from 2.4 on: "only 0-dimensional arrays can be converted to
    Python scalars" (triton-lang/triton#9171, fixed upstream by #9172). This wraps the interpreter's
    tensor patch so that the conversion takes the single element (``.item()``), which every numpy
    accepts. Compiled kernels never pass through here.
    """
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "course_scalar_fix", False):  # another Triton layout, or done already
        return

    def patch_with_scalar_index(tensor, scope) -> None:
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_with_scalar_index.course_scalar_fix = True
    interpreter._patch_lang_tensor = patch_with_scalar_index


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Clear errors for everything the kernel does not handle."""
    from .reference import check_shapes

    if not q.is_cuda and not interpreting():  # checked first: a CPU says the same with or without Triton
        raise RuntimeError("The Triton kernel needs a CUDA GPU and CUDA tensors; on a CPU use "
                           "course_lib.attention.tiled.flash_attention_tiled (the same algorithm in PyTorch).")
    if triton is None:
        raise RuntimeError("Triton is not installed, so the course kernel cannot run here (pip install triton, "
                           "which needs Linux). Meanwhile use course_lib.attention.tiled.flash_attention_tiled or "
                           "torch.nn.functional.scaled_dot_product_attention.")
    check_shapes(q, k, v)
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"The kernel takes float16 or bfloat16 q, k, v of one dtype; got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}. Convert with .to(torch.bfloat16).")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {q.shape[-1]} is not supported; the kernel is built for {SUPPORTED_HEAD_DIMS}.")


if triton is not None:

    def _configs():
        """Block shapes, warps and pipeline depths to try. COURSE_FLASH_TUNE=quick (set by the GPU tests) keeps
        the first two: compiling all seven for every new key dominates a test run."""
        import os

        shapes = ((128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3),
                  (128, 32, 4, 4), (64, 128, 4, 3), (128, 128, 8, 2))
        if os.environ.get("COURSE_FLASH_TUNE") == "quick":
            shapes = shapes[:2]
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in shapes]

    @triton.jit
    def _attend_blocks(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, start, stop, T_K, OFFSET,
                       qk_scale, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
        offs_n = tl.arange(0, BLOCK_N)
        for start_n in range(start, stop, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            if MASKED:
                k = tl.load(k_ptrs + start_n * stride_kn, mask=cols[None, :] < T_K, other=0.0)
            else:
                k = tl.load(k_ptrs + start_n * stride_kn)
            qk = tl.dot(q, k) * qk_scale  # (BLOCK_M, BLOCK_N) in float32, scaled by log2(e)/sqrt(d)
            if MASKED:
                keep = cols[None, :] < T_K
                if CAUSAL:
                    keep = keep & (cols[None, :] <= offs_m[:, None] + OFFSET)
                qk = tl.where(keep, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see nothing yet
            p = tl.math.exp2(qk - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            if MASKED:
                v = tl.load(v_ptrs + start_n * stride_vn, mask=cols[:, None] < T_K, other=0.0)
            else:
                v = tl.load(v_ptrs + start_n * stride_vn)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        return acc, l_i, m_i

    @triton.jit
    def _key_range(start_m, T_K, OFFSET, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """(full_stop, hi) for query block start_m: keys [0, full_stop) are whole blocks visible to every row (no
        mask), [full_stop, hi) the blocks that cross the diagonal or the sequence end; later keys are in the future."""
        if CAUSAL:
            hi = tl.minimum(T_K, (start_m + 1) * BLOCK_M + OFFSET)
            lo_masked = tl.maximum(start_m * BLOCK_M + OFFSET, 0)  # first key that can be in the future of a row
        else:
            hi = T_K
            lo_masked = T_K
        hi = tl.maximum(hi, 0)
        full_stop = tl.minimum(lo_masked, hi) // BLOCK_N * BLOCK_N  # whole blocks visible to every row
        full_stop = tl.minimum(full_stop, T_K // BLOCK_N * BLOCK_N)
        return full_stop, hi

    # Tuned once per head_dim, causality and power-of-two bucket of the key length (not per exact length).
    @triton.autotune(configs=_configs(), key=["HEAD_DIM", "CAUSAL", "T_BUCKET"])
    @triton.jit
    def _flash_fwd(Q, K, V, O, L, qk_scale,
                   stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                   H, GROUP, T_Q, T_K, OFFSET, T_BUCKET,
                   HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   STORE_LSE: tl.constexpr = False):
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b, h = bh // H, bh % H
        h_kv = h // GROUP  # GQA: consecutive query heads share a KV head
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
        k_ptrs = K + b * stride_kb + h_kv * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None]  # (d, N)
        v_ptrs = V + b * stride_vb + h_kv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]  # (N, d)
        q = tl.load(q_ptrs, mask=offs_m[:, None] < T_Q, other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        # Keys this block may see at all: causal rows stop at their diagonal, others at T_K.
        full_stop, hi = _key_range(start_m, T_K, OFFSET, CAUSAL, BLOCK_M, BLOCK_N)
        acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m,
                                       0, full_stop, T_K, OFFSET, qk_scale, BLOCK_N, False, CAUSAL)
        acc, l_i, m_i = _attend_blocks(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m,
                                       full_stop, hi, T_K, OFFSET, qk_scale, BLOCK_N, True, CAUSAL)
        out = tl.where(l_i[:, None] > 0, acc / tl.where(l_i > 0, l_i, 1.0)[:, None], 0.0)  # no key seen: 0
        o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < T_Q)
        if STORE_LSE:  # for the backward pass (triton_train): each row's logsumexp in base 2, +inf if it saw no key
            seen = l_i > 0
            lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("inf"))
            tl.store(L + bh * T_Q + offs_m, lse, mask=offs_m < T_Q)


def flash_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                           scale: float | None = None) -> torch.Tensor:
    """Attention of q (B, H, Tq, d) over k, v (B, H_kv, Tk, d) with the course's Triton kernel."""
    check_inputs(q, k, v)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, h, t_q, d = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    scale = 1 / math.sqrt(d) if scale is None else scale
    grid = lambda meta: (triton.cdiv(t_q, meta["BLOCK_M"]), b * h)  # noqa: E731
    # The interpreter cannot time configurations: it runs one fixed block shape instead of autotuning.
    kernel, fixed = (_flash_fwd.fn, {"BLOCK_M": 64, "BLOCK_N": 32}) if interpreting() else (_flash_fwd, {})
    if interpreting():
        interpreter_numpy_fix()
    kernel[grid](q, k, v, out, out, scale * 1.4426950408889634,  # L unused (STORE_LSE False): any pointer
                 q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                 v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
                 h, h // h_kv, t_q, t_k, t_k - t_q, min(triton.next_power_of_2(t_k), 16384),
                 HEAD_DIM=d, CAUSAL=causal, **fixed)
    return out


def last_config() -> dict:
    """The block shape, warps and pipeline depth the autotuner chose for the latest call of the kernel."""
    if triton is None or getattr(_flash_fwd, "best_config", None) is None:
        raise RuntimeError("The kernel has not run through the autotuner yet: call flash_attention_triton first.")
    cfg = _flash_fwd.best_config
    return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
