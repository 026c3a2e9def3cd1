"""The matrix-vector W4A16 kernel with its de-quantization on packed half2 instructions (inline PTX).

Profiling the course's ``_w4a16_gemv`` on an H200 showed it bound by instructions, not bytes: per weight a
shift, a mask, the magic OR, an fp16 subtraction and an fp16 FMA, each on one 16-bit value. Hopper's fp16
units work on *pairs* (half2), and one ``lop3`` instruction does any logic function of three words. Serving
kernels (FasterTransformer, TinyChat, Marlin) therefore convert two nibbles at once. For one int32 word q
holding the codes u0..u7 of input rows 8i..8i+7:

    t  = q >> 8
    a0 = lop3(q, 0x000f000f, 0x64006400, 0xea)     (q & mask) | magic: half2 (1024 + u0,      1024 + u4)
    a1 = lop3(q, 0x00f000f0, 0x64006400, 0xea)                         half2 (1024 + 16 u1,   1024 + 16 u5)
    a2 = lop3(t, 0x000f000f, 0x64006400, 0xea)                         half2 (1024 + u2,      1024 + u6)
    a3 = lop3(t, 0x00f000f0, 0x64006400, 0xea)                         half2 (1024 + 16 u3,   1024 + 16 u7)
    a0 -= (1024 + z, 1024 + z);  a2 -= ...                              exact: u - z
    a1 = a1 * 1/16 - (64 + z);   a3 = ...                               exact: u - z
    w  = a0 * (x0, x4) + a1 * (x1, x5) + a2 * (x2, x6) + a3 * (x3, x7)  four fma.f16x2
    r  = float32(w.lo + w.hi)                                           = sum_j x_j (u_j - z)

Thirteen instructions for eight weights instead of about forty. The group's zero point z is folded into the
two magic constants, so the fold per word is a single float32 FMA, acc += s * r. The activation pairs
(x_j, x_{j+4}) are the same for every column: two byte permutes (``prmt``) per two pairs, once per step.

Products add up in fp16 within a word (``half``, as the course's HALF flag does): 8 products of |u - z| <= 15,
so |x| up to about 500 is safe; ``half=False`` converts the four products to float32 first (about 15 %
slower). Only for fp16 activations. ``_w4a16_gemv_h2`` takes one token; ``_w4a16_rows_h2`` takes 2-4, converting
each word once (``CONVERT4``) and multiplying it once per token (``DOT4_*``). Triton's interpreter cannot run inline asm: under
TRITON_INTERPRET=1 the kernel computes the same sums from the same constant bits in plain Triton (EMULATE),
so the CPU tests check everything around the asm; tests/test_w4a16_h2.py checks the asm strings themselves
with a small interpreter of the PTX instructions they use.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs without Triton
    triton = None

PRMT_LO = "prmt.b32 $0, $1, $2, 0x5410;"  # both low halves:  (a.lo, b.lo)
PRMT_HI = "prmt.b32 $0, $1, $2, 0x7632;"  # both high halves: (a.hi, b.hi)

def _convert(word: str, clo: str, chi: str, out: tuple[str, str, str, str]) -> str:
    """PTX that turns `word` into the four half2 registers `out` of u - z (pairs (0, 4), (1, 5), (2, 6), (3, 7))."""
    a0, a1, a2, a3 = out
    return f"""shr.u32 h2t, {word}, 8;
lop3.b32 {a0}, {word}, 0x000f000f, 0x64006400, 0xea;
lop3.b32 {a1}, {word}, 0x00f000f0, 0x64006400, 0xea;
lop3.b32 {a2}, h2t, 0x000f000f, 0x64006400, 0xea;
lop3.b32 {a3}, h2t, 0x00f000f0, 0x64006400, 0xea;
mov.b32 h2k, 0x2c002c00;
sub.rn.f16x2 {a0}, {a0}, {clo};
fma.rn.f16x2 {a1}, {a1}, h2k, {chi};
sub.rn.f16x2 {a2}, {a2}, {clo};
fma.rn.f16x2 {a3}, {a3}, h2k, {chi};
"""


def _products(a: tuple[str, ...], x: tuple[str, ...], half: bool) -> str:
    """PTX for sum_j a_j * x_j over the four pairs, as float32 bits into $0: the products added in fp16 (half),
    or each converted to float32 first."""
    if half:
        return f"""mul.rn.f16x2 h2w, {a[0]}, {x[0]};
