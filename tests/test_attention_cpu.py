"""Chapter 10 on CPU: online softmax equals torch.softmax, tiled FlashAttention equals naive attention."""

import random

import pytest
import torch

from course_lib.attention.online_softmax import (merge_stats, online_stats, softmax_blocked, softmax_online,
                                                 softmax_two_pass)
from course_lib.attention.reference import naive_attention, naive_memory_bytes, visible
from course_lib.attention.tiled import flash_attention_tiled, tile_grid


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("fn", [softmax_two_pass, softmax_online, lambda x: softmax_blocked(x, 7)])
def test_softmaxes_equal_torch(fn):
    x = rand(3, 5, 50, scale=20.0)  # large values: the max subtraction matters
    x[0, 0, 3] = 1e4
    torch.testing.assert_close(fn(x), torch.softmax(x, -1), rtol=1e-5, atol=1e-7)


def test_online_stats_and_merge():
    x = rand(4, 33, seed=1, scale=5.0)
    m, l = online_stats(x)
    torch.testing.assert_close(m, x.amax(-1))
    torch.testing.assert_close(l, torch.exp(x - x.amax(-1, keepdim=True)).sum(-1))
    merged = merge_stats(online_stats(x[:, :10]), online_stats(x[:, 10:]))
    torch.testing.assert_close(merged[0], m)
    torch.testing.assert_close(merged[1], l)


def reference_sdpa(q, k, v, causal):
    """An independent check: PyTorch's own attention with an explicit bottom-right mask."""
    g = q.shape[1] // k.shape[1]
    mask = visible(q.shape[2], k.shape[2], causal)
    out = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                                           attn_mask=mask)
    return torch.where(mask.any(-1)[:, None], out, 0.0)


SHAPES = [(1, 4, 4, 64, 64, 16), (2, 4, 2, 37, 37, 32), (1, 8, 1, 5, 71, 16), (2, 4, 4, 100, 1, 8),
          (1, 2, 2, 90, 60, 16), (1, 6, 3, 1, 129, 64)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [True, False])
def test_tiled_equals_naive_and_sdpa(shape, causal):
    b, h, h_kv, t_q, t_k, d = shape
    q, k, v = rand(b, h, t_q, d, seed=1), rand(b, h_kv, t_k, d, seed=2), rand(b, h_kv, t_k, d, seed=3)
    ref = naive_attention(q, k, v, causal=causal)
    for bq, bk in ((16, 16), (32, 8), (7, 13)):
        torch.testing.assert_close(flash_attention_tiled(q, k, v, causal=causal, block_q=bq, block_k=bk), ref,
                                   rtol=1e-5, atol=1e-5)
    if t_q <= t_k or not causal:  # SDPA gives NaN for rows with no visible key; compare only where defined
        torch.testing.assert_close(ref, reference_sdpa(q, k, v, causal), rtol=1e-5, atol=1e-5)


def test_random_shapes():
    rng = random.Random(0)
    for trial in range(10):
        h_kv = rng.choice([1, 2, 4])
        h, t_q, t_k, d = h_kv * rng.choice([1, 2, 4]), rng.randint(1, 90), rng.randint(1, 90), rng.choice([8, 16, 32])
        q, k, v = rand(1, h, t_q, d, seed=trial), rand(1, h_kv, t_k, d, seed=trial + 50), rand(1, h_kv, t_k, d, seed=trial + 99)
        causal = bool(trial % 2)
        torch.testing.assert_close(flash_attention_tiled(q, k, v, causal=causal, block_q=16, block_k=16),
                                   naive_attention(q, k, v, causal=causal), rtol=1e-5, atol=1e-5)


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = rand(1, 2, 10, 8), rand(1, 2, 4, 8, seed=1), rand(1, 2, 4, 8, seed=2)
    out = flash_attention_tiled(q, k, v, causal=True, block_q=4, block_k=4)
    assert not torch.isnan(out).any()
    assert torch.equal(out[:, :, :6], torch.zeros(1, 2, 6, 8))  # queries 0..5 sit before the first key
    assert out[:, :, 6:].abs().sum() > 0


def test_tile_grid_and_memory():
    g = tile_grid(128, 128, 64, 64)
    assert g.tolist() == [[2, 0], [1, 2]]
    assert tile_grid(128, 128, 64, 64, causal=False).tolist() == [[1, 1], [1, 1]]
    assert naive_memory_bytes(1, 32, 2048)["scores"] == 32 * 2048 * 2048 * 4 == 512 * 2**20


def test_errors():
    q = rand(1, 3, 4, 8)
    with pytest.raises(ValueError, match="multiple"):
        flash_attention_tiled(q, rand(1, 2, 4, 8), rand(1, 2, 4, 8))
    with pytest.raises(ValueError, match="4-D"):
        naive_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="same shape"):
        naive_attention(q, rand(1, 3, 4, 8), rand(1, 3, 5, 8))
    with pytest.raises(ValueError, match="positive"):
        flash_attention_tiled(q, q, q, block_q=0)
    with pytest.raises(ValueError):
        softmax_blocked(q, 0)


def test_triton_kernel_refuses_cpu_tensors():
    from course_lib.attention.triton_flash import flash_attention_triton

    q = rand(1, 2, 8, 64)
    with pytest.raises(RuntimeError, match="flash_attention_tiled"):
        flash_attention_triton(q, q, q)


def test_seed_pseudocode_stages():
    from course_lib.attention.seed import FIXES, seed_flash_attention, stage_rows

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(70, 16, generator=g) for _ in range(3))
    rows = stage_rows(q, k, v, block_size=16)
    assert len(rows) == len(FIXES) + 1
    assert rows[0]["result"].startswith(("TypeError", "RuntimeError"))  # as printed it does not run
    assert rows[-1]["result"].startswith("max |error|") and float(rows[-1]["result"].split()[-1]) < 1e-5
    assert float(rows[-2]["result"].split()[-1]) > 1e-2  # the ragged tail alone still breaks it
    with pytest.raises(ValueError, match="Unknown fixes"):
        seed_flash_attention(q, k, v, 16, ("typo",))


def test_attention_bench_needs_cuda(capsys):
    from course_lib.bench import main

    if not torch.cuda.is_available():
        assert main(["attention"]) == 2
        assert "CUDA" in capsys.readouterr().err


def test_triton_kernel_under_the_interpreter():
    """Triton's interpreter (TRITON_INTERPRET=1) runs the course kernel on CPU: same answers as naive attention."""
    import os
    import subprocess
    import sys
    import textwrap

    pytest.importorskip("triton", reason="Triton has wheels for Linux x86_64 only")
    script = textwrap.dedent("""
        import torch
        from course_lib.attention.reference import naive_attention
        from course_lib.attention.triton_flash import flash_attention_triton
        worst = 0.0
        for h, h_kv, t_q, t_k, causal in ((2, 1, 40, 40, True), (4, 2, 5, 70, True), (2, 2, 33, 33, False),
                                          (2, 2, 10, 4, True)):
            g = torch.Generator().manual_seed(t_q)
            q = torch.randn(1, h, t_q, 64, generator=g).half()
            k, v = (torch.randn(1, h_kv, t_k, 64, generator=g).half() for _ in range(2))
            out = flash_attention_triton(q, k, v, causal=causal)
            ref = naive_attention(q.float(), k.float(), v.float(), causal=causal)
            assert not out.isnan().any()
            worst = max(worst, (out.float() - ref).abs().max().item())
        print(worst)
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 3e-3  # fp16 inputs, fp32 accumulation
