"""The half2 kernel's inline PTX (course_lib.kernels.w4a16_h2), checked without a GPU: a small interpreter of
the PTX instructions it uses runs the very asm strings, and the eight codes of a word must come out exactly, in
row order, against the course's unpacking; a broken asm string must not. (The Triton code around the asm runs
under the interpreter in tests/test_w4a16.py, the compiled kernel in tests/test_w4a16_gpu.py.)"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from course_lib.kernels import w4a16 as W
from course_lib.kernels import w4a16_h2 as H


def _f16(bits: int) -> float:
    return float(np.array([bits & 0xFFFF], dtype=np.uint16).view(np.float16)[0])


def _bits16(v: float) -> int:
    return int(np.array([v], dtype=np.float16).view(np.uint16)[0])


def _f32(bits: int) -> np.float32:
    return np.array([bits & 0xFFFFFFFF], dtype=np.uint32).view(np.float32)[0]


def _bits32(v) -> int:
    return int(np.array([v], dtype=np.float32).view(np.uint32)[0])


def _halves(v: int) -> tuple[int, int]:
    return v & 0xFFFF, (v >> 16) & 0xFFFF


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    """lop3.b32: bit k of the result is bit (a_k b_k c_k read as a 3-bit number) of the table `lut`."""
    out = 0
    for idx in range(8):
        if (lut >> idx) & 1:
            out |= (a if idx & 4 else ~a) & (b if idx & 2 else ~b) & (c if idx & 1 else ~c)
    return out & 0xFFFFFFFF


def _prmt(a: int, b: int, sel: int) -> int:
    """prmt.b32 (default mode): result byte k is byte sel[k] of the eight bytes of {b, a}."""
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    return sum(src[(sel >> (4 * k)) & 7] << (8 * k) for k in range(4))


def _h2(a: int, b: int, c: int, op: str) -> int:
    """A half2 instruction: each lane computed exactly (float64) and rounded once to fp16."""
    lanes = []
    for la, lb, lc in zip(_halves(a), _halves(b), _halves(c)):
        fa, fb, fc = _f16(la), _f16(lb), _f16(lc)
        lanes.append(_bits16({"sub": fa - fb, "mul": fa * fb, "fma": fa * fb + fc}[op]))
    return lanes[0] | (lanes[1] << 16)


def run_ptx(asm: str, inputs: list[int]) -> int:
    """Run an asm block of the instructions the kernel uses; inputs are $1, $2, ...; returns $0's bits."""
    regs: dict[str, int] = {}

    def val(tok: str) -> int:
        tok = tok.strip()
        if tok.startswith("$"):
            return inputs[int(tok[1:]) - 1] & 0xFFFFFFFF
        return regs[tok] if tok in regs else int(tok, 0)

    out = None
    for line in (part.strip().strip("{}").strip() for part in asm.replace("\n", ";").split(";")):
        if not line:
            continue
        if line.startswith(".reg"):
            regs.update({name.strip(): 0 for name in line.split(None, 2)[2].split(",")})
            continue
        op, rest = re.match(r"^([a-z0-9.]+)\s+(.*)$", line).groups()
        if op == "mov.b32" and rest.startswith("{"):  # mov.b32 {lo, hi}, src
            names, src = rest[1:].split("}")
            lo, hi = (t.strip() for t in names.split(","))
            regs[lo], regs[hi] = _halves(val(src.strip().lstrip(",")))
            continue
        dst, *args = (t.strip() for t in rest.split(","))
        a = [val(t) for t in args]
        r = {"shr.u32": lambda: a[0] >> a[1], "lop3.b32": lambda: _lop3(*a), "prmt.b32": lambda: _prmt(*a),
             "mov.b32": lambda: a[0], "sub.rn.f16x2": lambda: _h2(a[0], a[1], 0, "sub"),
             "mul.rn.f16x2": lambda: _h2(a[0], a[1], 0, "mul"), "fma.rn.f16x2": lambda: _h2(*a, "fma"),
             "add.rn.f16": lambda: _bits16(_f16(a[0]) + _f16(a[1])),
             "cvt.f32.f16": lambda: _bits32(np.float32(_f16(a[0]))),
             "add.rn.f32": lambda: _bits32(_f32(a[0]) + _f32(a[1]))}[op]()
        if dst == "$0":
            out = r & 0xFFFFFFFF
        else:
            assert dst in regs, f"undeclared register {dst}"
            regs[dst] = r & 0xFFFFFFFF
    assert out is not None, "the asm never wrote $0"
    return out


