"""The fused W4A16 kernels on a CUDA GPU: every path against de-quantize-then-matmul, at Llama-3-8B's decode
shapes and ragged batches, fp16 and bf16, under a CUDA graph, and W4A16Linear's choice of path."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from course_lib.kernels import w4a16 as W  # noqa: E402

SHAPES = ((4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096), (1024, 72))
TOL = {torch.float16: 4e-3, torch.bfloat16: 1.6e-2}  # relative to the output's largest entry


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def packed(k, n, group=128, seed=0):
    return W.random_packed(k, n, group, device="cuda", seed=seed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k,n", SHAPES)
def test_every_configuration_matches_the_reference(k, n, dtype):
    qw, s, qz = packed(k, n, seed=k + n)
    for m in (1, 3, 11, 16):
        x = torch.randn(m, k, device="cuda").to(dtype)
        ref = W.reference_matmul(x.float(), qw, s, qz, 128)
        base = W.default_config(m, n, k, 128)
        variants = [base, replace(base, split_k=1), replace(base, magic=False, half=False),
                    replace(base, fold=False), replace(base, acc32=True)]
        if m == 1:
            variants += [replace(base, half=False), replace(base, gemv=False), replace(base, gemv=False, dot=True,
                                                                                       block_k=128)]
            if dtype == torch.float16:  # the half2 kernel (inline PTX), fp16 and fp32 sums, one and many slices
                variants += [replace(base, h2=True), replace(base, h2=True, half=False),
                             replace(base, h2=True, block_k=128, split_k=1, num_warps=8),
                             replace(base, h2=True, acc32=True, block_n=512)]
        else:
            variants += [replace(base, dot=False, block_k=64)]
            if dtype == torch.float16 and m <= W.H2_MAX_TOKENS:  # the half2 kernel for a few tokens
                variants += [replace(base, dot=False, block_k=64, block_n=128, h2=True),
                             replace(base, dot=False, block_k=128, block_n=256, h2=True, half=False, num_warps=8)]
        for cfg in variants:
            y = W.launch(x, qw, s, qz, 128, cfg)
            assert rel_err(y, ref) < TOL[dtype], (m, cfg)
        if dtype == torch.float16:
            assert rel_err(W.w4a16_simple(x, qw, s, qz, 128), ref) < TOL[dtype]


def test_tuned_kernel_and_the_transposed_layout():
    k, n = 4096, 1024
    qw, s, qz = packed(k, n)
    for m in (1, 16):
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        ref = W.reference_matmul(x.float(), qw, s, qz, 128)
        cfg = W.tune(x, qw, s, qz, 128, reps=3)
        assert rel_err(W.w4a16_matmul(x, qw, s, qz, 128), ref) < TOL[torch.float16]
        nk = qw.t().contiguous().t()  # words stored (n, k/8): the same values, K contiguous
        assert rel_err(W.launch(x, nk, s, qz, 128, cfg), ref) < TOL[torch.float16]


def test_half2_kernel_on_an_odd_offset_and_large_activations():
    k, n = 4096, 1024
    qw, s, qz = packed(k, n, seed=5)
    big = torch.randn(1, k + 1, device="cuda", dtype=torch.float16)
    x = big[:, 1:]  # starts mid-word: the int32 view of x needs a copy
    cfg = W.KernelConfig(block_n=256, block_k=64, split_k=16, h2=True)
    assert rel_err(W.launch(x, qw, s, qz, 128, cfg), W.reference_matmul(x.float(), qw, s, qz, 128)) < 4e-3
    x = torch.randn(1, k, device="cuda", dtype=torch.float16) * 200  # 8 products of 15 x 200 fit fp16
    ref = W.reference_matmul(x.float(), qw, s, qz, 128)
    for half in (True, False):
        assert rel_err(W.launch(x, qw, s, qz, 128, replace(cfg, half=half)), ref) < 4e-3


def test_group_sizes_and_asymmetric_zeros():
    for group in (64, 128, 256, 2048):
        qw, s, qz = packed(2048, 256, group, seed=group)
        x = torch.randn(4, 2048, device="cuda", dtype=torch.float16)
        ref = W.reference_matmul(x.float(), qw, s, qz, group)
        assert rel_err(W.w4a16_matmul(x, qw, s, qz, group, autotune=False), ref) < TOL[torch.float16]


def test_kernel_inside_a_cuda_graph():
    qw, s, qz = packed(4096, 4096)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.float16)
    W.w4a16_matmul(x, qw, s, qz, 128)  # tuned before capture
    g = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        W.w4a16_matmul(x, qw, s, qz, 128)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(g):
        y = W.w4a16_matmul(x, qw, s, qz, 128)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    assert rel_err(y, W.reference_matmul(x.float(), qw, s, qz, 128)) < TOL[torch.float16]


def test_linear_uses_the_fused_kernel_for_decode_and_cublas_for_prefill():
    from course_lib.gptq.qlinear import QuantLinear

    k, n = 1024, 512
    layer = QuantLinear(k, n, bits=4, group_size=128, bias=True, device="cuda")
    qw, s, qz = packed(k, n)
    layer.qweight.copy_(qw)
    layer.scales.copy_(s)
    layer.qzeros.copy_(qz)
    layer.bias.normal_()
    fast = W.W4A16Linear.from_quant_linear(layer)
    for rows in (1, 7, 16, 17, 300):
        x = torch.randn(rows, k, device="cuda", dtype=torch.float16)
        ref = layer(x.float())
        assert fast.uses_fused(rows) == (rows <= W.FUSED_MAX_TOKENS)
        assert rel_err(fast(x), ref) < TOL[torch.float16]
