"""GGUF's quantization blocks, read from their bytes (llama.cpp's formats, written here from their layouts).

Every GGUF tensor type stores weights in fixed-size blocks. Their layouts, in bytes per block:

    type   weights  layout                                                        bytes  bits/weight
    Q8_0     32     fp16 d, 32 int8                                                  34     8.5
    Q4_0     32     fp16 d, 16 bytes of nibbles                                      18     4.5
    Q4_1     32     fp16 d, fp16 m, 16 bytes of nibbles                              20     5.0
    Q5_0     32     fp16 d, 4 bytes of fifth bits, 16 bytes of nibbles               22     5.5
    Q4_K    256     fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes  144     4.5
    Q5_K    256     as Q4_K, plus 32 bytes of fifth bits                            176     5.5
    Q6_K    256     128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, 210     6.5625
                    fp16 d

A Q4_K super-block holds 8 sub-blocks of 32 weights. Each sub-block j has a 6-bit scale sc_j and a 6-bit minimum
m_j, themselves scaled by the block's fp16 d and dmin: w = d * sc_j * q - dmin * m_j, q in 0..15. The twelve
bytes of scales and minimums pack 16 six-bit numbers: bytes 0-3 hold sc_0..sc_3 in their low 6 bits, bytes 4-7
m_0..m_3, and bytes 8-11 the low 4 bits of sc_4..sc_7 (low nibble) and m_4..m_7 (high nibble), whose top 2 bits
sit in the spare top bits of bytes 0-3 (scales) and 4-7 (minimums). The 128 bytes of codes come as 4 runs of 32
bytes: run r holds sub-block 2r in its low nibbles and sub-block 2r + 1 in its high nibbles.
"""

from __future__ import annotations

import numpy as np

# type: (weights per block, bytes per block), from the layouts above
LAYOUTS = {"Q8_0": (32, 2 + 32), "Q4_0": (32, 2 + 16), "Q4_1": (32, 2 + 2 + 16), "Q5_0": (32, 2 + 4 + 16),
           "Q4_K": (256, 2 + 2 + 12 + 128), "Q5_K": (256, 2 + 2 + 12 + 32 + 128), "Q6_K": (256, 128 + 64 + 16 + 2)}


def bits_per_weight(kind: str) -> float:
    """Storage bits per weight of a GGUF block type, every scale and minimum counted."""
    if kind not in LAYOUTS:
        raise ValueError(f"Unknown block type {kind!r}; known: {', '.join(LAYOUTS)}.")
    weights, nbytes = LAYOUTS[kind]
    return 8 * nbytes / weights


def q4_k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and 8 six-bit minimums of each block from its 12 packed bytes: (blocks, 12) uint8 ->
    two (blocks, 8) arrays."""
    q = packed.astype(np.uint8)
    sc = np.empty(q.shape[:-1] + (8,), dtype=np.uint8)
    mn = np.empty_like(sc)
    sc[..., :4] = q[..., 0:4] & 63
    mn[..., :4] = q[..., 4:8] & 63
    sc[..., 4:] = (q[..., 8:12] & 0x0F) | ((q[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (q[..., 8:12] >> 4) | ((q[..., 4:8] >> 6) << 4)
    return sc, mn


def dequantize_q4_k(data) -> np.ndarray:
    """Q4_K bytes (a multiple of 144) -> float32 weights, 256 per super-block, in storage order."""
    raw = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8)
    weights, nbytes = LAYOUTS["Q4_K"]
    if raw.size % nbytes:
        raise ValueError(f"Q4_K data must be whole super-blocks of {nbytes} bytes; got {raw.size} bytes.")
    blocks = raw.reshape(-1, nbytes)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)        # (blocks, 1)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, mn = q4_k_scales_mins(blocks[:, 4:16])
    codes = blocks[:, 16:].reshape(-1, 4, 32)                             # 4 runs of 32 bytes
    q = np.stack([codes & 0x0F, codes >> 4], axis=2).reshape(-1, 8, 32)  # sub-block 2r: low, 2r + 1: high nibbles
    scale = d * sc.astype(np.float32)                                     # (blocks, 8)
    minimum = dmin * mn.astype(np.float32)
    w = scale[:, :, None] * q.astype(np.float32) - minimum[:, :, None]
    return w.reshape(-1).astype(np.float32)


def pack_q4_k_scales_mins(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """The inverse of ``q4_k_scales_mins``: (blocks, 8) six-bit scales and minimums -> (blocks, 12) bytes."""
    if sc.max(initial=0) > 63 or mn.max(initial=0) > 63 or sc.min(initial=0) < 0 or mn.min(initial=0) < 0:
        raise ValueError("Q4_K scales and minimums are 6-bit numbers, 0..63.")
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    q = np.empty(sc.shape[:-1] + (12,), dtype=np.uint8)
    q[..., 0:4] = sc[..., :4] | ((sc[..., 4:] >> 4) << 6)
    q[..., 4:8] = mn[..., :4] | ((mn[..., 4:] >> 4) << 6)
    q[..., 8:12] = (sc[..., 4:] & 0x0F) | ((mn[..., 4:] & 0x0F) << 4)
    return q


def quantize_q4_k(w) -> np.ndarray:
    """float weights (a multiple of 256) -> Q4_K bytes, the simplest way: per sub-block of 32 the affine grid
    from its minimum (at most 0) to its maximum, w ~ s * q - m with q in 0..15; then the 8 scales and 8 minimums
    of a super-block rounded to 6 bits against its fp16 d and dmin, and the codes rounded against the scales
    actually stored. (llama.cpp's quantizer also searches each sub-block's scale and minimum; this one does not.)"""
    x = np.asarray(w, dtype=np.float32).reshape(-1)
    weights, nbytes = LAYOUTS["Q4_K"]
    if x.size % weights:
        raise ValueError(f"Q4_K quantizes whole super-blocks of {weights} weights; got {x.size} weights.")
    x = x.reshape(-1, 8, 32)
    lo = np.minimum(x.min(axis=2), 0.0)                       # the grid starts at or below 0: w = s q - m, m >= 0
    hi = np.maximum(x.max(axis=2), lo)
    scale, minimum = (hi - lo) / 15, -lo                      # (blocks, 8)
    d = (scale.max(axis=1) / 63).astype(np.float16)
    dmin = (minimum.max(axis=1) / 63).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.clip(np.rint(scale / d32), 0, 63), 0).astype(np.uint8)
        mn = np.where(dmin32 > 0, np.clip(np.rint(minimum / dmin32), 0, 63), 0).astype(np.uint8)
        s_eff, m_eff = d32 * sc, dmin32 * mn                  # what the decoder will use
        q = np.where(s_eff[:, :, None] > 0, np.rint((x + m_eff[:, :, None]) / s_eff[:, :, None]), 0)
    q = np.clip(q, 0, 15).astype(np.uint8).reshape(-1, 4, 2, 32)      # run r: sub-blocks 2r (low), 2r + 1 (high)
    out = np.empty((x.shape[0], nbytes), dtype=np.uint8)
    out[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = dmin.view(np.uint8).reshape(-1, 2)
    out[:, 4:16] = pack_q4_k_scales_mins(sc, mn)
    out[:, 16:] = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    return out.reshape(-1)
