"""Chapter 09 on the GPU (pytest -m gpu): the decode benchmark's CUDA-graph path and the caches on CUDA."""

import pytest
import torch

from course_lib.kv.attention import KVCache
from course_lib.kv.bench import _sdpa_backend_context, sdpa_attention, static_step_rows, step_function, time_step
from course_lib.kv.decoder import CourseDecoder
from course_lib.kv.generate import generate
from course_lib.kv.quant import KVQuant, QuantizedCache
from course_lib.kv.static import StaticKVCache
from course_lib.lm.models import tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def decoder(dtype):
    return CourseDecoder.from_hf(tiny_model("llama").to("cuda", dtype))


def ids(batch, length, seed=0):
    return torch.randint(1, 4096, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("storage", ["model", "fp8", "int8"])
def test_static_cache_equals_growing_cache_on_cuda(storage):
    dec, x = decoder(torch.float32), ids(2, 12).cuda()
    ref = {"model": lambda: KVCache(2), "fp8": lambda: QuantizedCache(KVQuant("fp8"), 2),
           "int8": lambda: QuantizedCache(KVQuant("int8"), 2)}[storage]
    outs = []
    for cache in (StaticKVCache(2, batch=2, n_kv_heads=2, head_dim=32, max_len=16, device="cuda", storage=storage),
                  ref()):
        with torch.no_grad():
            parts = [dec(x[:, :5], cache=cache).logits] + [dec(x[:, t:t + 1], cache=cache).logits for t in range(5, 12)]
        outs.append(torch.cat(parts, 1))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["cache", "cache fp8", "cache int8", "no cache"])
def test_graph_replay_computes_what_the_eager_step_does(mode):
    """A CUDA graph of one step (bf16, flash SDPA) gives the eager step's tokens, and times sensibly."""
    dec = decoder(torch.bfloat16)
    with torch.no_grad(), _sdpa_backend_context(torch.device("cuda")):
        step = step_function(dec, mode, 4, 64)
        eager = step().clone()
        graph = torch.cuda.CUDAGraph()
        step()  # warm-up outside the graph
        with torch.cuda.graph(graph):
            out = step()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)
        timing = time_step(step_function(dec, mode, 4, 64), "cuda", graph=True, budget_s=0.05, min_reps=5)
    assert timing["reps"] >= 5 and 0 < timing["ms_q1"] <= timing["ms"] <= timing["ms_q3"] < 1e3


def test_static_step_rows_on_cuda_use_flash():
    rows = static_step_rows(decoder(torch.bfloat16), "tiny", [("cache", 2, True), ("no cache", 1, True),
                                                              ("cache", 1, False)], (32, 64, 128), budget_s=0.02,
                            min_reps=3, verbose=False)
    assert len(rows) == 9 and all(r["sdpa"] == "flash" for r in rows), {r["sdpa"] for r in rows}


def test_generate_moves_a_cpu_prompt_to_the_model():
    dec = decoder(torch.float32)
    g = generate(dec, ids(2, 5), 4)  # a tokenizer's tensors are on the CPU
    assert g.tokens.device.type == "cuda" and g.tokens.shape == (2, 9)
    with pytest.raises(ValueError, match="input_ids are on cpu"):
        dec(ids(2, 5))


def test_sdpa_hook_equals_the_course_attention_on_cuda():
    from course_lib.kv.attention import attend

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, n, 9, 32, device="cuda", generator=g) for n in (8, 2, 2))
    torch.testing.assert_close(sdpa_attention(0, q, k, v, None), attend(q, k, v), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sdpa_attention(0, q[:, :, -1:], k, v, None), attend(q[:, :, -1:], k, v),
                               rtol=1e-4, atol=1e-4)
