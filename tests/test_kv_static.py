"""The preallocated cache and the GPU decode benchmark's code, on CPU; device consistency on the meta device."""

import pytest
import torch

from course_lib.kv.attention import KVCache, attend
from course_lib.kv.bench import (GPU_PLAN, STATIC_MODES, decode_fits, fit_line, kv_bytes, sdpa_attention,
                                 static_step_rows, step_function, time_step)
from course_lib.kv.decoder import CourseDecoder
from course_lib.kv.quant import KVQuant, QuantizedCache
from course_lib.kv.static import StaticKVCache
from course_lib.lm.models import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def dec():
    return CourseDecoder.from_hf(tiny_model("llama").float())


def ids(batch=2, length=12, seed=0):
    return torch.randint(1, 4096, (batch, length), generator=torch.Generator().manual_seed(seed))


def static(storage, batch=2, max_len=16, **kw):
    return StaticKVCache(2, batch=batch, n_kv_heads=2, head_dim=32, max_len=max_len, storage=storage, **kw)


def decode(dec, x, cache, prefill=5):
    parts = [dec(x[:, :prefill], cache=cache).logits]
    parts += [dec(x[:, t:t + 1], cache=cache).logits for t in range(prefill, x.shape[1])]
    return torch.cat(parts, 1)


@pytest.mark.parametrize("storage, reference", [("model", lambda: KVCache(2)),
                                                ("fp8", lambda: QuantizedCache(KVQuant("fp8"), 2)),
                                                ("int8", lambda: QuantizedCache(KVQuant("int8"), 2))])
def test_static_cache_equals_the_growing_caches(dec, storage, reference):
    """Prefill then one token at a time: the preallocated cache gives the logits of KVCache / QuantizedCache."""
    x = ids()
    with torch.no_grad():
        got, want = decode(dec, x, static(storage)), decode(dec, x, reference())
    torch.testing.assert_close(got, want, **TOL)
    if storage != "model":  # and quantization did change something
        assert (got - decode(dec, x, KVCache(2))).abs().max() > 1e-5


def test_static_cache_lengths_bytes_and_errors(dec):
    c = static("int8", max_len=10)
    with torch.no_grad():
        dec(ids(2, 7), cache=c)
    assert c.seq_len() == 7 and c.lengths == [7, 7]
    assert c.nbytes() == 2 * 2 * (2 * 2 * 10 * 32 * 1 + 2 * 2 * 10 * 2)  # layers x (K, V) x (codes + fp16 scales)
    assert static("model", max_len=10).nbytes() == 2 * 2 * 2 * 2 * 10 * 32 * 4
    with pytest.raises(ValueError, match="max_len"):
        with torch.no_grad():
            dec(ids(2, 4), cache=c)  # 7 + 4 > 10
    c.set_length(3)
    assert c.seq_len(1) == 3
    with pytest.raises(ValueError, match="length"):
        c.set_length(11)
    with pytest.raises(ValueError, match="storage"):
        static("int4")
    with pytest.raises(ValueError, match="fp8_scale"):
        static("fp8", fp8_scale=0.0)


def test_fp8_scale_is_applied():
    k = torch.full((1, 2, 1, 32), 640.0)  # beyond E4M3's 448: saturates with scale 1; 640 / 2 = 320 is exact
    for scale, expect in ((1.0, 448.0), (2.0, 640.0)):
        c = StaticKVCache(1, batch=1, n_kv_heads=2, head_dim=32, max_len=4, storage="fp8", fp8_scale=scale)
        got, _ = c.update(0, k, k)
        assert torch.all(got == expect)


def test_sdpa_hook_equals_the_course_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, 6, 8, generator=g) for heads in (4, 2, 2))
    torch.testing.assert_close(sdpa_attention(0, q, k, v, None), attend(q, k, v), **TOL)  # causal, GQA
    torch.testing.assert_close(sdpa_attention(0, q[:, :, -1:], k, v, None), attend(q[:, :, -1:], k, v), **TOL)
    with pytest.raises(ValueError, match="unpadded"):
        sdpa_attention(0, q, k, v, torch.ones(2, 6, dtype=torch.bool))


def test_step_function_is_the_step_that_writes_the_next_token(dec):
    """Cached step at context n == argmax of the no-cache step over the same n + 1 tokens, when the cache
    holds the keys and values of the first n; and a step can be repeated (graphs replay it)."""
    x = ids(2, 9)
    with torch.no_grad():
        full = dec(x, logits_to_keep=1).logits.argmax(-1)
        full_hook = dec(x, kv_hook=sdpa_attention, logits_to_keep=1).logits.argmax(-1)
    assert torch.equal(full, full_hook)
    step = step_function(dec, "cache", 2, 8)
    with torch.no_grad():
        assert torch.equal(step(), step())  # set_length rewinds: the same slot is written each time
    with pytest.raises(ValueError, match="mode"):
        step_function(dec, "paged", 1, 4)


