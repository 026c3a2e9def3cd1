"""Chapter 10 on the GPU (pytest -m gpu on the H100/H200): the Triton kernel against PyTorch's attention."""

import os

import pytest
import torch

os.environ.setdefault("COURSE_FLASH_TUNE", "quick")  # two autotune configs: the tests check answers, not speed

from course_lib.attention.reference import naive_attention
from course_lib.attention.triton_flash import flash_attention_triton

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SHAPES = [(1, 4, 4, 128, 128), (2, 8, 2, 1000, 1000), (1, 8, 1, 77, 300), (1, 4, 4, 300, 77), (2, 4, 2, 1, 513),
          (1, 16, 8, 2048, 2048)]
TOL = {torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@cuda
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_triton_equals_reference(shape, dtype, head_dim, causal):
    b, h, h_kv, t_q, t_k = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, h, t_q, head_dim, device="cuda", generator=g).to(dtype)
    k = torch.randn(b, h_kv, t_k, head_dim, device="cuda", generator=g).to(dtype)
    v = torch.randn(b, h_kv, t_k, head_dim, device="cuda", generator=g).to(dtype)
    out = flash_attention_triton(q, k, v, causal=causal)
    ref = naive_attention(q.float(), k.float(), v.float(), causal=causal).to(dtype)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, ref, **TOL[dtype])


@cuda
def test_bad_input_on_gpu():
    x = torch.randn(1, 2, 8, 64, device="cuda")
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        flash_attention_triton(x, x, x)
    y = torch.randn(1, 2, 8, 96, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="head_dim"):
        flash_attention_triton(y, y, y)


@cuda
def test_bench_rows_record_the_kernel_choice_and_cudnn():
    """The benchmark's rows on a GPU: the course kernel's autotuned block shape and grid, and cuDNN's attention
    either measured (and then equal to the course kernel's output) or refused with a note, never another backend."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from course_lib.attention.bench import attention_rows
    from course_lib.attention.triton_flash import last_config

    rows = {r["backend"]: r for r in attention_rows(seq_lens=(512,), head_dims=(64,), target_s=0.01,
                                                     backends=("sdpa cudnn", "course triton"))}
    course = rows["course triton"]
    assert course["tflops"] > 0 and course["spread"] >= 0 and course["config"] == last_config()
    assert course["programs"] == -(-512 // course["config"]["BLOCK_M"]) * course["batch"] * course["heads"]
    if rows["sdpa cudnn"]["note"]:
        assert rows["sdpa cudnn"]["ms"] is None
        return
    g = torch.Generator(device="cuda").manual_seed(3)
    q, k, v = (torch.randn(2, 8, 512, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(flash_attention_triton(q, k, v, causal=True), ref, **TOL[torch.bfloat16])


@cuda
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_backward_equals_float32_attention(shape, dtype, head_dim, causal):
    """The training kernels' output and gradients against float32 attention, with the error of naive attention
    computed in the 16-bit dtype itself as the yardstick: the course's may be at most twice it, plus a floor."""
    from course_lib.attention.triton_train import flash_attention_train

    b, h, h_kv, t_q, t_k = shape
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(b, h, t_q, head_dim, device="cuda", generator=g).to(dtype)
    k, v = (torch.randn(b, h_kv, t_k, head_dim, device="cuda", generator=g).to(dtype) for _ in range(2))
    do = torch.randn(b, h, t_q, head_dim, device="cuda", generator=g).to(dtype)

    def grads(fn, cast):
        xs = [cast(t).requires_grad_() for t in (q, k, v)]
        out = fn(*xs)
        out.backward(cast(do))
        return [out.detach().float()] + [x.grad.float() for x in xs]

    mine = grads(lambda *x: flash_attention_train(*x, causal=causal), lambda t: t.clone())
    exact = grads(lambda *x: naive_attention(*x, causal=causal).nan_to_num(), lambda t: t.float())
    sixteen = grads(lambda *x: naive_attention(*x, causal=causal, dtype=None), lambda t: t.clone())  # 16-bit math
    for name, a, e, s in zip(("out", "dq", "dk", "dv"), mine, exact, sixteen):
        assert not a.isnan().any(), name
        scale = e.abs().max().clamp_min(1e-6)
        assert (a - e).abs().max() / scale <= 2 * (s - e).abs().max() / scale + 4e-3, name


@cuda
def test_training_with_the_triton_kernels_follows_sdpa():
    """The bundled model trained 10 steps under bf16 autocast with the course's Triton attention and with SDPA's,
    from the same weights on the same batches: the loss curves agree to bf16 rounding."""
    from course_lib.attention.training import compare_training

    run = compare_training(steps=10, batch=8, seq_len=256, device="cuda")
    assert run["attention"] == "triton"
    assert run["max_rel_diff"] < 2e-2, run