fma.rn.f16x2 h2w, {a[1]}, {x[1]}, h2w;
fma.rn.f16x2 h2w, {a[2]}, {x[2]}, h2w;
fma.rn.f16x2 h2w, {a[3]}, {x[3]}, h2w;
mov.b32 {{h2l, h2h}}, h2w;
add.rn.f16 h2l, h2l, h2h;
cvt.f32.f16 h2f, h2l;
mov.b32 $0, h2f;
}}"""
    lines = [f"mul.rn.f16x2 h2w{j}, {a[j]}, {x[j]};" for j in range(4)]
    lines += [f"mov.b32 {{h2l{j}, h2h{j}}}, h2w{j};" for j in range(4)]
    lines += [f"cvt.f32.f16 h2f{2 * j + h}, h2{'lh'[h]}{j};" for j in range(4) for h in range(2)]
    lines += [f"add.rn.f32 h2f{a}, h2f{a}, h2f{b};" for a, b in ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (4, 6), (0, 4))]
    return "\n".join(lines) + "\nmov.b32 $0, h2f0;\n}"


_REGS_F16 = ".reg .b16 h2l, h2h;\n.reg .f32 h2f;\n"
_REGS_F32 = (".reg .b16 h2l0, h2h0, h2l1, h2h1, h2l2, h2h2, h2l3, h2h3;\n"
             ".reg .f32 h2f0, h2f1, h2f2, h2f3, h2f4, h2f5, h2f6, h2f7;\n")
_A = ("h2a0", "h2a1", "h2a2", "h2a3")

# One token, one block per word. $0: the result's float32 bits; $1: the word; $2..$5: the x pairs; $6, $7: CLO, CHI
DOT8_F16 = ("{\n.reg .b32 h2t, h2a0, h2a1, h2a2, h2a3, h2k, h2w;\n" + _REGS_F16 + "\n"
            + _convert("$1", "$6", "$7", _A) + _products(_A, ("$2", "$3", "$4", "$5"), True))
DOT8_F32 = ("{\n.reg .b32 h2t, h2a0, h2a1, h2a2, h2a3, h2k, h2w0, h2w1, h2w2, h2w3;\n" + _REGS_F32 + "\n"
            + _convert("$1", "$6", "$7", _A) + _products(_A, ("$2", "$3", "$4", "$5"), False))
DOT8_CONSTRAINTS = "=r,r,r,r,r,r,r,r"

# For 2-4 tokens: the conversion once per word ($0..$3 out: the four half2 of u - z; $4 the word; $5, $6 CLO, CHI)...
CONVERT4 = "{\n.reg .b32 h2t, h2k;\n" + _convert("$4", "$5", "$6", ("$0", "$1", "$2", "$3")) + "}"
CONVERT4_CONSTRAINTS = "=r,=r,=r,=r,r,r,r"
# ... then the products once per token ($0 out; $1..$4 the converted pairs; $5..$8 the token's x pairs)
DOT4_F16 = "{\n.reg .b32 h2w;\n" + _REGS_F16 + _products(("$1", "$2", "$3", "$4"), ("$5", "$6", "$7", "$8"), True)
DOT4_F32 = ("{\n.reg .b32 h2w0, h2w1, h2w2, h2w3;\n" + _REGS_F32
            + _products(("$1", "$2", "$3", "$4"), ("$5", "$6", "$7", "$8"), False))
DOT4_CONSTRAINTS = "=r,r,r,r,r,r,r,r,r"
CLO_BASE = 0x64006400           # half2 (1024, 1024)
CHI_BASE = 0xD400D400 - 2**32   # half2 (-64, -64), as the signed int32 Triton computes with


def magic_constants(z: int) -> tuple[int, int]:
    """The two half2 constants for zero point z (0..15) as uint32 bits, computed as the kernel does (an int32
    multiply-add, no carries between the halves): CLO = 1024 + z and CHI = -(64 + z), in both halves."""
    return (z * 0x00010001 + CLO_BASE) & 0xFFFFFFFF, (z * 0x00100010 + CHI_BASE) & 0xFFFFFFFF


if triton is not None:
    _DOT8_F16 = tl.constexpr(DOT8_F16)
    _DOT8_F32 = tl.constexpr(DOT8_F32)
    _PRMT_LO = tl.constexpr(PRMT_LO)
    _PRMT_HI = tl.constexpr(PRMT_HI)
    _CONSTRAINTS = tl.constexpr(DOT8_CONSTRAINTS)
    _CONVERT4 = tl.constexpr(CONVERT4)
    _CONVERT4_CONSTRAINTS = tl.constexpr(CONVERT4_CONSTRAINTS)
    _DOT4_F16 = tl.constexpr(DOT4_F16)
    _DOT4_F32 = tl.constexpr(DOT4_F32)
    _DOT4_CONSTRAINTS = tl.constexpr(DOT4_CONSTRAINTS)
    _CLO_BASE = tl.constexpr(CLO_BASE)
    _CHI_BASE = tl.constexpr(CHI_BASE)

    @triton.jit
    def _half_f32(p, HI: tl.constexpr):
        """float32 of the low or high fp16 half of int32 bit patterns (the emulation only)."""
        if HI:
            b = (p >> 16) & 0xFFFF
        else:
            b = p & 0xFFFF
        return b.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)

    @triton.jit
    def _nibble(words, j: tl.constexpr):
        return ((words >> (4 * j)) & 0xF).to(tl.float32)

    @triton.jit
    def _dot8_emulated(words, p0, p1, p2, p3, clo, chi):
        """What the asm computes, in plain Triton from the same operands (for TRITON_INTERPRET=1): lane lo of
        pair j meets nibble j, lane hi nibble j + 4; even nibbles are (1024 + u) - CLO, odd ones
        (1024 + 16 u) / 16 + CHI."""
        cl0, cl1, ch0, ch1 = _half_f32(clo, False), _half_f32(clo, True), _half_f32(chi, False), _half_f32(chi, True)
        r = _half_f32(p0, False) * (1024.0 + _nibble(words, 0) - cl0)
        r += _half_f32(p0, True) * (1024.0 + _nibble(words, 4) - cl1)
        r += _half_f32(p1, False) * (64.0 + _nibble(words, 1) + ch0)
        r += _half_f32(p1, True) * (64.0 + _nibble(words, 5) + ch1)
        r += _half_f32(p2, False) * (1024.0 + _nibble(words, 2) - cl0)
        r += _half_f32(p2, True) * (1024.0 + _nibble(words, 6) - cl1)
        r += _half_f32(p3, False) * (64.0 + _nibble(words, 3) + ch0)
        r += _half_f32(p3, True) * (64.0 + _nibble(words, 7) + ch1)
        return r

    @triton.jit
    def _group_constants(s_ptr, qz_ptr, g, N, cols, col_ok, shift_z):
        """Group g's scales (float32) and the magic constants CLO = 1024 + z, CHI = -(64 + z) (both halves) per
        column, each (1, BLOCK_N). The scale's bits and the zero point travel as one int32 per column: one
        layout change per step instead of two."""
        s16 = tl.load(s_ptr + g * N + cols, mask=col_ok, other=0.0)
        zw = tl.load(qz_ptr + g * (N // 8) + cols // 8, mask=col_ok, other=0) + 0x11111111  # undo v1's -1
        z = (zw >> shift_z) & 0xF
        sz = ((s16.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) | (z << 16))[None, :]
        s = (sz & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        zc = sz >> 16
        return s, zc * 0x00010001 + _CLO_BASE, zc * 0x00100010 + _CHI_BASE

    @triton.jit
    def _w4a16_gemv_h2(x32_ptr, q_ptr, s_ptr, qz_ptr, y_ptr, N, K, K_PER_SPLIT, stride_qk, stride_qn,
                       GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ATOMIC: tl.constexpr,
                       HALF: tl.constexpr, EVICT: tl.constexpr, EMULATE: tl.constexpr):
        """One fp16 token, x read as int32 pairs: program (n-block, k-slice) like ``_w4a16_gemv``; one asm
        block per loaded word; acc (BLOCK_K // 8, BLOCK_N) summed over its rows at the end."""
        PACKED: tl.constexpr = BLOCK_K // 8
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.max_contiguous(tl.multiple_of(cols, BLOCK_N), BLOCK_N)
        i = tl.arange(0, PACKED)
        col_ok = cols < N
        k_start = tl.program_id(1) * K_PER_SPLIT
        k_stop = tl.minimum(k_start + K_PER_SPLIT, K)
        acc = tl.zeros((PACKED, BLOCK_N), dtype=tl.float32)
        w_ptrs = q_ptr + i[:, None] * stride_qk + cols[None, :] * stride_qn
        shift_z = (cols % 8) * 4
        for k0 in range(k_start, k_stop, BLOCK_K):
            g = k0 // GROUP
            words = tl.load(w_ptrs + (k0 // 8) * stride_qk, mask=col_ok[None, :], other=0, eviction_policy=EVICT)
            s, clo, chi = _group_constants(s_ptr, qz_ptr, g, N, cols, col_ok, shift_z)
            # the step's activations, one 16-byte load per word row: x32[4i + m] = (x_{8i+2m}, x_{8i+2m+1})
            xq = tl.load(x32_ptr + k0 // 2 + 4 * i[:, None] + tl.arange(0, 4)[None, :])
            x02, x13 = tl.split(tl.reshape(xq, (PACKED, 2, 2)))
            xa, xc = tl.split(x02)    # (x0, x1), (x4, x5)
            xb, xd = tl.split(x13)    # (x2, x3), (x6, x7)
            if EMULATE:  # the byte permutes in integer arithmetic
                p0 = (xa & 0xFFFF) | (xc << 16)
                p1 = ((xa >> 16) & 0xFFFF) | (xc & -65536)
                p2 = (xb & 0xFFFF) | (xd << 16)
                p3 = ((xb >> 16) & 0xFFFF) | (xd & -65536)
                r = _dot8_emulated(words, p0[:, None], p1[:, None], p2[:, None], p3[:, None], clo, chi)
            else:
                p0 = tl.inline_asm_elementwise(_PRMT_LO, "=r,r,r", [xa, xc], dtype=tl.int32, is_pure=True, pack=1)
                p1 = tl.inline_asm_elementwise(_PRMT_HI, "=r,r,r", [xa, xc], dtype=tl.int32, is_pure=True, pack=1)
                p2 = tl.inline_asm_elementwise(_PRMT_LO, "=r,r,r", [xb, xd], dtype=tl.int32, is_pure=True, pack=1)
                p3 = tl.inline_asm_elementwise(_PRMT_HI, "=r,r,r", [xb, xd], dtype=tl.int32, is_pure=True, pack=1)
                args = [words, p0[:, None], p1[:, None], p2[:, None], p3[:, None], clo, chi]
                if HALF:
                    bits = tl.inline_asm_elementwise(_DOT8_F16, _CONSTRAINTS, args, dtype=tl.int32, is_pure=True,
                                                     pack=1)
                else:
                    bits = tl.inline_asm_elementwise(_DOT8_F32, _CONSTRAINTS, args, dtype=tl.int32, is_pure=True,
                                                     pack=1)
                r = bits.to(tl.float32, bitcast=True)   # sum over the word's 8 rows of x (u - z)
            acc += s * r
        out = tl.sum(acc, axis=0)
        if ATOMIC:
            tl.atomic_add(y_ptr + cols, out.to(y_ptr.dtype.element_ty), mask=col_ok, sem="relaxed")
        else:
            tl.store(y_ptr + cols, out.to(y_ptr.dtype.element_ty), mask=col_ok)

    @triton.jit
    def _w4a16_rows_h2(x32_ptr, q_ptr, s_ptr, qz_ptr, y_ptr, M, N, K, K_PER_SPLIT, stride_qk, stride_qn,
                       stride_xm, stride_ym, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, ATOMIC: tl.constexpr, HALF: tl.constexpr, EVICT: tl.constexpr,
                       EMULATE: tl.constexpr):
        """2-4 fp16 tokens (BLOCK_M rows, masked): each word converted once (CONVERT4), its products made once per
        token (DOT4); acc (BLOCK_M, BLOCK_K // 8, BLOCK_N) summed over the words at the end. stride_xm counts
        int32 pairs."""
        PACKED: tl.constexpr = BLOCK_K // 8
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.max_contiguous(tl.multiple_of(cols, BLOCK_N), BLOCK_N)
        rows = tl.arange(0, BLOCK_M)
        i = tl.arange(0, PACKED)
        col_ok, row_ok = cols < N, rows < M
        k_start = tl.program_id(1) * K_PER_SPLIT
        k_stop = tl.minimum(k_start + K_PER_SPLIT, K)
        acc = tl.zeros((BLOCK_M, PACKED, BLOCK_N), dtype=tl.float32)
        w_ptrs = q_ptr + i[:, None] * stride_qk + cols[None, :] * stride_qn
        x_ptrs = x32_ptr + rows[:, None, None] * stride_xm + 4 * i[None, :, None] + tl.arange(0, 4)[None, None, :]
        shift_z = (cols % 8) * 4
        for k0 in range(k_start, k_stop, BLOCK_K):
            g = k0 // GROUP
            words = tl.load(w_ptrs + (k0 // 8) * stride_qk, mask=col_ok[None, :], other=0, eviction_policy=EVICT)
            s, clo, chi = _group_constants(s_ptr, qz_ptr, g, N, cols, col_ok, shift_z)
            xq = tl.load(x_ptrs + k0 // 2, mask=row_ok[:, None, None], other=0)        # (BLOCK_M, PACKED, 4)
            x02, x13 = tl.split(tl.reshape(xq, (BLOCK_M, PACKED, 2, 2)))
            xa, xc = tl.split(x02)    # (x0, x1), (x4, x5) of each token
            xb, xd = tl.split(x13)    # (x2, x3), (x6, x7)
            if EMULATE:
                p0 = (xa & 0xFFFF) | (xc << 16)
                p1 = ((xa >> 16) & 0xFFFF) | (xc & -65536)
                p2 = (xb & 0xFFFF) | (xd << 16)
                p3 = ((xb >> 16) & 0xFFFF) | (xd & -65536)
                r = _dot8_emulated(words[None, :, :], p0[:, :, None], p1[:, :, None], p2[:, :, None],
                                   p3[:, :, None], clo[None, :, :], chi[None, :, :])
            else:
                p0 = tl.inline_asm_elementwise(_PRMT_LO, "=r,r,r", [xa, xc], dtype=tl.int32, is_pure=True, pack=1)
                p1 = tl.inline_asm_elementwise(_PRMT_HI, "=r,r,r", [xa, xc], dtype=tl.int32, is_pure=True, pack=1)
                p2 = tl.inline_asm_elementwise(_PRMT_LO, "=r,r,r", [xb, xd], dtype=tl.int32, is_pure=True, pack=1)
                p3 = tl.inline_asm_elementwise(_PRMT_HI, "=r,r,r", [xb, xd], dtype=tl.int32, is_pure=True, pack=1)
                a0, a1, a2, a3 = tl.inline_asm_elementwise(
                    _CONVERT4, _CONVERT4_CONSTRAINTS, [words, clo, chi],
                    dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
                args = [a0[None, :, :], a1[None, :, :], a2[None, :, :], a3[None, :, :],
                        p0[:, :, None], p1[:, :, None], p2[:, :, None], p3[:, :, None]]
                if HALF:
                    bits = tl.inline_asm_elementwise(_DOT4_F16, _DOT4_CONSTRAINTS, args, dtype=tl.int32,
                                                     is_pure=True, pack=1)
                else:
                    bits = tl.inline_asm_elementwise(_DOT4_F32, _DOT4_CONSTRAINTS, args, dtype=tl.int32,
                                                     is_pure=True, pack=1)
                r = bits.to(tl.float32, bitcast=True)
            acc += s[None, :, :] * r
        out = tl.sum(acc, axis=1)
        y_ptrs = y_ptr + rows[:, None] * stride_ym + cols[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        if ATOMIC:
            tl.atomic_add(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask, sem="relaxed")
        else:
            tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask)
