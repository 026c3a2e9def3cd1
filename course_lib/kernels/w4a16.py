"""A fused W4A16 matmul in Triton: 4-bit weights, 16-bit activations, de-quantized in registers.

    y = w4a16_matmul(x, qweight, scales, qzeros, group_size)      # x (..., k) fp16/bf16 -> y (..., n)
    layer = W4A16Linear.from_quant_linear(quant_linear)          # chapter 03's GPTQ layer, made fast

The weights stay in chapter 03's GPTQ packing (``gptq.qlinear``): ``qweight`` int32 (k/8, n) with input
row 8i+j of column o in bits 4j..4j+3 of word (i, o); ``scales`` (k/g, n) fp16; ``qzeros`` (k/g, n/8)
packed the same way along the output dimension, stored minus one ("v1"). The weight is

    W[i, o] = scales[i // g, o] * (u[i, o] - z[i // g, o])

Decoding one token reads every weight once and does two FLOPs per weight: it is bound by bytes, and
4-bit weights are about a quarter of the bytes of fp16 (3.85x fewer at group 128 with the scales and
zeros). PyTorch alone cannot turn that into speed: it de-quantizes into a full fp16 matrix in memory
and then multiplies, moving more bytes than fp16 (``dequant_bench``). A fused kernel reads the packed
words and never writes the de-quantized weight anywhere.

Two kernels, the same arithmetic:

* ``_w4a16_simple``: the teaching version. One program owns BLOCK_N output columns for every token,
  walks K one group at a time, unpacks each weight with a shift and a mask, subtracts the zero point,
  multiplies by the scale, and feeds a ``tl.dot``. About 30 lines.
* ``_w4a16_fast``: the same loop with the tricks that make it fast, each a switch so the benchmark
  can measure it on its own:

  - split-K (``split_k``): a layer with few output columns has too few column blocks to keep 132 SMs
    busy; several programs take slices of K and add their partial sums with atomics;
  - magic-number conversion (``magic``): ``u | 0x4B000000`` read as a float32 is 2^23 + u, and
    ``u | 0x6400`` read as fp16 is 1024 + u: one integer OR instead of the slow int-to-float
    conversion instruction (a quarter of the throughput of an FMA on Hopper);
  - folding the scale and zero out of the inner loop (``fold``): within one group
    sum_k x_k s (u_k - z) = s (sum_k x_k u_k - z sum_k x_k), so the loop only multiplies x by
    small integers and the scale and zero are applied once per group and column;
  - ``tl.dot`` on the tensor cores (``dot``) or FMA on the CUDA cores for one or two tokens;
  - cache hints (``evict``): the weights are read once, so they are loaded "evict first", and
    contiguity hints (``hints``) that let Triton use 16-byte vector loads;
  - half2 de-quantization (``h2``, 1-4 fp16 tokens, ``w4a16_h2``): two nibbles become a pair of fp16 numbers
    in one ``lop3`` instruction and are multiplied as pairs (``fma.f16x2``), in inline PTX: about a third
    of the instructions per weight of the loop above, which is bound by instructions, not bytes;
  - autotuning (``tune``): block sizes, warps, pipeline stages and the split, timed per shape.

Supported: fp16 or bf16 activations; k a multiple of the group size; a group size that is a multiple
of 8 (64 or more for the fast kernel's tensor-core path); n a multiple of 8; no act-order (g_idx must
be the identity order). Anything else raises a ValueError that says what to do.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs without Triton: the kernels are defined only where it exists
    triton = None

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
# Up to this many rows the fused kernel beats de-quantizing into fp16 and calling cuBLAS (H200, Llama-3-8B's gate
# projection: 1.06 against 1.25 ms at 512 tokens, 2.11 against 1.33 ms at 1024; the bench's ``prefill`` part)
FUSED_MAX_TOKENS = 512
H2_MAX_TOKENS = 4  # the half2 kernels take 1 to 4 fp16 tokens
TUNE_MAX_TOKENS = 16  # w4a16_matmul autotunes decode shapes only (a few rows); larger calls take default_config
_V1_ONES = 0x11111111  # GPTQ "v1" stores each zero point minus one: add one to every nibble, on the whole word


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1: Triton's interpreter runs the kernels on CPU tensors (slowly, for tests)."""
    return triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


# ----------------------------------------------------------------------------- the reference, in PyTorch