def test_static_step_rows_and_fits_on_cpu(dec):
    plan = [(m, b, False) for m in STATIC_MODES for b in (1, 2)]
    rows = static_step_rows(dec, "tiny", plan, (8, 16, 32), budget_s=0.01, min_reps=3, verbose=False)
    assert len(rows) == len(plan) * 3
    assert {k for r in rows for k in r} == {"model", "mode", "batch", "graph", "context", "ms", "ms_q1", "ms_q3",
                                           "reps", "kv_bytes", "sdpa"}
    assert all(r["ms_q1"] <= r["ms"] <= r["ms_q3"] and r["reps"] >= 3 for r in rows)
    fits = decode_fits(rows)
    assert len(fits) == len(plan) and all(f["points"] == 3 for f in fits)
    with pytest.raises(ValueError, match="CUDA graphs"):
        time_step(lambda: None, "cpu", graph=True)
    assert ("no cache", 1, True) in GPU_PLAN and ("cache", 64, False) in GPU_PLAN


def test_kv_bytes_per_storage(dec):
    cfg = dec.config  # 2 layers, 2 KV heads of 64... the tiny model: hidden 128 / 4 heads = 32
    base = 2 * 2 * 3 * 2 * 100 * 32  # K and V x layers x batch x heads x tokens x head_dim
    assert kv_bytes(cfg, 3, 100, "model") == base * 2
    assert kv_bytes(cfg, 3, 100, "fp8") == base
    assert kv_bytes(cfg, 3, 100, "int8") == base + 2 * 2 * 3 * 2 * 100 * 2
    assert kv_bytes(cfg, 3, 100, None) == 0


def test_fit_line():
    f = fit_line([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    assert f["a"] == pytest.approx(1.0) and f["b"] == pytest.approx(2.0) and f["r2"] == pytest.approx(1.0)
    assert f["b_se"] == pytest.approx(0.0, abs=1e-12)
    noisy = fit_line([0, 1, 2, 3, 4], [0.0, 1.2, 1.8, 3.3, 3.9])
    assert 0.9 < noisy["r2"] < 1 and noisy["b_se"] > 0
    rows = [{"model": "m", "mode": "x", "batch": 1, "position": p, "ms": 2.0 + 0.5 * (p - 1)} for p in (1, 17, 33)]
    (fit,) = decode_fits(rows)
    assert fit["ms at 0"] == pytest.approx(2.0) and fit["ms per 1k"] == pytest.approx(500.0) and "graph" not in fit
    with pytest.raises(ValueError, match="3 points"):
        fit_line([0, 1], [0, 1])
    with pytest.raises(ValueError, match="equal"):
        fit_line([1, 1, 1], [0, 1, 2])


# ----------------------------------------------------------------------------- device consistency
@pytest.mark.parametrize("make", [lambda: KVCache(2), lambda: QuantizedCache(KVQuant("fp8"), 2),
                                  lambda: QuantizedCache(KVQuant("int8"), 2),
                                  lambda: QuantizedCache(KVQuant("kivi", bits=2, group=4, residual=2), 2),
                                  lambda: StaticKVCache(2, batch=2, n_kv_heads=2, head_dim=32, max_len=16,
                                                        device="meta", storage="int8")],
                         ids=["plain", "fp8", "int8", "kivi", "static"])
def test_every_tensor_stays_on_the_models_device(make):
    """The decoder and caches on PyTorch's meta device: an op that mixes in a tensor made on the CPU (an
    arange without device=, a scale tensor, a mask) raises, as it would on a GPU. The GPU-only failure
    this guards against: 'index is on cpu, different from other tensors on cuda:0'."""
    dec = CourseDecoder.from_hf(tiny_model("llama").float().to("meta"))
    x = torch.ones(2, 5, dtype=torch.long, device="meta")
    cache = make()
    dec(x, cache=cache)
    for _ in range(6):
        out = dec(x[:, :1], cache=cache)
    assert out.logits.device.type == "meta"
    dec(x, attention_mask=torch.ones(2, 5, dtype=torch.long, device="meta"))  # left-padding positions
    dec(x, kv_hook=sdpa_attention, logits_to_keep=1)


def test_ids_on_another_device_get_a_clear_error():
    """The embedding's index_select is the one op the meta device lets through; the decoder checks it."""
    dec = CourseDecoder.from_hf(tiny_model("llama").float().to("meta"))
    with pytest.raises(ValueError, match=r"input_ids are on cpu .* input_ids.to\('meta'\)"):
        dec(torch.ones(2, 5, dtype=torch.long))
