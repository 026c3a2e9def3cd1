"""The half2 kernel's inline PTX (course_lib.kernels.w4a16_h2), checked without a GPU: a small interpreter of
the PTX instructions it uses runs the very asm strings, and the eight codes of a word must come out exactly, in
row order, against the course's unpacking; a broken asm string must not. (The Triton code around the asm runs
under the interpreter in tests/test_w4a16.py, the compiled kernel in tests/test_w4a16_gpu.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.kernels import w4a16 as W
from course_lib.kernels import w4a16_h2 as H
from course_lib.kernels.ptx_sim import codes_seen, dot8, dot8_two_step, f16_value, halves, lop3


WORDS = np.concatenate([np.array([0, -1, 0x76543210, -0x789ABCE], dtype=np.int64),
                        np.random.default_rng(0).integers(-2**31, 2**31, 60)]).astype(np.int32)


def test_the_instruction_semantics_and_constants():
    rng = np.random.default_rng(1)
    for a, b, c in rng.integers(0, 2**32, (50, 3), dtype=np.uint64).tolist():
        assert lop3(a, b, c, 0xEA) == (a & b) | c   # lop3's table 0xea is (a & b) | c
    assert (f16_value(0x6400), f16_value(0x2C00), f16_value(0xD400)) == (1024.0, 1 / 16, -64.0)
    for z in range(16):
        clo, chi = H.magic_constants(z)
        assert [f16_value(h) for h in halves(clo)] == [1024 + z] * 2 and [f16_value(h) for h in halves(chi)] == [-(64 + z)] * 2


@pytest.mark.parametrize("asm", [H.DOT8_F16, H.DOT8_F32, H.DOT4_F16, H.DOT4_F32],
                         ids=["fp16 sum", "fp32 sum", "convert, then fp16 sum", "convert, then fp32 sum"])
def test_every_code_comes_out_exactly_in_row_order(asm):
    ref = W.unpack_int4(torch.from_numpy(WORDS).reshape(1, -1)).numpy()   # (8, words)
    for w, q in enumerate(WORDS.tolist()):
        z = w % 16
        assert codes_seen(asm, q, z) == (ref[:, w] - z).tolist(), hex(q & 0xFFFFFFFF)


@pytest.mark.parametrize("asm, limit", [(H.DOT8_F16, 4 * 2.0**-11), (H.DOT8_F32, 2 * 2.0**-11),
                                        (H.DOT4_F16, 4 * 2.0**-11), (H.DOT4_F32, 2 * 2.0**-11)],
                         ids=["fp16 sum", "fp32 sum", "convert, then fp16 sum", "convert, then fp32 sum"])
def test_the_sum_is_within_fp16_rounding(asm, limit):
    rng = np.random.default_rng(2)
    ref = W.unpack_int4(torch.from_numpy(WORDS).reshape(1, -1)).numpy()
    for w, q in enumerate(WORDS.tolist()):
        x8 = (rng.standard_normal(8) * rng.choice([0.01, 1.0, 30.0])).astype(np.float16)
        z = int(rng.integers(0, 16))
        exact = float(np.dot(x8.astype(np.float64), ref[:, w] - z))
        got = dot8_two_step(asm, q, x8, z) if asm in (H.DOT4_F16, H.DOT4_F32) else dot8(asm, q, x8, z)
        assert abs(got - exact) <= limit * 15 * float(np.abs(x8.astype(np.float64)).sum())


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


def test_the_interpreter_refuses_what_it_does_not_know():
    from course_lib.kernels.ptx_sim import run_ptx

    with pytest.raises(ValueError, match="not simulated"):
        run_ptx("{ .reg .b32 r; div.rn.f32 r, $1, $2; mov.b32 $0, r; }", [1, 2])
    with pytest.raises(ValueError, match="never wrote"):
        run_ptx("{ .reg .b32 r; mov.b32 r, $1; }", [1])
    with pytest.raises(ValueError, match=r"\$1"):
        run_ptx("{ mov.b32 $0, $2; }", [7, 8], outputs=2)
    with pytest.raises(ValueError, match="never declared"):
        run_ptx("{ mov.b32 q, $1; mov.b32 $0, q; }", [1])
