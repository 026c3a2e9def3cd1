"""The W4A16 kernels on a CPU: the PyTorch reference, the input checks, the path choice, and both Triton kernels
under Triton's interpreter (TRITON_INTERPRET=1) against de-quantize-then-matmul."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from course_lib.gptq.qlinear import QuantLinear, pack_rows, pack_zeros_v1
from course_lib.kernels import w4a16 as W


def test_reference_unpacks_gptq_packing_like_quantlinear():
    k, n, g = 256, 24, 64
    gen = torch.Generator().manual_seed(0)
    u = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (k // g, n), generator=gen)  # zero points of 0 borrow from the next field in v1
    s = (torch.rand(k // g, n, generator=gen) + 0.5).half()
    layer = QuantLinear(k, n, bits=4, group_size=g, bias=False)
    layer.qweight.copy_(pack_rows(u, 4))
    layer.qzeros.copy_(pack_zeros_v1(z, 4))
    layer.scales.copy_(s)
    assert torch.equal(W.unpack_int4(layer.qweight), u.to(torch.int32))
    assert torch.equal(W.unpack_zeros(layer.qzeros), z.to(torch.int32))
    w = W.dequantize(layer.qweight, layer.scales, layer.qzeros, g, torch.float32)
    assert torch.equal(w, layer.dequantized_weight().T)
    x = torch.randn(3, k, generator=gen)
    assert torch.allclose(W.reference_matmul(x, layer.qweight, s, layer.qzeros, g), layer(x), atol=1e-4)


def test_random_packed_is_in_range():
    qw, s, qz = W.random_packed(512, 64, 128, seed=3)
    u, z = W.unpack_int4(qw), W.unpack_zeros(qz)
    assert u.shape == (512, 64) and int(u.min()) == 0 and int(u.max()) == 15
    assert z.shape == (4, 64) and int(z.min()) >= 1
    assert W.unpack_zeros(W.random_packed(256, 16, 128, symmetric=True)[2]).eq(8).all()


@pytest.mark.parametrize("case, message", [
    (dict(x=torch.randn(1, 256)), "float16 or bfloat16"),
    (dict(k=200), "features"),
    (dict(group=48), "group_size 48"),
    (dict(group=512), "group_size 512"),
    (dict(n=20), "multiple of 8"),
    (dict(scales=torch.zeros(3, 64, dtype=torch.float16)), "expected scales"),
    (dict(qweight=torch.zeros(32, 64, dtype=torch.int64)), "int32"),
])
def test_bad_inputs_get_clear_errors(case, message, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # past the CUDA check, to the shape checks
    if W.triton is None:
        pytest.skip("Triton is not installed")
    n = case.get("n", 64)
    qw, s, qz = W.random_packed(256, 64, 128)
    if "n" in case:
        qw, s, qz = qw[:, :n], s[:, :n], torch.zeros(2, 3, dtype=torch.int32)
    x = case.get("x", torch.randn(1, case.get("k", 256)).half())
    with pytest.raises(ValueError, match=message):
        W.check_inputs(x, case.get("qweight", qw), case.get("scales", s), qz, case.get("group", 128))


def test_cpu_tensors_without_the_interpreter_say_what_to_use(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    qw, s, qz = W.random_packed(256, 64, 128)
    with pytest.raises(RuntimeError, match="reference_matmul"):
        W.w4a16_matmul(torch.randn(1, 256).half(), qw, s, qz, 128)


def test_linear_chooses_its_path_and_falls_back_on_cpu():
    layer = QuantLinear(256, 64, bits=4, group_size=128, bias=True)
    qw, s, qz = W.random_packed(256, 64, 128, seed=1)
    layer.qweight.copy_(qw)
    layer.scales.copy_(s)
    layer.qzeros.copy_(qz)
    layer.bias.normal_()
    fast = W.W4A16Linear.from_quant_linear(layer)
    assert fast.uses_fused(1) and fast.uses_fused(W.FUSED_MAX_TOKENS) and not fast.uses_fused(W.FUSED_MAX_TOKENS + 1)
    x = torch.randn(5, 256)
    assert torch.allclose(fast(x), layer(x), atol=1e-4)  # CPU: de-quantize, then matmul
    assert fast.qweight.data_ptr() == layer.qweight.data_ptr()  # shared, not copied


def test_linear_refuses_act_order_and_other_bit_widths():
    layer = QuantLinear(256, 64, bits=4, group_size=128, bias=False)
    layer.g_idx.copy_(torch.randperm(256, generator=torch.Generator().manual_seed(0)).to(torch.int32) // 128)
    with pytest.raises(ValueError, match="act-order"):
        W.W4A16Linear.from_quant_linear(layer)
    with pytest.raises(ValueError, match="4-bit"):
        W.W4A16Linear.from_quant_linear(QuantLinear(256, 64, bits=8, group_size=128, bias=False))


def test_candidate_configs_respect_the_group_and_the_split():
    for m in (1, 2, 8, 16):
        cands = W.candidate_configs(m, 14336, 4096, 128)
        assert cands and all(c.block_k <= 128 and 128 % c.block_k == 0 for c in cands)
        assert all(1 <= c.split_k <= 4096 // c.block_k for c in cands)
        assert any(c.dot for c in cands) == (m >= 2)
        assert all(c.dot for c in cands) == (m > 4)
    h2 = [c for c in W.candidate_configs(1, 14336, 4096, 128) if c.h2]
    assert h2 and all(not c.dot and c.gemv for c in h2)
    assert not any(c.h2 for c in W.candidate_configs(1, 14336, 4096, 128, dtype=torch.bfloat16))  # fp16 only
    assert any(c.h2 for c in W.candidate_configs(4, 14336, 4096, 128))
    assert not any(c.h2 for m in (5, 16) for c in W.candidate_configs(m, 14336, 4096, 128))  # up to 4 rows
    small_groups = W.candidate_configs(8, 1024, 1024, 64)
    assert small_groups and not any(c.dot for c in small_groups)  # the tensor-core step needs 128 rows
    cfg = W.default_config(1, 1024, 4096, 128)
    assert cfg.split_k > 1 and cfg.gemv  # 4 column blocks alone would leave most of 132 SMs idle


def test_kernels_under_the_interpreter():
    """Both kernels and every switch of the fast one, on CPU tensors via Triton's interpreter."""
    pytest.importorskip("triton", reason="Triton has wheels for Linux x86_64 only")
    script = textwrap.dedent("""
        from dataclasses import replace
        import torch
        from course_lib.attention.triton_flash import interpreter_numpy_fix
        from course_lib.kernels import w4a16 as W
        interpreter_numpy_fix()
        worst = {}
        # (k, n, group, rows, dtype): ragged rows and columns, groups of 64/128/256, fp16 and bf16 (the
        # interpreter's tl.dot mishandles bf16, so bf16 runs the FMA path only; the GPU tests cover the rest)
        cases = ((256, 64, 128, 1, torch.float16), (256, 72, 64, 3, torch.float16), (256, 40, 64, 1, torch.bfloat16),
                 (512, 96, 128, 16, torch.float16), (256, 40, 256, 5, torch.float16),
                 (256, 64, 64, 2, torch.bfloat16), (256, 48, 128, 2, torch.float16), (256, 40, 64, 4, torch.float16))
        for k, n, g, m, dtype in cases:
            qw, s, qz = W.random_packed(k, n, g, seed=k + n + m)
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype)
            ref = W.reference_matmul(x.float(), qw, s, qz, g).float()
            outs = {}
            if dtype == torch.float16:
                outs["simple"] = W.w4a16_simple(x, qw, s, qz, g, block_n=32)
                outs["default"] = W.w4a16_matmul(x, qw, s, qz, g)
            if m == 1:  # the matrix-vector kernel, with and without each trick
                for magic, fold, half in ((False, False, False), (True, False, False), (True, True, False),
                                          (True, True, True)):
                    cfg = W.KernelConfig(block_n=32, block_k=64, split_k=2, magic=magic, fold=fold, half=half)
                    outs[f"gemv magic={magic} fold={fold} half={half}"] = W.launch(x, qw, s, qz, g, cfg)

            if dtype == torch.float16 and m <= W.H2_MAX_TOKENS:  # the half2 kernels, asm emulated (no PTX here)
                for block_k, split in ((64, 1), (min(128, g), 3)):
                    cfg = W.KernelConfig(block_n=32, block_k=block_k, split_k=split, h2=True)
                    outs[f"h2 block_k={block_k} split={split}"] = W.launch(x, qw, s, qz, g, cfg)
            for dot in (False, True):
                if dot and (g < 128 or dtype == torch.bfloat16):
                    continue
                for magic in (False, True):
                    for fold in (False, True):
                        cfg = W.KernelConfig(block_n=32, block_k=128 if dot else 64, split_k=1 + (m % 2),
                                             dot=dot, magic=magic, fold=fold, gemv=False)
                        outs[f"dot={dot} magic={magic} fold={fold}"] = W.launch(x, qw, s, qz, g, cfg)
            for name, y in outs.items():
                assert y.shape == ref.shape and y.dtype == dtype, name
                err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                worst[(name, str(dtype))] = max(worst.get((name, str(dtype)), 0.0), err)
        for (name, dtype), err in sorted(worst.items()):
            print(name, dtype, err)
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.rsplit(" ", 2) for line in done.stdout.strip().splitlines()]
    assert len(lines) >= 20 and any(name.startswith("gemv") for name, _, _ in lines)
    assert any(name.startswith("h2") for name, _, _ in lines)
    for name, dtype, err in lines:
        limit = 8e-3 if "bfloat16" in dtype else 2e-3  # one rounding of the output, relative to its largest entry
        assert float(err) < limit, (name, dtype, err)
