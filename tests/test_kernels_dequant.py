"""Chapter 11's dequantize-then-matmul baseline: the lean PyTorch path computes what QuantLinear computes."""

import pytest
import torch

from course_lib.kernels.dequant_bench import (LLAMA3_8B_LINEARS, _copies, layer_summary, lean_dequant_matmul,
                                              random_quant_linear)


@pytest.mark.parametrize("k,n,m", [(256, 128, 1), (512, 64, 3)])
def test_lean_path_matches_quant_linear(k, n, m):
    gen = torch.Generator().manual_seed(k + n)
    layer = random_quant_linear(k, n, device="cpu", generator=gen)
    x = torch.randn(m, k, generator=gen)
    ref = layer(x)  # QuantLinear.forward: dequantize in float32, then F.linear
    ours = lean_dequant_matmul(x, layer.qweight, layer.scales, layer.zero_points())
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5)
    assert (layer.codes() == 0).any() and (layer.codes() == 15).any()  # the random words cover the code range


def test_group_size_must_divide_the_input():
    layer = random_quant_linear(256, 64, device="cpu")
    with pytest.raises(ValueError, match="multiple of the group size"):
        lean_dequant_matmul(torch.randn(1, 256), layer.qweight, layer.scales, layer.zero_points(), group_size=96)


def test_weights_in_rotation_exceed_the_l2_and_the_layer_sums():
    assert _copies(4096 * 1024 * 2, 60 << 20) * 4096 * 1024 * 2 >= 4 * (60 << 20)
    assert _copies(4096 * 14336 * 2, 60 << 20) == 3
    assert len(LLAMA3_8B_LINEARS) == 7
    rows = [{"tokens": 1, "fp16_us": 2.0, "lean_us": 8.0, "course_us": 20.0, "int4_bound_us": 0.5},
            {"tokens": 1, "fp16_us": 1.0, "lean_us": 4.0, "course_us": 10.0, "int4_bound_us": 0.25}]
    (row,) = layer_summary(rows)
    assert row["lean_vs_fp16"] == 4.0 and row["course_vs_fp16"] == 10.0 and row["fp16_vs_int4_bound"] == 4.0


def test_needs_cuda():
    from course_lib.core.env import DeviceUnavailableError
    from course_lib.kernels.dequant_bench import dequant_rows

    if torch.cuda.is_available():
        pytest.skip("checks the no-CUDA message")
    with pytest.raises((DeviceUnavailableError, RuntimeError), match="CUDA"):
        dequant_rows()
