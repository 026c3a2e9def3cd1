"""KV cache quantization: the real cache equals the one-pass simulation, bytes equal the accounting, the quantizers."""

import pytest
import torch

from course_lib.kv.attention import attend
from course_lib.kv.decoder import CourseDecoder
from course_lib.kv.quant import (FP8_MAX, KVQuant, QuantizedCache, dequantize_grouped, fp8_quantize, int8_dequantize,
                                 int8_quantize, pack_bits, quantize_grouped, quantized_mask, simulate, unpack_bits)
from course_lib.lm.models import tiny_model

SCHEMES = [KVQuant("fp8"), KVQuant("fp8", fmt="e5m2", scales=((0.01, 0.02),) * 3), KVQuant("int8"),
           KVQuant("kivi", bits=4, group=8, residual=8), KVQuant("kivi", bits=2, group=16, residual=0),
           KVQuant("kivi", bits=2, group=8, residual=4, key_axis="token", value_axis="channel")]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_cache_decode_equals_simulation(scheme):
    """Token by token through QuantizedCache == the one-pass simulation, fed the same keys and values."""
    q, k, v = rand(2, 4, 40, 16, seed=1), rand(2, 2, 40, 16, seed=2) * 3, rand(2, 2, 40, 16, seed=3)
    cache = QuantizedCache(scheme, 2)
    steps = []
    for t in range(40):
        kk, vv = cache.update(1, k[:, :, t:t + 1], v[:, :, t:t + 1])
        steps.append(attend(q[:, :, t:t + 1], kk, vv))
    sim = simulate(scheme)(1, q, k, v, None)
    torch.testing.assert_close(torch.cat(steps, 2), sim, rtol=1e-5, atol=1e-5)
    assert (sim - attend(q, k, v)).abs().max() > 1e-4  # and quantization did change something


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
@pytest.mark.parametrize("steps", [(1,) * 30, (7, 1, 1, 20, 3), (64,)])
def test_nbytes_equal_accounting(scheme, steps):
    cache = QuantizedCache(scheme, 3)
    n = 0
    for s in steps:
        for layer in range(3):
            cache.update(layer, rand(2, 2, s, 16), rand(2, 2, s, 16))
        n += s
    assert cache.nbytes() == scheme.cache_bytes(n, n_layers=3, n_kv_heads=2, head_dim=16, batch=2, full_bytes=4)


def test_model_level_quantized_decode_tracks_simulation():
    model = tiny_model("llama").float()
    dec, x = CourseDecoder.from_hf(model), torch.randint(1, 4096, (1, 48), generator=torch.Generator().manual_seed(0))
    scheme = KVQuant("kivi", bits=2, group=8, residual=8)
    with torch.no_grad():
        cache = QuantizedCache(scheme, dec.n_layers)
        step = torch.cat([dec(x[:, t:t + 1], cache=cache).logits for t in range(48)], 1)
        sim, base = dec(x, kv_hook=simulate(scheme)).logits, dec(x).logits
    assert (step - sim).abs().mean() < 0.1 * (sim - base).abs().mean()


def test_kivi_window_and_mask():
    s = KVQuant("kivi", bits=2, group=32, residual=32)
    for n in range(1, 300):
        tq = s.quantized_tokens(n)
        assert tq % 32 == 0 and (n - tq >= 32 or tq == 0) and n - tq < 64
    m = quantized_mask(s, 100, 100)
    assert m.sum(1).tolist() == [s.quantized_tokens(p + 1) for p in range(100)]
    assert quantized_mask(KVQuant("int8"), 3, 5).tolist() == [[True] * 3 + [False] * 2, [True] * 4 + [False], [True] * 5]


def test_pack_roundtrip():
    for bits in (2, 4):
        codes = torch.randint(0, 2**bits, (3, 5, 16), generator=torch.Generator().manual_seed(bits)).to(torch.uint8)
        packed = pack_bits(codes, bits)
        assert packed.shape[-1] == 16 * bits // 8 and packed.dtype == torch.uint8
        assert torch.equal(unpack_bits(packed, bits), codes)


def test_quantizer_errors_and_saturation():
    x = rand(1, 2, 64, 32) * 5
    x[0, 0, :, 3] += 40  # an outlier channel
    errs = {}
    for axis in ("channel", "token"):
        codes, s, z = quantize_grouped(x, 2, 32, axis)
        errs[axis] = (dequantize_grouped(codes, s, z, 32, axis, x.dtype) - x).abs().mean().item()
    assert errs["channel"] < 0.7 * errs["token"]  # per-channel scales isolate the outlier channel
    codes, s = int8_quantize(x)
    assert ((int8_dequantize(codes, s, x.dtype) - x).abs() <= s.float() / 2 + 1e-6).all()
    big = torch.tensor([1e4, -1e4, 1.0])
    y = fp8_quantize(big, "e4m3", 1.0).float()
    assert y.tolist() == [FP8_MAX["e4m3"], -FP8_MAX["e4m3"], 1.0]  # saturates instead of NaN


def test_scheme_errors():
    with pytest.raises(ValueError, match="calibrate"):
        KVQuant("fp8", scales=((1.0, 1.0),)).scale(1, 0)
    with pytest.raises(ValueError, match="fp8"):
        KVQuant("int4")
    with pytest.raises(ValueError, match="2 or 4"):
        KVQuant("kivi", bits=3)
    with pytest.raises(ValueError, match="axis"):
        KVQuant("kivi", bits=2, key_axis="row")
    with pytest.raises(ValueError, match="divide head_dim"):
        KVQuant("kivi", bits=2, group=48).cache_bytes(100, n_layers=1, n_kv_heads=1, head_dim=64)
