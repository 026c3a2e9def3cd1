"""Blockwise quantization with a float minimum (GGUF's Q4_1) vs an integer zero point, on synthetic tensors."""

import pytest
import torch

from course_lib.quant.float_min import fake_quantize_float_min, grid_fact, grid_fact_rows, quantize_float_min


def q4_1_tensor(out_f=8, in_f=96, seed=0):
    """Weights built the Q4_1 way: per 32-block an fp16 scale d and minimum m, codes 0..15 with 0 and 15 present."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (out_f, in_f // 32, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    d = (torch.rand(out_f, in_f // 32, 1, generator=g) * 0.01 + 1e-3).half().float()
    m = (-torch.rand(out_f, in_f // 32, 1, generator=g) * 0.05).half().float()
    return (d * q + m).reshape(out_f, in_f)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float_minimum_reproduces_q4_1_weights_and_integer_zero_point_does_not(seed):
    w = q4_1_tensor(seed=seed)
    assert torch.allclose(fake_quantize_float_min(w), w, rtol=0, atol=1e-7)
    fact = grid_fact(w)
    assert fact["float minimum (Q4_1)"]["exact"] == 1.0
    assert fact["integer zero point"]["rel_fro"] > 0.01 and fact["integer zero point"]["exact"] < 0.5


def test_error_is_at_most_half_a_step_on_random_weights():
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(3))
    q, scale, lo = quantize_float_min(w, bits=4, group_size=32)
    assert q.dtype == torch.uint8 and int(q.max()) == 15 and int(q.min()) == 0
    err = (fake_quantize_float_min(w) - w).abs().reshape(16, 4, 32)
    assert (err <= scale / 2 + 1e-6).all()
    # the integer zero point can do no better than the float minimum on a block's own range, on average
    rows = {r["quantizer (4-bit, blocks of 32)"]: r["rel. error"] for r in grid_fact_rows({"w": w})}
    assert rows["float minimum (Q4_1)"] < rows["integer zero point"] < rows["symmetric"]


def test_constant_block_and_bad_arguments():
    w = torch.full((2, 32), 0.25)
    assert torch.equal(fake_quantize_float_min(w), w)
    with pytest.raises(ValueError, match="does not divide"):
        fake_quantize_float_min(torch.zeros(4, 48), group_size=32)
    with pytest.raises(ValueError, match="2-D"):
        fake_quantize_float_min(torch.zeros(32))
    with pytest.raises(ValueError, match="bits"):
        fake_quantize_float_min(torch.zeros(2, 32), bits=9)