def _base2_lse(q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    """Each query row's logsumexp of its scaled scores in base 2, in float32 (bottom-right causal, GQA); +inf for a
    row that sees no key, as the kernels store it."""
    t_q, t_k = q.shape[2], k.shape[2]
    scores = q.float() @ k.float().repeat_interleave(q.shape[1] // k.shape[1], 1).transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        i = torch.arange(t_q, device=q.device)[:, None] + (t_k - t_q)
        scores = scores.masked_fill(torch.arange(t_k, device=q.device)[None, :] > i, float("-inf"))
    lse = torch.logsumexp(scores, -1) * 1.4426950408889634
    return torch.where(lse.isneginf(), torch.full_like(lse, float("inf")), lse)


hopper = pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9),
                            reason="needs a Hopper GPU (TMA)")


@hopper
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_hopper_kernel_equals_reference(shape, dtype, head_dim, causal):
    """The TMA kernel at its chosen blocks and with each switch (scores ahead, persistent grid): the same attention,
    and the same base-2 logsumexp per row (+inf where a row sees no key)."""
    from course_lib.attention.triton_hopper import CONFIGS, flash_attention_hopper

    b, h, h_kv, t_q, t_k = shape
    g = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(b, h, t_q, head_dim, device="cuda", generator=g).to(dtype)
    k, v = (torch.randn(b, h_kv, t_k, head_dim, device="cuda", generator=g).to(dtype) for _ in range(2))
    ref = naive_attention(q.float(), k.float(), v.float(), causal=causal).to(dtype)
    lse_ref = _base2_lse(q, k, causal)
    base = CONFIGS[head_dim, causal]
    for cfg in (base, base._replace(ahead=True), base._replace(persistent=True)):
        out, lse = flash_attention_hopper(q, k, v, causal=causal, lse=True, config=cfg)
        assert not out.isnan().any(), cfg
        torch.testing.assert_close(out, ref, **TOL[dtype])
        torch.testing.assert_close(lse, lse_ref, rtol=1e-3, atol=2e-2 if dtype == torch.bfloat16 else 2e-3)


@hopper
def test_hopper_kernel_takes_transposed_inputs():
    """transformers hands attention (B, H, T, d) views of (B, T, H, d) tensors: the descriptors take their strides."""
    from course_lib.attention.triton_hopper import flash_attention_hopper

    g = torch.Generator(device="cuda").manual_seed(4)
    q, k, v = (torch.randn(2, 300, 4, 64, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
               for _ in range(3))
    ref = naive_attention(q.float(), k.float(), v.float(), causal=True).to(torch.bfloat16)
    torch.testing.assert_close(flash_attention_hopper(q, k, v, causal=True), ref, **TOL[torch.bfloat16])


@cuda
@pytest.mark.parametrize("shape", [(2, 8, 2, 1000, 1000), (1, 4, 4, 300, 77), (2, 4, 2, 1, 513)])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_training_forward_off_hopper(monkeypatch, shape, head_dim):
    """On GPUs without TMA (A100, L4: Colab) the training forward is chapter 10's kernel with its logsumexp store:
    forced here on any GPU, its output, lse and the gradients built on them equal float32 attention's."""
    import course_lib.attention.triton_train as tt

    monkeypatch.setattr(tt, "is_hopper", lambda device=None: False)
    b, h, h_kv, t_q, t_k = shape
    g = torch.Generator(device="cuda").manual_seed(5)
    q = torch.randn(b, h, t_q, head_dim, device="cuda", generator=g).to(torch.bfloat16)
    k, v = (torch.randn(b, h_kv, t_k, head_dim, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2))
    out, lse = tt.flash_forward_lse(q, k, v, causal=True)
    want = _base2_lse(q, k, True)
    empty = want.isinf()
    assert torch.equal(lse.isinf(), empty)
    torch.testing.assert_close(lse[~empty], want[~empty], rtol=1e-3, atol=2e-2)
    ref = naive_attention(q.float(), k.float(), v.float(), causal=True).nan_to_num()
    torch.testing.assert_close(out.float(), ref, **TOL[torch.bfloat16])
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    tt.flash_attention_train(qs, ks, vs, causal=True).float().sum().backward()
    qr, kr, vr = (t.float().requires_grad_() for t in (q, k, v))
    naive_attention(qr, kr, vr, causal=True).nan_to_num().sum().backward()
    for mine, exact in ((qs, qr), (ks, kr), (vs, vr)):
        err = (mine.grad.float() - exact.grad).abs().max() / exact.grad.abs().max().clamp_min(1e-6)
        assert err < 3e-2