def x_pairs(x8) -> list[int]:
    """The four half2 pairs (x_j, x_{j+4}) of 8 fp16 activations, built as the kernel builds them."""
    w = [int(v) for v in np.asarray(x8, dtype=np.float16).view(np.uint32)]  # (x_{2m}, x_{2m+1})
    sel = [int(s.split(",")[-1].strip(" ;"), 0) for s in (H.PRMT_LO, H.PRMT_HI)]
    return [_prmt(w[0], w[2], sel[0]), _prmt(w[0], w[2], sel[1]), _prmt(w[1], w[3], sel[0]), _prmt(w[1], w[3], sel[1])]


def dot8(asm: str, q: int, x8, z: int) -> float:
    return float(_f32(run_ptx(asm, [q & 0xFFFFFFFF, *x_pairs(x8), *H.magic_constants(z)])))


def codes_seen(asm: str, q: int, z: int) -> list[float]:
    """The eight values u_j - z the asm multiplies, read back with one-hot activations."""
    return [dot8(asm, q, np.eye(8)[j], z) for j in range(8)]


WORDS = np.concatenate([np.array([0, -1, 0x76543210, -0x789ABCE], dtype=np.int64),
                        np.random.default_rng(0).integers(-2**31, 2**31, 60)]).astype(np.int32)


def test_the_instruction_semantics_and_constants():
    rng = np.random.default_rng(1)
    for a, b, c in rng.integers(0, 2**32, (50, 3), dtype=np.uint64).tolist():
        assert _lop3(a, b, c, 0xEA) == (a & b) | c   # lop3's table 0xea is (a & b) | c
    assert (_f16(0x6400), _f16(0x2C00), _f16(0xD400)) == (1024.0, 1 / 16, -64.0)
    for z in range(16):
        clo, chi = H.magic_constants(z)
        assert [_f16(h) for h in _halves(clo)] == [1024 + z] * 2 and [_f16(h) for h in _halves(chi)] == [-(64 + z)] * 2


@pytest.mark.parametrize("asm", [H.DOT8_F16, H.DOT8_F32], ids=["fp16 sum", "fp32 sum"])
def test_every_code_comes_out_exactly_in_row_order(asm):
    ref = W.unpack_int4(torch.from_numpy(WORDS).reshape(1, -1)).numpy()   # (8, words)
    for w, q in enumerate(WORDS.tolist()):
        z = w % 16
        assert codes_seen(asm, q, z) == (ref[:, w] - z).tolist(), hex(q & 0xFFFFFFFF)


@pytest.mark.parametrize("asm, limit", [(H.DOT8_F16, 4 * 2.0**-11), (H.DOT8_F32, 2 * 2.0**-11)],
                         ids=["fp16 sum", "fp32 sum"])
def test_the_sum_is_within_fp16_rounding(asm, limit):
    rng = np.random.default_rng(2)
    ref = W.unpack_int4(torch.from_numpy(WORDS).reshape(1, -1)).numpy()
    for w, q in enumerate(WORDS.tolist()):
        x8 = (rng.standard_normal(8) * rng.choice([0.01, 1.0, 30.0])).astype(np.float16)
        z = int(rng.integers(0, 16))
        exact = float(np.dot(x8.astype(np.float64), ref[:, w] - z))
        assert abs(dot8(asm, q, x8, z) - exact) <= limit * 15 * float(np.abs(x8.astype(np.float64)).sum())


@pytest.mark.parametrize("old, new", [("0x000f000f, 0x64006400", "0x000f00f0, 0x64006400"),   # a wrong mask
                                      ("shr.u32 h2t, $1, 8", "shr.u32 h2t, $1, 4"),              # a wrong shift
                                      ("h2k, 0x2c002c00", "h2k, 0x2c003c00"),                    # 1/16 in one lane
                                      ("fma.rn.f16x2 h2w, h2a1, $3", "fma.rn.f16x2 h2w, h2a1, $4")])  # a wrong pair
def test_a_broken_asm_string_is_caught(old, new):
    broken = H.DOT8_F16.replace(old, new, 1)
    assert broken != H.DOT8_F16
    ref = W.unpack_int4(torch.from_numpy(WORDS).reshape(1, -1)).numpy()
    assert any(codes_seen(broken, q, 3) != (ref[:, w] - 3).tolist() for w, q in enumerate(WORDS[:8].tolist()))


def test_bf16_activations_are_refused():
    qw, s, qz = W.random_packed(256, 64)
    with pytest.raises(ValueError, match="fp16"):
        W.launch(torch.randn(1, 256).bfloat16(), qw, s, qz, 128, W.KernelConfig(block_n=32, h2=True))
