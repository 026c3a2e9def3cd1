"""GGUF block formats (course_lib.mixed.kquants): bits per weight from the layouts, and a Q4_K super-block
de-quantized from its bytes, against the gguf package."""

from __future__ import annotations

import numpy as np
import pytest

from course_lib.mixed import kquants as K

gguf = pytest.importorskip("gguf", reason="the gguf package reads GGUF files (a course dependency)")


def random_q4_k(blocks: int, seed: int = 0) -> np.ndarray:
    """Random super-blocks: any bytes are valid codes and scales; d and dmin are finite fp16 numbers."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (blocks, 144), dtype=np.uint8)
    raw[:, 0:2] = (rng.standard_normal(blocks) * 0.01).astype(np.float16).view(np.uint8).reshape(blocks, 2)
    raw[:, 2:4] = (np.abs(rng.standard_normal(blocks)) * 0.01).astype(np.float16).view(np.uint8).reshape(blocks, 2)
    return raw.reshape(-1)


def test_bits_per_weight_match_the_gguf_package():
    expected = {"Q8_0": 8.5, "Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625}
    for kind, bpw in expected.items():
        assert K.bits_per_weight(kind) == bpw
        assert K.LAYOUTS[kind] == tuple(gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, kind)])
    with pytest.raises(ValueError, match="Unknown block type"):
        K.bits_per_weight("Q3_XL")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q4_k_equals_the_gguf_package(seed):
    data = random_q4_k(12, seed)
    ours = K.dequantize_q4_k(data)
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_K).reshape(-1)
    assert ours.shape == (12 * 256,)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_the_six_bit_scales_and_a_broken_unpacking_differ():
    packed = np.array([[0xC1, 0x02, 0x03, 0x04, 0x45, 0x06, 0x07, 0x88, 0x9A, 0xBC, 0xDE, 0xF0]], dtype=np.uint8)
    sc, mn = K.q4_k_scales_mins(packed)
    assert sc[0].tolist() == [0x01, 0x02, 0x03, 0x04, 0x0A | (3 << 4), 0x0C, 0x0E, 0x00]
    assert mn[0].tolist() == [0x05, 0x06, 0x07, 0x08, 0x09 | (1 << 4), 0x0B, 0x0D, 0x0F | (2 << 4)]
    data = random_q4_k(4, seed=5)
    good = K.dequantize_q4_k(data)
    codes = data.reshape(4, 144).copy()
    codes[:, 16:] = ((codes[:, 16:] & 0x0F) << 4) | (codes[:, 16:] >> 4)   # nibbles swapped: high first
    assert not np.allclose(K.dequantize_q4_k(codes.reshape(-1)), good)


def test_partial_blocks_are_refused():
    with pytest.raises(ValueError, match="whole super-blocks of 144 bytes"):
        K.dequantize_q4_k(np.zeros(100, dtype=np.uint8))


def test_six_bit_packing_round_trips():
    rng = np.random.default_rng(3)
    sc, mn = rng.integers(0, 64, (50, 8)), rng.integers(0, 64, (50, 8))
    back = K.q4_k_scales_mins(K.pack_q4_k_scales_mins(sc, mn))
    assert np.array_equal(back[0], sc) and np.array_equal(back[1], mn)
    with pytest.raises(ValueError, match="6-bit"):
        K.pack_q4_k_scales_mins(np.full((1, 8), 64), np.zeros((1, 8)))


def _rel_rmse(approx, w):
    return float(np.sqrt(np.mean((approx - w) ** 2)) / w.std())


def test_the_course_q4_k_writes_bytes_gguf_reads_and_beats_q4_0_at_the_same_size():
    q4_0 = gguf.GGMLQuantizationType.Q4_0
    for seed in range(3):
        w = (np.random.default_rng(seed).standard_normal(256 * 64) * 0.02).astype(np.float32)
        data = K.quantize_q4_k(w)
        assert data.size == 64 * 144
        ours = K.dequantize_q4_k(data)
        assert np.array_equal(ours, gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_K).reshape(-1))
        base = gguf.quants.dequantize(gguf.quants.quantize(w.reshape(-1, 256), q4_0), q4_0).reshape(-1)
        # both 4.5 bits per weight: about 0.079 against 0.086 of the weights' spread, seeds differ by < 0.001
        assert _rel_rmse(ours, w) < 0.95 * _rel_rmse(base, w) and _rel_rmse(ours, w) < 0.085


def test_q4_k_edge_blocks():
    zeros = K.dequantize_q4_k(K.quantize_q4_k(np.zeros(256)))
    assert np.array_equal(zeros, np.zeros(256))
    negative = K.dequantize_q4_k(K.quantize_q4_k(np.full(256, -0.5)))   # the minimum carries it, the scale is 0
    assert np.allclose(negative, -0.5, atol=1e-3)
    ramp = np.linspace(-1, 3, 256)                                         # ragged ranges per sub-block
    assert np.abs(K.dequantize_q4_k(K.quantize_q4_k(ramp)) - ramp).max() < 0.1
    with pytest.raises(ValueError, match="whole super-blocks of 256"):
        K.quantize_q4_k(np.zeros(300))