def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """GPTQ words (k/8, n) int32 -> codes (k, n) int32 in [0, 15]: row 8i+j from bits 4j..4j+3 of row i."""
    shifts = torch.arange(0, 32, 4, device=qweight.device, dtype=torch.int32)
    u = (qweight[:, None, :] >> shifts[None, :, None]) & 0xF  # the mask undoes the sign of a negative word
    return u.reshape(-1, qweight.shape[1])


def unpack_zeros(qzeros: torch.Tensor) -> torch.Tensor:
    """v1 zero points (G, n/8) int32 -> (G, n) int32: add one to every nibble (whole word), then unpack."""
    words = (qzeros.to(torch.int64) + _V1_ONES) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 4, device=qzeros.device, dtype=torch.int64)
    z = (words[:, :, None] >> shifts[None, None, :]) & 0xF
    return z.reshape(qzeros.shape[0], -1).to(torch.int32)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, group_size: int,
               dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """W (k, n) = scales * (u - z), computed in float32 and rounded once to `dtype`."""
    u = unpack_int4(qweight).float()
    z = unpack_zeros(qzeros).float().repeat_interleave(group_size, dim=0)
    s = scales.float().repeat_interleave(group_size, dim=0)
    return (s * (u - z)).to(dtype)


def reference_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                     group_size: int) -> torch.Tensor:
    """De-quantize, then multiply (float32 accumulation): what every kernel here must reproduce."""
    w = dequantize(qweight, scales, qzeros, group_size, torch.float32)
    return (x.float() @ w).to(x.dtype)


# ----------------------------------------------------------------------------- input checks

