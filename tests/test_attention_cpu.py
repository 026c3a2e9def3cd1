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


def _interpret(script: str) -> str:
    """Run `script` in a fresh Python under Triton's interpreter (TRITON_INTERPRET=1 must be set before Triton is
    imported) and return its last printed line; the test fails with the script's traceback if it raises."""
    import os
    import subprocess
    import sys
    import textwrap

    pytest.importorskip("triton", reason="Triton has wheels for Linux x86_64 only")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    # NumPy >= 2.4 refuses int() of a shape-(1,) array, which Triton 3.6's interpreter does for loop bounds;
    # older NumPy only warns, so the warning is made an error here: the test fails on every NumPy without the fix.
    numpy_24 = ["-W", "error:Conversion of an array with ndim:DeprecationWarning"]
    done = subprocess.run([sys.executable, *numpy_24, "-c", textwrap.dedent(script)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_triton_kernel_under_the_interpreter():
    """Triton's interpreter (TRITON_INTERPRET=1) runs the course kernel on CPU: same answers as naive attention."""
    worst = _interpret("""
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
    assert float(worst) < 3e-3  # fp16 inputs, fp32 accumulation


def test_hopper_kernel_under_the_interpreter():
    """The TMA kernel under Triton's interpreter: every switch (scores ahead, persistent grid) gives naive
    attention's output and the base-2 logsumexp per row, with +inf for rows that see no key."""
    last = _interpret("""
        import math
        import torch
        from course_lib.attention.reference import naive_attention
        from course_lib.attention.triton_hopper import flash_attention_hopper
        worst, worst_lse = 0.0, 0.0
        for h, h_kv, t_q, t_k, causal, persistent, ahead in (
                (2, 1, 70, 70, True, False, True), (4, 2, 5, 90, True, True, False), (2, 2, 90, 33, True, False, True),
                (2, 2, 50, 100, False, True, True), (2, 1, 7, 9, False, False, True)):
            g = torch.Generator().manual_seed(t_q)
            q = torch.randn(1, h, t_q, 64, generator=g).half()
            k, v = (torch.randn(1, h_kv, t_k, 64, generator=g).half() for _ in range(2))
            out, lse = flash_attention_hopper(q, k, v, causal=causal, lse=True,
                                              config=(32, 16, 4, 1, False, persistent, ahead))
            ref = naive_attention(q.float(), k.float(), v.float(), causal=causal)
            assert not out.isnan().any()
            worst = max(worst, (out.float() - ref).abs().max().item())
            s = q.float() @ k.float().repeat_interleave(h // h_kv, 1).transpose(-1, -2) / 8
            if causal:
                i = torch.arange(t_q)[:, None] + t_k - t_q
                s = s.masked_fill(torch.arange(t_k)[None, :] > i, float("-inf"))
            want = torch.logsumexp(s, -1) / math.log(2)
            empty = want.isneginf()
            assert torch.equal(lse.isinf(), empty) and (lse[empty] > 0).all()
            worst_lse = max(worst_lse, (lse[~empty] - want[~empty]).abs().max().item())
        print(worst, worst_lse)
    """)
    worst, worst_lse = map(float, last.split())
    assert worst < 3e-3 and worst_lse < 1e-3


def test_hopper_kernel_errors():
    from course_lib.attention.triton_hopper import flash_attention_hopper

    x = torch.randn(1, 2, 8, 64, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="CUDA"):
        flash_attention_hopper(x, x, x)


def test_naive_attention_in_16_bit():
    q, k, v = (rand(1, 2, 40, 16, seed=s).to(torch.bfloat16) for s in (1, 2, 3))
    out = naive_attention(q, k, v, dtype=None)
    assert out.dtype == torch.bfloat16
    ref = naive_attention(q, k, v)
    assert 0 < (out.float() - ref.float()).abs().max() < 0.05  # bf16 scores: close, not identical


# --- HBM traffic model (seed 003 §6.8 Q3 against the FlashAttention paper) --------------------------

def test_naive_traffic_is_4nd_plus_4n2():
    from course_lib.attention.traffic import naive_traffic, paper_orders

    for n, d in ((1, 1), (100, 64), (4096, 128)):
        t = naive_traffic(n, d)
        assert t["total"] == 4 * n * d + 4 * n * n
        assert t["total"] == 4 * paper_orders(n, d, 1000)["naive"]  # Θ(nd + n²) with constant 4


def test_tiled_traffic_counts_kv_rereads():
    from course_lib.attention.traffic import keys_per_query_block, tiled_traffic

    n, d = 1000, 64
    for bq in (16, 64, 128, 1000, 4096):
        blocks = -(-n // bq)
        assert tiled_traffic(n, d, bq, 64)["total"] == 2 * n * d + 2 * n * d * blocks
    for n, bq, bk in ((512, 64, 64), (300, 64, 32), (100, 7, 13), (64, 128, 64)):  # causal: the tiles tile_grid computes
        grid = tile_grid(n, n, bq, bk)
        loaded = [min(n, int((row > 0).sum()) * bk) for row in grid]
        assert keys_per_query_block(n, bq, bk, causal=True) == loaded
    causal, full = tiled_traffic(4096, 64, 128, 64, causal=True), tiled_traffic(4096, 64, 128, 64)
    assert causal["K, V read"] / full["K, V read"] == 33 / 64  # query block i of 32 reads i + 1 key blocks of its 32


def test_tiled_traffic_matches_the_paper_bound():
    """With the paper's blocks for SRAM of M elements, tiled traffic / (n²d²/M) tends to a constant (8 for
    FA2's order, 12(1 + 4/3d) for FA1's), and doubling n quadruples it: O(n²), not the seed's O(nd)."""
    from course_lib.attention.traffic import fa1_traffic, paper_blocks, paper_orders, tiled_traffic

    for d, m in ((64, 16384), (128, 32768), (64, 8192)):
        bq, bk = paper_blocks(m, d)
        assert bq == min(m // (4 * d), d) and bk == m // (4 * d)
        for n in (1 << 14, 1 << 16):
            bound = paper_orders(n, d, m)["tiled"]
            assert 8 <= tiled_traffic(n, d, bq, bk)["total"] / bound < 8 * 1.01
            assert 12 <= fa1_traffic(n, d, bq, bk)["total"] / bound < 12 * (1 + 4 / (3 * d)) * 1.01
        assert tiled_traffic(1 << 15, d, bq, bk)["total"] / tiled_traffic(1 << 14, d, bq, bk)["total"] > 3.9
    with pytest.raises(ValueError, match="positive"):
        tiled_traffic(0, 64, 64, 64)
    with pytest.raises(ValueError, match="M >= d"):
        paper_blocks(32, 64)


# --- the benchmark's code paths and its report, on CPU ---------------------------------------------

def test_attention_bench_smoke_on_cpu(tmp_path):
    import json

    from course_lib.attention.bench import BACKENDS, record_attention

    summary = record_attention(smoke=True, directory=tmp_path)
    data = json.loads((tmp_path / "cpu_attention_smoke.json").read_text())
    rows = data["rows"]
    assert {(r["causal"], r["backend"]) for r in rows} == {(c, b) for c in (True, False) for b in BACKENDS}
    ran = [r for r in rows if r["backend"] in ("naive", "naive bf16", "sdpa math")]
    assert all(r["ms"] > 0 and r["spread"] >= 0 and r["tflops"] > 0 and r["note"] == "" for r in ran)
    refused = [r for r in rows if r["backend"] in ("sdpa cudnn", "course triton")]  # no CUDA: a note, no number
    assert all(r["ms"] is None and r["note"] for r in refused)
    assert summary["tune"] in ("quick", "full") and len(summary["floor"]) == len(BACKENDS)
    assert "--smoke" in data["command"]


def _recording(rows, summary=None):
    from course_lib.core.results import Recorded

    return Recorded(name="test_attention", description="", command="", date="", device="", versions={}, rows=rows,
                    summary=summary or {"matmul_tflops": 800.0, "copy_gbps": 4000.0, "spec_tflops": 1000.0})


def test_report_standing_and_shares():
    from course_lib.attention import report

    rows = []
    for t, (a, b, s) in {4096: (400, 300, 0.01), 8192: (410, 400, 0.02), 16384: (300, 400, 0.01)}.items():
        for backend, tf in (("course triton", a), ("sdpa cudnn", b)):
            rows.append({"head_dim": 128, "seq_len": t, "batch": 1, "heads": 16, "causal": True, "backend": backend,
                         "ms": 1.0, "tflops": tf, "spread": s, "peak_mib": 64.0, "note": ""})
    rec = _recording(rows)
    r = report.ratios(rec, "course triton", "sdpa cudnn", causal=True, head_dim=128, lengths=None)
    assert [x["verdict"] for x in r] == ["faster", "tie", "slower"]  # 1.33 (±0.02), 1.025 (±0.04), 0.75
    sentence = report.standing(rec, "course triton", "sdpa cudnn", causal=True, head_dim=128, lengths=(4096,))
    assert "1.33-1.33x" in sentence and "faster at every length" in sentence
    assert "not in this recording" in report.standing(rec, "course triton", "sdpa flash", causal=True, head_dim=128,
                                                      lengths=None)
    shares = report.share_table(rec, causal=True, head_dim=128, lengths=(4096,))
    assert shares[0]["% of spec"] == pytest.approx(40.0) and shares[0]["% of matmul"] == pytest.approx(50.0)
    assert report.verdict(1.5, None) == "?"


def test_report_fits_and_floors():
    from course_lib.attention import report

    assert report.fit_line([1, 2, 3], [5, 7, 9]) == pytest.approx((3.0, 2.0))
    assert report.useful_fraction(512, 128, 64) == pytest.approx(0.8)  # 20 tiles of 128x64 for 512²/2 scores
    assert report.useful_fraction(16384, 128, 64) > 0.99
    rows = [{"head_dim": 64, "seq_len": t, "batch": 16384 // t, "heads": 32, "causal": False, "backend": "course triton",
             "ms": 0.1 + 0.2 * t / 1024, "tflops": 1.0, "note": ""} for t in (512, 1024, 2048, 4096)]
    rows[0].update(config={"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}, programs=4096)
    rec = _recording(rows)
    fit = report.fixed_cost(rec, "course triton", head_dim=64, causal=False)
    assert fit["intercept ms"] == pytest.approx(0.1) and fit["intercept share at T"] == pytest.approx(0.5)
    short = report.short_sequence(rec, head_dim=64, causal=False)
    assert short["FLOP per byte"] == pytest.approx(256.0)  # T/2 without a mask, T/4 with one
    assert short["bytes floor us"] == pytest.approx(4 * 16384 * 2048 * 2 / 4000e9 * 1e6)
    assert short["programs"] == 4096 and short["key blocks per program"] == 8
    naive = [{"head_dim": 128, "seq_len": t, "batch": 1, "heads": 16, "backend": "naive", "peak_mib": 12 * 16 * t * t / 2**20}
             for t in (2048, 4096)]
    longest = report.naive_longest(_recording(naive), memory_gib=96, heads=32)
    assert longest["bytes per score element"] == pytest.approx(12) and longest["longest T"] == 16384


def test_backward_kernels_under_the_interpreter():
    """The training kernels (forward with the logsumexp, dK/dV and dQ) under Triton's interpreter: outputs, the
    logsumexp and all three gradients equal float32 attention's on ragged lengths, GQA, bottom-right causal
    alignment, rows that see no key (zero output and gradients, never NaN), head dims 64 and 128."""
    worst = _interpret("""
        import math, torch
        from course_lib.attention.reference import naive_attention
        from course_lib.attention.triton_train import flash_attention_train, flash_forward_lse
        worst = 0.0
        for h, h_kv, t_q, t_k, causal, d in ((2, 1, 40, 40, True, 64), (4, 2, 5, 70, True, 64),
                                             (2, 2, 33, 33, False, 64), (2, 2, 10, 4, True, 64),
                                             (2, 1, 48, 48, True, 128), (2, 2, 17, 50, False, 64)):
            g = torch.Generator().manual_seed(7 * t_q + t_k)
            q = torch.randn(1, h, t_q, d, generator=g).half()
            k, v = (torch.randn(1, h_kv, t_k, d, generator=g).half() for _ in range(2))
            do = torch.randn(1, h, t_q, d, generator=g).half()
            mine = [t.clone().requires_grad_() for t in (q, k, v)]
            out = flash_attention_train(*mine, causal=causal)
            out.backward(do)
            ref_in = [t.float().requires_grad_() for t in (q, k, v)]
            ref = naive_attention(*ref_in, causal=causal)
            ref.backward(do.float())
            assert not any(t.isnan().any() for t in (out, *(m.grad for m in mine)))
            errs = [(out.float() - ref).abs().max() / ref.abs().max()]
            errs += [(m.grad.float() - r.grad).abs().max() / r.grad.abs().max() for m, r in zip(mine, ref_in)]
            s = q.float() @ k.float().repeat_interleave(h // h_kv, 1).transpose(-1, -2) / math.sqrt(d)
            if causal:
                s = s.masked_fill(torch.arange(t_k) > torch.arange(t_q)[:, None] + t_k - t_q, float("-inf"))
            lse, want = flash_forward_lse(q, k, v, causal)[1] * math.log(2), torch.logsumexp(s, -1)
            seen = torch.isfinite(want)
            assert (lse[~seen] == float("inf")).all() and (t_q <= t_k or not seen.all())
            errs.append((lse[seen] - want[seen]).abs().max())
            worst = max(worst, max(float(e) for e in errs))
        print(worst)
    """)
    assert float(worst) < 3e-3  # fp16 inputs and gradients, fp32 accumulation


@pytest.mark.parametrize("h, h_kv, t_q, t_k, causal", [(4, 2, 37, 53, True), (2, 1, 40, 9, True),
                                                        (2, 2, 30, 30, False), (4, 1, 65, 65, True)])
def test_tiled_backward_equals_autograd(h, h_kv, t_q, t_k, causal):
    """The backward pass in PyTorch, tile by tile from the logsumexp, equals autograd through naive attention:
    GQA (gradients summed over the query heads of a KV head), bottom-right causal, rows that see nothing."""
    from course_lib.attention.tiled import flash_backward_tiled

    g = torch.Generator().manual_seed(t_q)
    q = torch.randn(2, h, t_q, 32, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, h_kv, t_k, 32, generator=g, dtype=torch.float64) for _ in range(2))
    do = torch.randn(2, h, t_q, 32, generator=g, dtype=torch.float64)
    out, lse = flash_attention_tiled(q, k, v, causal=causal, block_q=16, block_k=8, return_lse=True)
    grads = flash_backward_tiled(do, q, k, v, out, lse, causal=causal, block_q=16, block_k=8)
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    naive_attention(*xs, causal=causal, dtype=torch.float64).backward(do)
    for mine, x in zip(grads, xs):
        assert mine.shape == x.shape and torch.allclose(mine, x.grad, atol=1e-5, rtol=1e-5)
    scores = (q @ k.repeat_interleave(h // h_kv, 1).transpose(-1, -2)) / 32 ** 0.5
    if causal:
        scores = scores.masked_fill(torch.arange(t_k) > torch.arange(t_q)[:, None] + t_k - t_q, float("-inf"))
    want = torch.logsumexp(scores, -1)
    seen = torch.isfinite(want)
    assert torch.allclose(lse[seen].double(), want[seen], atol=1e-5) and (lse[~seen] == float("inf")).all()
    assert (t_q > t_k) == bool((~seen).any())   # only a longer query than key stream has empty rows
    if (~seen).any():
        assert (grads[0][~seen] == 0).all()


# --- chapter 10's Hopper sweep and training benchmark, read from hand-made recordings ------------------------

def _rec(rows, **summary):
    from course_lib.core.results import Recorded

    return Recorded("x", "", "", "2026-12-04", "GPU", {}, rows, summary)


def test_hopper_steps_and_ahead_table():
    from course_lib.attention import report

    pt = {"kind": "step", "head_dim": 128, "causal": True, "seq_len": 4096}
    rows = [{**pt, "step": "chapter 10 kernel, autotuned", "config": [128, 64, 8, 3], "tflops": 300.0},
            {**pt, "step": "TMA + FMA, grid", "config": [64, 64, 4, 3], "tflops": 330.0},
            {**pt, "step": "TMA + FMA, grid", "config": [128, 64, 4, 2], "tflops": 390.0},
            {**pt, "step": "TMA + FMA, grid", "config": [64, 128, 4, 4], "error": "OutOfResources: shared"},
            {**pt, "step": "TMA + FMA + warp spec", "config": [64, 64, 4, 3, True, False], "error": "RuntimeError: x"},
            {**pt, "causal": False, "step": "chapter 10 kernel, autotuned", "tflops": 1.0}]
    steps = {r["step"]: r for r in report.hopper_steps(_rec(rows), head_dim=128, causal=True)}
    assert list(steps) == ["chapter 10 kernel, autotuned", "TMA + FMA, grid", "TMA + FMA + warp spec"]
    grid = steps["TMA + FMA, grid"]
    assert grid["TFLOP/s"] == 390.0 and grid["vs chapter 10"] == 1.3 and grid["tried"] == 3 and grid["failed"] == 1
    assert grid["best config"] == "128x64, 4 warps, 2 stages"
    ws = steps["TMA + FMA + warp spec"]
    assert ws["TFLOP/s"] is None and ws["failed"] == 1 and ws["error"].startswith("RuntimeError")
    rows = [{"head_dim": 64, "causal": True, "seq_len": 4096, "variant": v, "tflops": t}
            for v, t in (("cudnn", 400.0), ("base", 300.0), ("ahead", 240.0), ("ahead 64x64 w4 s2", 270.0))]
    (a,) = report.ahead_table(_rec(rows))
    assert a["ahead / base"] == 0.8 and a["best ahead / base"] == 0.9 and a["cudnn"] == 400.0


def test_train_table_views_and_loss_agreement():
    from course_lib.attention import report

    def row(t, b, fwd, bwd, kv=16):
        return {"head_dim": 128, "seq_len": t, "heads": 16, "kv_heads": kv, "causal": True, "backend": b,
                "fwd_tflops": fwd, "bwd_tflops": bwd, "fwd_spread": 0.01, "bwd_spread": 0.02, "fwd_ms": 1.0,
                "bwd_ms": 2.0}
    rows = [row(4096, "sdpa flash", 280.0, 240.0), row(4096, "sdpa cudnn", 530.0, 400.0),
            row(4096, "course", 430.0, 300.0), row(4096, "course", 1.0, 1.0, kv=4)]
    (t,) = report.train_table(_rec(rows), head_dim=128, causal=True)
    assert t["bwd course / flash"] == 1.25 and t["bwd course / cudnn"] == 0.75 and t["fwd course"] == 430.0
    view = report.train_view(_rec(rows), "bwd")
    assert len(view.rows) == 3 and all(r["spread"] == 0.02 for r in view.rows)
    (r,) = report.ratios(view, "course", "sdpa flash", causal=True, head_dim=128, lengths=(4096,))
    assert r["verdict"] == "faster" and abs(r["spread"] - 0.04) < 1e-12
    (g,) = report.train_view(_rec(rows), "fwd", kv_group=4).rows
    assert g["tflops"] == 1.0
    run = _rec([{"step": 0, "sdpa": 3.0, "course": 3.003}, {"step": 1, "sdpa": 2.0, "course": 2.0}],
               ms_per_step={"sdpa": 10.0, "course": 11.0})
    agree = report.loss_agreement(run)
    assert abs(agree["max rel diff"] - 1e-3) < 1e-9 and agree["steps"] == 2 and agree["ms/step course"] == 11.0


def test_attention_train_bench_smoke_on_cpu(tmp_path):
    """The training benchmark's code paths on a CPU: the course rows refused with a note that says why, SDPA's
    measured or refused, GQA points present, and the file written where asked."""
    from course_lib.attention.bench_train import record_attention_train
    from course_lib.core.results import load_result

    path = record_attention_train(smoke=True, directory=tmp_path)
    rec = load_result(path.stem, directory=tmp_path)
    course = [r for r in rec.rows if r["backend"] == "course"]
    assert course and all("CUDA" in r["note"] for r in course)
    assert {r["heads"] // r["kv_heads"] for r in rec.rows} == {1, 4}
    timed = [r for r in rec.rows if not r["note"]]
    assert timed and all(r["fwd_tflops"] > 0 and r["bwd_tflops"] > 0 and r["bwd_spread"] >= 0 for r in timed)


def test_tma_ready_checks_alignment():
    """TMA describes a tensor only with a contiguous last dimension and 16-byte aligned base and strides; the training
    forward falls back to chapter 10's kernel otherwise, and the Hopper kernel's own error says to call .contiguous()."""
    from course_lib.attention.triton_hopper import _descriptor, tma_ready

    x = torch.zeros(2, 4, 32, 64, dtype=torch.float16)
    assert tma_ready(x) and tma_ready(x.transpose(1, 2).contiguous().transpose(1, 2))  # (B, T, H, d) viewed as (B, H, T, d)
    assert not tma_ready(x[..., 1:])              # base off by 2 bytes, last dimension 63
    assert not tma_ready(x.transpose(-1, -2))     # last dimension strided
    odd = torch.zeros(2, 4, 32, 68, dtype=torch.float16)[..., :60]  # rows of 136 bytes: 8-byte aligned only
    assert not tma_ready(odd)
    with pytest.raises(ValueError, match="contiguous"):
        _descriptor(odd, 16, 60)
