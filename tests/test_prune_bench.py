"""course_lib.prune.sparse_bench: CPU dense vs CSR timing, the GPU guards, and (on a GPU) 2:4 correctness.

The CPU timing test only asserts what survives a busy 2-core machine: CSR at 99% zeros is several
times faster than dense, CSR at 50% is slower. The `gpu` tests need CUDA with sm80+ (pytest -m gpu).
"""

import pytest
import torch
import torch.nn.functional as F

from course_lib.core.env import DeviceUnavailableError
from course_lib.prune import sparse_bench as sb

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cpu_sparse_matmul_rows_are_sane():
    rows = sb.cpu_sparse_matmul(out_features=1024, in_features=1024, tokens=64, reps=5)
    assert [(r["format"], r["sparsity"]) for r in rows] == [
        ("dense", 0.0), ("dense, zeros inside", 0.5), ("dense, zeros inside", 0.9),
        *[("CSR", s) for s in sb.CPU_SPARSITIES]]
    assert all(r["ms"] > 0 for r in rows) and rows[0]["speedup"] == 1.0
    by = {(r["format"], r["sparsity"]): r["speedup"] for r in rows}
    assert by[("CSR", 0.99)] > 3 and by[("CSR", 0.5)] < 1, by


def test_cpu_sparse_matmul_rejects_bad_sizes():
    with pytest.raises(ValueError, match="tokens must be a positive int"):
        sb.cpu_sparse_matmul(tokens=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sb.cpu_sparse_matmul(csr_sparsities=(1.0,))


def test_csr_linear_and_mask_2_4_are_right():
    gen = torch.Generator().manual_seed(0)
    W = sb.random_zeros(torch.randn(24, 32, generator=gen), 0.7, gen)
    x = torch.randn(5, 32, generator=gen)
    torch.testing.assert_close(sb.csr_linear(x, W.to_sparse_csr()), F.linear(x, W))
    keep = sb.mask_2_4(torch.tensor([[1.0, -4.0, 3.0, 0.5, 0.0, 2.0, -2.5, 1.0]]))
    assert keep.tolist() == [[False, True, True, False, False, True, True, False]]
    assert (sb.mask_2_4(torch.randn(16, 64)).reshape(16, 16, 4).sum(-1) == 2).all()
    with pytest.raises(ValueError, match="multiple of 4"):
        sb.mask_2_4(torch.randn(4, 6))


def test_linear_and_mlp_rows_run_on_cpu_without_2_4():
    rows = sb.linear_rows(shapes={"tiny": (64, 128)}, tokens=(1, 4096), dtypes=(torch.float32,),
                          formats=sb.T4_FORMATS, reps=2, device="cpu")
    assert len(rows) == 2 * len(sb.T4_FORMATS)
    dense = [r for r in rows if r["format"] == "dense"]
    assert all(r["speedup"] == 1.0 and r["tflops"] > 0 for r in dense)
    (skipped,) = [r for r in rows if r["format"] == "CSR 50%" and r["tokens"] == 4096]
    assert skipped["ms"] is None and "not timed" in skipped["note"]
    table = sb.speedup_table(rows, "CSR 50%", "float32")
    assert table[0]["shape"] == "tiny" and table[0]["M=4096"] is None and table[0]["M=1"] > 0
    mlp = sb.mlp_rows(shapes={"tiny": (64, 128)}, tokens=(1, 8), dtype=torch.float32, backends=(), reps=2,
                      device="cpu")
    assert [(r["tokens"], r["format"]) for r in mlp] == [(1, "dense"), (8, "dense")]
    with pytest.raises(ValueError, match="CUDA only"):
        sb.linear_rows(device="cpu")


def test_clear_error_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="needs an NVIDIA GPU with CUDA.*cpu_sparse_matmul"):
        sb.require_sparse24_gpu()
    with pytest.raises(DeviceUnavailableError, match="CUDA"):
        sb.linear_rows()
    with pytest.raises(DeviceUnavailableError, match="CUDA"):
        sb.record_sparse24()


def test_clear_error_on_a_t4(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(DeviceUnavailableError, match=r"8\.0 or newer.*Tesla T4 is sm75.*dense paths and CSR"):
        sb.require_sparse24_gpu()


def test_constraints_table_names_both_backends():
    table = sb.semi_structured_constraints()
    assert table["cusparselt"]["float16"]["sparse_min_rows"] == 16
    assert table["cutlass"]["float16"]["sparse_min_cols"] == 64


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuSPARSELt", "CUTLASS"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 37, 256])
def test_2_4_matmul_equals_dense_masked(backend, dtype, tokens):
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("2:4 sparse kernels need CUDA with compute capability >= 8.0")
    if backend == "CUTLASS" and torch.cuda.get_device_capability()[0] != 8:
        pytest.skip("torch's CUTLASS 2:4 kernels run on sm8x only (an H100 raises 'Supported only on GPUs with "
                    "compute capability 8.x')")
    gen = torch.Generator(device="cuda").manual_seed(0)
    W = torch.randn(512, 256, device="cuda", generator=gen).to(dtype)
    W24 = (W * sb.mask_2_4(W)).contiguous()
    x = torch.randn(tokens, 256, device="cuda", generator=gen).to(dtype)
    y = F.linear(x, sb.to_2_4(W24, backend))
    ref = F.linear(x, W24)
    assert y.shape == ref.shape == (tokens, 512) and y.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 3e-2  # relative to the output's scale; accumulation order differs
    assert ((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item() < tol


@pytest.mark.gpu
def test_to_2_4_refuses_a_shape_it_cannot_take():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with pytest.raises(ValueError, match=r"multiples of \(32, 64\)"):
        sb.to_2_4(torch.zeros(48, 64, device="cuda", dtype=torch.float16), "CUTLASS")


def test_the_h100_recording_is_complete():
    from course_lib.core.results import load_result

    rec = load_result("h100_sparse24")
    assert "H100" in rec.device and rec.command.startswith("python -m course_lib.bench sparse24")
    formats = {r["format"] for r in rec.rows}
    assert formats == set(sb.GPU_FORMATS) and {r["dtype"] for r in rec.rows} == {"float16", "bfloat16"}
    timed_2_4 = [r for r in rec.rows if r["format"] == "2:4 cuSPARSELt" and r["ms"]]
    assert len(timed_2_4) == 2 * len(sb.LLAMA_SHAPES) * len(sb.GPU_TOKENS)
    assert all(r["rel_err"] < (1e-2 if r["dtype"] == "float16" else 3e-2) for r in timed_2_4)
    assert {m["block"] for m in rec.summary["mlp"]} == set(sb.MLP_SHAPES)