def check_inputs(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                 group_size: int) -> tuple[int, int, int]:
    """(m, k, n) after checking everything the kernels need; a clear ValueError/RuntimeError otherwise."""
    if not x.is_cuda and not interpreting():
        raise RuntimeError("The W4A16 Triton kernels need a CUDA GPU and CUDA tensors. On a CPU use "
                           "course_lib.kernels.w4a16.reference_matmul (de-quantize, then multiply), or run the "
                           "kernels under Triton's interpreter with TRITON_INTERPRET=1 (slow, for testing).")
    if triton is None:
        raise RuntimeError("Triton is not installed, so the W4A16 kernels cannot run here (pip install triton, "
                           "Linux only); reference_matmul computes the same result in PyTorch.")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"Activations must be float16 or bfloat16, got {x.dtype}; convert with x.half().")
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError(f"qweight and qzeros must be int32 (GPTQ packing), got {qweight.dtype} and {qzeros.dtype}.")
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features but the packed weight has k = 8 x {qweight.shape[0]} = {k}.")
    if group_size <= 0 or group_size % 8 or k % group_size:
        raise ValueError(f"group_size {group_size} must be a positive multiple of 8 that divides k = {k} "
                         "(128 is the usual choice; pass k itself for one group per column).")
    if n % 8:
        raise ValueError(f"n = {n} output features: the zero points are packed 8 per word, so n must be a multiple of 8.")
    groups = k // group_size
    if tuple(scales.shape) != (groups, n) or tuple(qzeros.shape) != (groups, n // 8):
        raise ValueError(f"For k={k}, n={n}, group_size={group_size} expected scales {(groups, n)} and qzeros "
                         f"{(groups, n // 8)}, got {tuple(scales.shape)} and {tuple(qzeros.shape)}.")
    devices = {t.device for t in (x, qweight, scales, qzeros)}
    if len(devices) > 1:
        raise ValueError(f"x, qweight, scales and qzeros must be on one device, got {sorted(map(str, devices))}.")
    return x.numel() // k, k, n


# ----------------------------------------------------------------------------- the kernels

if triton is not None:

    @triton.jit
    def _w4a16_simple(x_ptr, q_ptr, s_ptr, qz_ptr, y_ptr, M, N, K,
                      GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """y[m, cols] for all rows m < M and BLOCK_N columns; K walked one group at a time."""
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = tl.arange(0, BLOCK_M)
        kk = tl.arange(0, GROUP)                        # the input rows of one group
        col_ok, row_ok = cols < N, rows < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for g in range(0, K // GROUP):
            k = g * GROUP + kk
            # every weight: its word (row k // 8), then its nibble (bits 4 * (k % 8))
            words = tl.load(q_ptr + (k // 8)[:, None] * N + cols[None, :], mask=col_ok[None, :], other=0)
            u = (words >> ((k % 8) * 4)[:, None]) & 0xF                             # (GROUP, BLOCK_N)
            s = tl.load(s_ptr + g * N + cols, mask=col_ok, other=0.0)
            zw = tl.load(qz_ptr + g * (N // 8) + cols // 8, mask=col_ok, other=0) + 0x11111111  # undo v1's -1
            z = (zw >> ((cols % 8) * 4)) & 0xF
            w = ((u - z[None, :]).to(tl.float32) * s[None, :].to(tl.float32)).to(x_ptr.dtype.element_ty)
            x = tl.load(x_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None], other=0.0)
            acc += tl.dot(x, w)                                                      # tensor cores
        tl.store(y_ptr + rows[:, None] * N + cols[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _step_weights(w_ptrs, s_ptr, qz_ptr, k0, N, cols, col_ok, shift_z, stride_qk,
                      GROUP: tl.constexpr, EVICT: tl.constexpr):
        """A K step's packed words (BLOCK_K // 8, BLOCK_N) from row k0, and its group's scales and zero points
        (float32, v1's minus one undone on the whole word) for the columns `cols`."""
        g = k0 // GROUP
        words = tl.load(w_ptrs + (k0 // 8) * stride_qk, mask=col_ok[None, :], other=0, eviction_policy=EVICT)
        s = tl.load(s_ptr + g * N + cols, mask=col_ok, other=0.0).to(tl.float32)
        zw = tl.load(qz_ptr + g * (N // 8) + cols // 8, mask=col_ok, other=0) + 0x11111111
        z = ((zw >> shift_z) & 0xF).to(tl.float32)
        return words, s, z

    @triton.jit
    def _w4a16_fast(x_ptr, q_ptr, s_ptr, qz_ptr, y_ptr, M, N, K, K_PER_SPLIT,
                    stride_xm, stride_qk, stride_qn, stride_ym,
                    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    ATOMIC: tl.constexpr, DOT: tl.constexpr, MAGIC: tl.constexpr, FOLD: tl.constexpr,
                    EVICT: tl.constexpr, HINTS: tl.constexpr, BF16: tl.constexpr):
        """Program (n-block, k-slice): BLOCK_N columns, all rows, input rows [K_PER_SPLIT * slice, ...).

        A K step of BLOCK_K rows lies inside one group (BLOCK_K divides GROUP). Its BLOCK_K // 8 words per
        column are loaded once; nibble j of word i is input row 8i + j, so the step is eight small
        products, one per nibble, each against the activations of rows j, j+8, j+16, ...
        """
        PACKED: tl.constexpr = BLOCK_K // 8
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        if HINTS:
            cols = tl.max_contiguous(tl.multiple_of(cols, BLOCK_N), BLOCK_N)
        rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # more than one row block only for prefill
        i = tl.arange(0, PACKED)
        col_ok, row_ok = cols < N, rows < M
        k_start = tl.program_id(1) * K_PER_SPLIT
        k_stop = tl.minimum(k_start + K_PER_SPLIT, K)
        if DOT:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, PACKED, BLOCK_N), dtype=tl.float32)  # reduced over PACKED at the end
        w_ptrs = q_ptr + i[:, None] * stride_qk + cols[None, :] * stride_qn
        x_ptrs = x_ptr + rows[:, None] * stride_xm + 8 * i[None, :]        # (BLOCK_M, PACKED): rows 8i of a step
        shift_z = (cols % 8) * 4
        for k0 in range(k_start, k_stop, BLOCK_K):
            words, s, z = _step_weights(w_ptrs, s_ptr, qz_ptr, k0, N, cols, col_ok, shift_z, stride_qk, GROUP, EVICT)
            if DOT:
                step = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                xsum = tl.zeros((BLOCK_M,), dtype=tl.float32)
            else:
                step = tl.zeros((BLOCK_M, PACKED, BLOCK_N), dtype=tl.float32)
                xsum = tl.zeros((BLOCK_M, PACKED), dtype=tl.float32)
            for j in tl.static_range(8):
                xj = tl.load(x_ptrs + k0 + j, mask=row_ok[:, None], other=0.0, eviction_policy="evict_last")
                uj = (words >> (4 * j)) & 0xF                                      # (PACKED, BLOCK_N) codes
                if DOT:
                    if MAGIC:  # fp16 1024 + u (bf16: 128 + u), exact, from one OR
                        if BF16:
                            wj = (uj | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
                        else:
                            wj = (uj | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
                    else:
                        wj = uj.to(xj.dtype)
                    if FOLD:
                        step += tl.dot(xj, wj)
                        xsum += tl.sum(xj.to(tl.float32), axis=1)
                    else:  # de-quantize every weight before the product
                        if MAGIC:  # (offset + u) - (offset + z): exact
                            if BF16:
                                zo = z + 128.0
                            else:
                                zo = z + 1024.0
                            wq = ((wj.to(tl.float32) - zo[None, :]) * s[None, :]).to(xj.dtype)
                        else:
                            wq = ((uj.to(tl.float32) - z[None, :]) * s[None, :]).to(xj.dtype)
                        acc += tl.dot(xj, wq)
                else:
                    if MAGIC:  # float32 2^23 + u, exact; subtracting 2^23 is exact too
                        uf = (uj | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                    else:
                        uf = uj.to(tl.float32)
                    xf = xj.to(tl.float32)
                    if FOLD:
                        step += xf[:, :, None] * uf[None, :, :]
                        xsum += xf
                    else:
                        acc += xf[:, :, None] * ((uf - z[None, :]) * s[None, :])[None, :, :]
            if FOLD:  # once per group step: s * (sum x u - z sum x); DOT+MAGIC also removes the 1024 (128) offset
                if DOT:
                    zc = z
                    if MAGIC:
                        if BF16:
                            zc = z + 128.0
                        else:
                            zc = z + 1024.0
                    acc += s[None, :] * (step - zc[None, :] * xsum[:, None])
                else:
                    acc += s[None, None, :] * (step - z[None, None, :] * xsum[:, :, None])
        if DOT:
            out = acc
        else:
            out = tl.sum(acc, axis=1)
        y_ptrs = y_ptr + rows[:, None] * stride_ym + cols[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        if ATOMIC:
            tl.atomic_add(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask, sem="relaxed")
        else:
            tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask)


    @triton.jit
    def _w4a16_gemv(x_ptr, q_ptr, s_ptr, qz_ptr, y_ptr, N, K, K_PER_SPLIT, stride_qk, stride_qn,
                    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ATOMIC: tl.constexpr,
                    MAGIC: tl.constexpr, FOLD: tl.constexpr, HALF: tl.constexpr, EVICT: tl.constexpr,
                    HINTS: tl.constexpr):
        """One token (a matrix-vector product): program (n-block, k-slice), every tensor two-dimensional.

        The accumulator has one entry per loaded word, (BLOCK_K // 8, BLOCK_N), and is summed over its rows
        only once, at the end. HALF: the eight products of a step are added in fp16 (x and u are exact there,
        u <= 15), then the step joins the float32 accumulator with its scale and zero point.
        """
        PACKED: tl.constexpr = BLOCK_K // 8
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        if HINTS:
            cols = tl.max_contiguous(tl.multiple_of(cols, BLOCK_N), BLOCK_N)
        i = tl.arange(0, PACKED)
        col_ok = cols < N
        k_start = tl.program_id(1) * K_PER_SPLIT
        k_stop = tl.minimum(k_start + K_PER_SPLIT, K)
        acc = tl.zeros((PACKED, BLOCK_N), dtype=tl.float32)
        w_ptrs = q_ptr + i[:, None] * stride_qk + cols[None, :] * stride_qn
        shift_z = (cols % 8) * 4
        for k0 in range(k_start, k_stop, BLOCK_K):
            words, s, z = _step_weights(w_ptrs, s_ptr, qz_ptr, k0, N, cols, col_ok, shift_z, stride_qk, GROUP, EVICT)
            if HALF:
                step = tl.zeros((PACKED, BLOCK_N), dtype=tl.float16)
            else:
                step = tl.zeros((PACKED, BLOCK_N), dtype=tl.float32)
            xsum = tl.zeros((PACKED,), dtype=tl.float32)
            for j in tl.static_range(8):
                xj = tl.load(x_ptr + k0 + 8 * i + j, eviction_policy="evict_last")      # rows 8i + j
                uj = (words >> (4 * j)) & 0xF
                if HALF:  # fp16 1024 + u from one OR, minus 1024: exact
                    u = (uj | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1024.0
                    xv = xj.to(tl.float16)
                elif MAGIC:  # float32 2^23 + u from one OR, minus 2^23: exact
                    u = (uj | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                    xv = xj.to(tl.float32)
                else:
                    u = uj.to(tl.float32)
                    xv = xj.to(tl.float32)
                if FOLD:
                    step += xv[:, None] * u
                    xsum += xj.to(tl.float32)
                else:
                    acc += xv[:, None].to(tl.float32) * ((u.to(tl.float32) - z[None, :]) * s[None, :])
            if FOLD:  # sum_k x s (u - z) = s (sum_k x u - z sum_k x), once per group step
                acc += s[None, :] * (step.to(tl.float32) - z[None, :] * xsum[:, None])
        out = tl.sum(acc, axis=0)
        if ATOMIC:
            tl.atomic_add(y_ptr + cols, out.to(y_ptr.dtype.element_ty), mask=col_ok, sem="relaxed")
        else:
            tl.store(y_ptr + cols, out.to(y_ptr.dtype.element_ty), mask=col_ok)


# ----------------------------------------------------------------------------- launching them

def w4a16_simple(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                 group_size: int, *, block_n: int = 64) -> torch.Tensor:
    """The teaching kernel: up to 16 rows of x, any n (a multiple of 8), one group per loop step."""
    m, k, n = check_inputs(x, qweight, scales, qzeros, group_size)
    if m > 16:
        raise ValueError(f"The simple kernel handles up to 16 rows (decode batches); got {m}. Use w4a16_matmul.")
    if group_size < 16:
        raise ValueError(f"The simple kernel's tl.dot needs a group of at least 16 rows, got {group_size}.")
    x2 = x.reshape(m, k).contiguous()
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _w4a16_simple[(triton.cdiv(n, block_n),)](x2, qweight.contiguous(), scales.contiguous(), qzeros.contiguous(),
                                              y, m, n, k, GROUP=group_size, BLOCK_M=16, BLOCK_N=block_n)
    return y.reshape(*x.shape[:-1], n)


@dataclass(frozen=True)
class KernelConfig:
    """How the fast kernel runs: tile sizes, the split of K, the switches of the speed tricks, warps and stages."""

    block_n: int = 128
    block_k: int = 128
    split_k: int = 1
    dot: bool = False
    magic: bool = True
    fold: bool = True
    evict: bool = True
    hints: bool = True
    acc32: bool = False  # split-K: add the partial sums in a float32 buffer, then convert (one more kernel)
    gemv: bool = True   # one row: the two-dimensional matrix-vector kernel (ignored for more rows)
    half: bool = True   # gemv with fp16 activations: a step's eight products added in fp16
    h2: bool = False    # fp16, 1-4 rows: packed half2 conversion and products in inline PTX (w4a16_h2)
    num_warps: int = 4
    num_stages: int = 3

    def as_dict(self) -> dict:
        return asdict(self)


def block_m_for(m: int, dot: bool) -> int:
    """Rows one program computes: 16 for tl.dot (its smallest tile), else m rounded up to a power of two."""
    if dot:
        return 16
    return min(16, 1 << max(0, m - 1).bit_length())


def launch(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, group_size: int,
           cfg: KernelConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """Run the fast kernel on x2 (m, k) with one configuration; y (m, n). Shapes were checked by the caller."""
    m, k = x2.shape
    n = qweight.shape[1]
    block_k = min(cfg.block_k, group_size)
    if group_size % block_k:
        raise ValueError(f"block_k {cfg.block_k} must divide the group size {group_size} (or exceed it).")
    if cfg.dot and block_k < 128:
        raise ValueError(f"The tensor-core path needs 16 words per column per step (block_k >= 128 rows), but the "
                         f"group size {group_size} allows block_k {block_k}; use dot=False.")
    steps = k // block_k
    split = max(1, min(cfg.split_k, steps))
    k_per_split = math.ceil(steps / split) * block_k
    split = math.ceil(k // block_k / (k_per_split // block_k))  # no empty slices
    # Triton's interpreter has no 16-bit atomics: there the partial sums always meet in float32; so do bf16
    # partials (8 bits of mantissa lose too much when many slices add up in bf16).
    acc32 = split > 1 and (cfg.acc32 or interpreting() or x2.dtype == torch.bfloat16)
    if acc32:
        target = torch.zeros(m, n, dtype=torch.float32, device=x2.device)
    elif out is None:
        target = torch.zeros(m, n, dtype=x2.dtype, device=x2.device) if split > 1 else \
            torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    else:
        target = out.zero_() if split > 1 else out
    if m <= H2_MAX_TOKENS and cfg.gemv and not cfg.dot and cfg.h2:
        if x2.dtype != torch.float16:
            raise ValueError(f"The half2 kernel (h2=True) takes fp16 activations, got {x2.dtype}; use h2=False.")
        from .w4a16_h2 import _w4a16_gemv_h2, _w4a16_rows_h2

        if x2.storage_offset() % 2 or x2.stride(0) % 2 or x2.stride(1) != 1:  # the int32 view pairs fp16 numbers
            x2 = x2.clone(memory_format=torch.contiguous_format)
        x32 = x2.view(torch.int32)
        common = dict(GROUP=group_size, BLOCK_N=cfg.block_n, BLOCK_K=block_k, ATOMIC=split > 1, HALF=cfg.half,
                      EVICT="evict_first" if cfg.evict else "", EMULATE=interpreting(), num_warps=cfg.num_warps,
                      num_stages=cfg.num_stages)
        grid = (triton.cdiv(n, cfg.block_n), split)
        if m == 1:
            _w4a16_gemv_h2[grid](x32, qweight, scales.contiguous(), qzeros.contiguous(), target, n, k, k_per_split,
                                 qweight.stride(0), qweight.stride(1), **common)
        else:
            _w4a16_rows_h2[grid](x32, qweight, scales.contiguous(), qzeros.contiguous(), target, m, n, k,
                                 k_per_split, qweight.stride(0), qweight.stride(1), x32.stride(0), target.stride(0),
                                 BLOCK_M=2 if m == 2 else 4, **common)
        return _finish(target, out, x2.dtype, acc32)
    if m == 1 and cfg.gemv and not cfg.dot:
        _w4a16_gemv[(triton.cdiv(n, cfg.block_n), split)](
            x2, qweight, scales.contiguous(), qzeros.contiguous(), target, n, k, k_per_split,
            qweight.stride(0), qweight.stride(1), GROUP=group_size, BLOCK_N=cfg.block_n, BLOCK_K=block_k,
            ATOMIC=split > 1, MAGIC=cfg.magic, FOLD=cfg.fold, HALF=cfg.half and cfg.fold and x2.dtype == torch.float16,
            EVICT="evict_first" if cfg.evict else "", HINTS=cfg.hints, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)
        return _finish(target, out, x2.dtype, acc32)
    block_m = block_m_for(m, cfg.dot)
    grid = (triton.cdiv(n, cfg.block_n), split, triton.cdiv(m, block_m))  # row blocks re-read the weights
    _w4a16_fast[grid](
        x2, qweight, scales.contiguous(), qzeros.contiguous(), target, m, n, k, k_per_split,
        x2.stride(0), qweight.stride(0), qweight.stride(1), target.stride(0),
        GROUP=group_size, BLOCK_M=block_m, BLOCK_N=cfg.block_n, BLOCK_K=block_k,
        ATOMIC=split > 1, DOT=cfg.dot, MAGIC=cfg.magic, FOLD=cfg.fold,
        EVICT="evict_first" if cfg.evict else "", HINTS=cfg.hints, BF16=x2.dtype == torch.bfloat16,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return _finish(target, out, x2.dtype, acc32)


def _finish(target: torch.Tensor, out: torch.Tensor | None, dtype: torch.dtype, acc32: bool) -> torch.Tensor:
    """The result in the activations' dtype: the float32 buffer of acc32 converted (into `out` if given)."""
    if not acc32:
        return target
    if out is None:
        return target.to(dtype)
    return out.copy_(target)


# ----------------------------------------------------------------------------- autotuning

_TUNED: dict[tuple, KernelConfig] = {}


def _split(k: int, block_k: int, tiles: int, sms: int, waves: int) -> int:
    """The power-of-two split of K that gives about `waves` programs per SM (at most one step per slice)."""
    return max(1, min(k // block_k, 2 ** round(math.log2(max(1, waves * sms / tiles)))))


def candidate_configs(m: int, n: int, k: int, group_size: int, sms: int = 132,
                      dtype: torch.dtype = torch.float16) -> list[KernelConfig]:
    """The configurations the tuner times, from the region that measured well on an H200: one row runs the
    matrix-vector kernel with many short K slices (4-16 programs per SM), in fp16 also its half2 form; 2-4
    rows try both the FMA loop and the tensor cores; more rows use the tensor cores. Each with its tiles,
    warps and split."""
    out = []
    if 1 < m <= H2_MAX_TOKENS and dtype == torch.float16:
        for block_n in (128, 256):
            for block_k in (64, 128):
                if block_k > group_size or group_size % block_k:
                    continue
                for warps in (4, 8):
                    for waves in (4, 8):
                        split = _split(k, block_k, math.ceil(n / block_n), sms, waves)
                        out.append(KernelConfig(block_n=block_n, block_k=block_k, split_k=split, num_warps=warps,
                                                h2=True))
    if m == 1 and dtype == torch.float16:
        for block_n in (256, 512):
            for block_k in (64, 128):
                if block_k > group_size or group_size % block_k:
                    continue
                for warps in (4, 8):
                    for waves in (4, 8, 16):
                        split = _split(k, block_k, math.ceil(n / block_n), sms, waves)
                        out.append(KernelConfig(block_n=block_n, block_k=block_k, split_k=split, num_warps=warps,
                                                h2=True))
    if m == 1:
        for block_n in (256, 512):
            for block_k in (64, 128):
                if block_k > group_size or group_size % block_k:
                    continue
                for warps in (2, 4):
                    for waves in (8, 16):
                        split = _split(k, block_k, math.ceil(n / block_n), sms, waves)
                        out.append(KernelConfig(block_n=block_n, block_k=block_k, split_k=split, num_warps=warps))
        return out
    tensor_cores = group_size >= 128 and group_size % 128 == 0
    if m <= 4 or not tensor_cores:
        for block_n in (128, 256):
            block_k = min(64, group_size)
            if group_size % block_k == 0:
                for waves in (4, 8):
                    split = _split(k, block_k, math.ceil(n / block_n), sms, waves)
                    out.append(KernelConfig(block_n=block_n, block_k=block_k, split_k=split, dot=False))
    if tensor_cores:
        for block_n in (128, 256):
            for warps in (4, 8):
                for waves in (2, 4):
                    split = _split(k, 128, math.ceil(n / block_n), sms, waves)
                    out.append(KernelConfig(block_n=block_n, block_k=128, split_k=split, dot=True, num_warps=warps))
    return out


def tune_key(m: int, n: int, k: int, group_size: int, dtype: torch.dtype) -> tuple:
    return (m, n, k, group_size, str(dtype))


def tune(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, group_size: int,
         *, candidates: list[KernelConfig] | None = None, reps: int = 10, verbose: bool = False) -> KernelConfig:
    """Time every candidate on these inputs and remember the fastest for this shape.

    Timed as it runs in a decode step: copies of the weights in rotation, together at least twice the L2
    cache (so they come from HBM), all launched inside one CUDA graph (so the host's launch overhead, longer
    than these kernels, does not decide); the median of `reps` replays.
    """
    from ..core.timing import cuda_graph_ms

    m, k = x2.shape
    n = qweight.shape[1]
    key = tune_key(m, n, k, group_size, x2.dtype)
    props = torch.cuda.get_device_properties(x2.device)
    candidates = candidates or candidate_configs(m, n, k, group_size, props.multi_processor_count, x2.dtype)
    l2 = getattr(props, "L2_cache_size", 60 << 20)
    nbytes = qweight.numel() * 4 + scales.numel() * 2 + qzeros.numel() * 4
    copies = [(qweight, scales, qzeros)] + [(qweight.clone(), scales.clone(), qzeros.clone())
                                            for _ in range(min(63, math.ceil(2 * l2 / nbytes)) - 1)]
    outs = [torch.empty(m, n, dtype=x2.dtype, device=x2.device) for _ in copies]
    best, best_t = None, float("inf")
    for cfg in candidates:
        def step(cfg=cfg):
            for (q, s, z), o in zip(copies, outs):
                launch(x2, q, s, z, group_size, cfg, o)
        try:
            t = cuda_graph_ms(step, reps=reps, warmup=1)
        except Exception as exc:  # e.g. out of shared memory for a big tile: skip that candidate
            if verbose:
                print(f"  skip {cfg}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
            torch.cuda.synchronize()
            continue
        if t < best_t:
            best, best_t = cfg, t
    if best is None:
        raise RuntimeError(f"No kernel configuration ran for m={m}, n={n}, k={k}, group {group_size}.")
    _TUNED[key] = best
    return best


def tuned_configs() -> dict[str, dict]:
    """The configurations the tuner picked so far, for the record: 'm,n,k,group,dtype' -> config."""
    return {",".join(map(str, key)): cfg.as_dict() for key, cfg in _TUNED.items()}


def default_config(m: int, n: int, k: int, group_size: int, sms: int = 132) -> KernelConfig:
    """A configuration without timing: the matrix-vector kernel for one row, the tensor cores for more
    (the FMA loop where the group is too small for them); the split for several programs per SM."""
    if m == 1:
        block_n, block_k = 256, min(64, group_size)
        return KernelConfig(block_n=block_n, block_k=block_k,
                            split_k=_split(k, block_k, math.ceil(n / block_n), sms, 8))
    dot = group_size >= 128 and group_size % 128 == 0
    block_n, block_k = 128, 128 if dot else min(64, group_size)
    return KernelConfig(block_n=block_n, block_k=block_k, split_k=_split(k, block_k, math.ceil(n / block_n), sms, 4),
                        dot=dot)


# ----------------------------------------------------------------------------- the public entry points

def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                 group_size: int, *, config: KernelConfig | None = None, autotune: bool = True) -> torch.Tensor:
    """y = x W with W the de-quantized 4-bit weight (k, n); x (..., k) fp16/bf16, made for up to 16 rows.

    More rows work (row blocks of 16, each re-reading the weights) but lose to cuBLAS: see W4A16Linear.

    config: a fixed KernelConfig (e.g. one trick switched off); otherwise the tuned one for this shape
    (tuned on first use when autotune is True, else the untimed default).
    """
    m, k, n = check_inputs(x, qweight, scales, qzeros, group_size)
    x2 = x.reshape(m, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if config is None:
        key = tune_key(m, n, k, group_size, x.dtype)
        config = _TUNED.get(key)
        if config is None:
            if autotune and m <= TUNE_MAX_TOKENS and x.is_cuda and not torch.cuda.is_current_stream_capturing():
                config = tune(x2, qweight, scales, qzeros, group_size)
            else:
                config = default_config(m, n, k, group_size)
                if interpreting():  # small programs: the interpreter's cost grows with the tile
                    config = replace(config, block_n=min(config.block_n, 64))
    y = launch(x2, qweight, scales, qzeros, group_size, config)
    return y.reshape(*x.shape[:-1], n)


class W4A16Linear(torch.nn.Module):
    """A linear layer with 4-bit GPTQ-packed weights: the fused kernel for decode, cuBLAS for prefill.

    Up to ``fused_max_tokens`` rows the fused kernel reads the packed weights. Above it (a long prefill)
    the step is no longer bound by weight bytes, and a cuBLAS matmul on a weight de-quantized once per
    call is faster (the benchmark's ``prefill`` part finds the crossing: between 512 and 1024 tokens on
    an H200). Note that the fused kernel already loses to an fp16 weight from about 4 rows there: 4-bit
    weights pay for themselves in memory, and in speed only at batch 1 to 2.
    """

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None = None, *, fused_max_tokens: int = FUSED_MAX_TOKENS):
        super().__init__()
        self.in_features, self.out_features = qweight.shape[0] * 8, qweight.shape[1]
        self.group_size, self.fused_max_tokens = group_size, fused_max_tokens
        self.register_buffer("qweight", qweight)
        self.register_buffer("qzeros", qzeros)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    @classmethod
    def from_quant_linear(cls, layer, **kwargs) -> W4A16Linear:
        """Take over a ``gptq.qlinear.QuantLinear`` (4 bits, groups in order): the same tensors, shared."""
        if layer.bits != 4:
            raise ValueError(f"W4A16Linear takes 4-bit weights; this layer has {layer.bits} bits.")
        group = layer.group_size or layer.in_features
        expected = torch.arange(layer.in_features, device=layer.g_idx.device, dtype=torch.int32) // group
        if not torch.equal(layer.g_idx, expected):
            raise ValueError("This layer was quantized with act-order (g_idx is not i // group_size). Re-quantize "
                             "with desc_act/act_order off, or keep QuantLinear's de-quantize-then-matmul path.")
        return cls(layer.qweight, layer.scales, layer.qzeros, group, layer.bias, **kwargs)

    def uses_fused(self, rows: int) -> bool:
        """The path a call with this many rows (tokens x batch) takes."""
        return rows <= self.fused_max_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if self.uses_fused(rows) and (x.is_cuda or interpreting()):
            y = w4a16_matmul(x, self.qweight, self.scales, self.qzeros, self.group_size)
        else:
            w = dequantize(self.qweight, self.scales, self.qzeros, self.group_size, x.dtype)
            y = x @ w
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"fused_max_tokens={self.fused_max_tokens}")


def random_packed(k: int, n: int, group_size: int = 128, *, device="cpu", seed: int = 0,
                  symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random GPTQ-packed (qweight, scales, qzeros) for tests and benchmarks: codes 0..15, zero points in
    1..15 (symmetric: 8), scales about 1/sqrt(k) so that outputs are of order one."""
    from ..gptq.qlinear import pack_rows, pack_zeros_v1

    gen = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 16, (k, n), generator=gen)
    groups = k // group_size
    z = torch.full((groups, n), 8) if symmetric else torch.randint(1, 16, (groups, n), generator=gen)
    s = (torch.rand(groups, n, generator=gen) * 0.5 + 0.5) / (4 * math.sqrt(k))
    qweight = pack_rows(u, 4)
    qzeros = pack_zeros_v1(z, 4).contiguous()
    return qweight.to(device), s.to(torch.float16).to(device), qzeros.to(device)
