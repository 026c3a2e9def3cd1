"""Training with the course's attention (course_lib.attention.training): the PyTorch path's gradients equal
autograd's, transformers' models run it through the attention interface, a short training run follows SDPA's loss
curve, and what it does not support is refused with a clear error."""

from __future__ import annotations

import pytest
import torch

from course_lib.attention import training
from course_lib.attention.reference import naive_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tiled_autograd_function_equals_naive_attention():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 40, 16, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 40, 16, generator=g, dtype=torch.float64) for _ in range(2))
    do = torch.randn(2, 4, 40, 16, generator=g, dtype=torch.float64)
    mine = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    out = training.course_attention(*mine, causal=True)      # a CPU tensor: the PyTorch path
    out.backward(do)
    naive_attention(*ref, causal=True, dtype=torch.float64).backward(do)
    assert not training.triton_path(q)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


def test_a_short_training_run_follows_sdpa(monkeypatch):
    calls = []
    real = training.course_attention
    monkeypatch.setattr(training, "course_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = training.compare_training(steps=3, batch=2, seq_len=64, device="cpu")
    assert len(calls) == 3 * 8   # every step, every layer of the bundled model went through the course's attention
    assert run["attention"] == "pytorch (tiled)" and run["device"] == "cpu"
    assert run["max_rel_diff"] < 1e-5 and len(run["course"]) == 3
    assert run["sdpa"] != run["course"]   # two implementations, not one model twice (float32 rounding differs)


def test_what_it_does_not_support_is_refused():
    module = torch.nn.Module()
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="no dropout"):
        training._course_attention_forward(module, q, q, q, None, dropout=0.1)
    with pytest.raises(ValueError, match="causal self-attention only"):
        training._course_attention_forward(module, q, q, q, None, is_causal=False)
    padded = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
    padded[..., :2] = False   # two padding tokens at the start
    with pytest.raises(ValueError, match="no padding mask"):
        training._course_attention_forward(module, q, q, q, padded)
    causal = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()   # the causal mask itself is accepted
    out, weights = training._course_attention_forward(module, q, q, q, causal)
    assert out.shape == (1, 8, 2, 16) and weights is None
    with pytest.raises(ValueError, match="must be positive"):
        training.compare_training(steps=0)


def test_course_attention_follows_autocast():
    """Under autocast, q, k, v reach the kernels in autocast's dtype, as SDPA's do (a Llama layer's rotary embedding
    hands over float32 q and k), and the gradients flow back to the float32 inputs."""
    from course_lib.attention.training import course_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g, requires_grad=True) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = course_attention(q, k, v)
    assert out.dtype == torch.bfloat16 and course_attention.last_path == "pytorch (tiled)"
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32 and q.grad.abs().sum() > 0
    ref = course_attention(q.detach(), k.detach(), v.detach())
    assert ref.dtype == torch.float32 and (out.float() - ref).abs().max() < 0.05
