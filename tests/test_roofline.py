import pytest
import torch

from course_lib import bench
from course_lib.core.timing import copy_bandwidth_gbps, device_slug
from course_lib.kernels import bench as kernels_bench
from course_lib.kernels import roofline


def test_flops_and_bytes():
    assert roofline.linear_flops(1, 4096, 11008) == 2 * 4096 * 11008
    assert roofline.linear_bytes(1, 2, 3, 2) == (2 * 3 + 1 * 2 + 1 * 3) * 2
    # Batch-1 fp16 matvec: about one FLOP per byte, whatever the layer size.
    assert roofline.arithmetic_intensity(1, 4096, 11008) == pytest.approx(1.0, rel=1e-3)
    # Intensity grows roughly with the number of tokens while m << k, n.
    assert roofline.arithmetic_intensity(64, 4096, 11008) == pytest.approx(64, rel=0.03)
    with pytest.raises(ValueError, match="positive"):
        roofline.linear_flops(0, 1, 1)


def test_machine_ridge_and_bound():
    h100 = roofline.Machine("h100", flops=989e12, bandwidth=3.35e12)
    assert h100.ridge == pytest.approx(295.2, rel=1e-3)
    assert h100.bound_by(1.0) == "memory" and h100.bound_by(1000) == "compute"
    assert h100.time_bound(flops=1e12, nbytes=1e9) == pytest.approx(1e12 / 989e12)


def test_linear_roofline_runs_on_cpu_and_counts_right():
    rows = kernels_bench.linear_roofline(torch.device("cpu"), k=128, n=256, tokens=(1, 8), n_weights=2, reps=3)
    assert [r["tokens"] for r in rows] == [1, 8]
    for r in rows:
        assert r["time_us"] > 0 and r["us_per_token"] == pytest.approx(r["time_us"] / r["tokens"])
        assert r["intensity"] == pytest.approx(roofline.arithmetic_intensity(r["tokens"], 128, 256, 4))
        assert r["tflops"] * 1e12 == pytest.approx(r["gbps"] * 1e9 * r["intensity"], rel=1e-9)


@pytest.mark.parametrize("name, slug", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                        ("Tesla T4", "t4"), ("NVIDIA GeForce RTX 4090", "geforce_rtx_4090")])
def test_result_files_are_named_after_the_gpu(name, slug):
    assert device_slug(name) == slug


def test_prefill_decode_times_on_cpu():
    from course_lib.lm.models import tiny_model

    row = kernels_bench.prefill_decode_times(tiny_model("llama"), prompt_tokens=16, new_tokens=4, reps=1)
    assert row["prompt_tokens"] == 16 and row["prefill_ms"] > 0
    assert row["decode_vs_prefill_per_token"] == pytest.approx(row["decode_us_per_token"] / row["prefill_us_per_token"])


@pytest.mark.parametrize("which", ["roofline", "prefill-decode", "model-eval"])
def test_bench_refuses_without_cuda(capsys, which):
    if torch.cuda.is_available():
        pytest.skip("checks the no-CUDA path")
    assert bench.main([which, "--name", "never_written"]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err


@pytest.mark.gpu
def test_roofline_on_gpu_is_memory_bound_at_batch_one():
    device = torch.device("cuda")
    rows = kernels_bench.linear_roofline(device, tokens=(1, 4096), reps=10)
    bandwidth = copy_bandwidth_gbps(device, nbytes=1 << 30, reps=5)
    assert rows[0]["gbps"] > 0.5 * bandwidth  # batch 1 streams weights near the copy bandwidth
    assert rows[1]["tflops"] > 20 * rows[0]["tflops"]  # batching turns it compute-bound
