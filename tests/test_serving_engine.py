"""The serving engine: its output equals transformers' greedy generation under every scheduling path
(chunked prefill, prefix caching, preemption), the block pool's accounting, sampling, stops and errors."""

from __future__ import annotations

import pytest
import torch

from course_lib.lm.models import load_model, tiny_model
from course_lib.serving import BlockPool, Engine, EngineConfig, RequestError, SamplingParams, prefix_hashes
from course_lib.serving.blocks import ROOT, block_hash
from course_lib.serving.sampling import filter_logits
from course_lib.serving.workload import make_workload, serve_engine, serve_sequential, serve_static

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["The king said", "Once upon a time there was", "It was a dark and stormy night; the rain fell in torrents",
           "Call me", "And so, my friends, we shall meet again upon the field"]


@pytest.fixture(scope="module")
def course():
    model, tok = load_model(dtype=torch.float32)
    ids = [tok.encode(p) for p in PROMPTS]
    ref = []
    for p in ids:
        out = model.generate(torch.tensor([p]), max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
        ref.append(out[0, len(p):].tolist())
    return model, tok, ids, ref


GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


@pytest.mark.parametrize("config", [
    EngineConfig(num_blocks=64),                                                  # everything in one batch
    EngineConfig(num_blocks=64, block_size=4, max_num_batched_tokens=7),          # chunked prefill, odd chunks
    EngineConfig(num_blocks=64, max_num_seqs=2),                                  # a queue
    EngineConfig(num_blocks=9, block_size=4, max_num_batched_tokens=64),          # preemption by recomputation
    EngineConfig(num_blocks=9, block_size=4, enable_prefix_caching=False),       # preemption without the cache
], ids=["one-batch", "chunked", "max-seqs", "preempt", "preempt-no-cache"])
def test_greedy_output_equals_transformers(course, config):
    model, tok, ids, ref = course
    engine = Engine(model, tok, config)
    reqs = engine.generate(ids, GREEDY)
    assert [r.output_ids for r in reqs] == ref
    assert all(r.finish_reason == "length" for r in reqs)
    assert engine.blocks.num_free == engine.num_blocks  # every block back in the pool
    if config.num_blocks == 9:
        assert engine.stats["preemptions"] > 0
    if config.max_num_seqs == 2:
        assert engine.stats["max_running"] == 2


def test_prefix_cache_hits_and_same_output(course):
    model, tok, _, _ = course
    system = tok.encode("You are a helpful assistant who answers in the style of an old play. " * 3)
    prompts = [system + tok.encode(q) for q in ("Who is the king?", "Where is the queen?", "What is love?")]
    outs = {}
    for caching in (False, True):
        engine = Engine(model, tok, EngineConfig(num_blocks=64, block_size=8, enable_prefix_caching=caching))
        first = engine.generate(prompts[:1], GREEDY)
        rest = engine.generate(prompts[1:], GREEDY)
        outs[caching] = [r.output_ids for r in first + rest]
        cached = [r.cached_tokens for r in rest]
        if caching:
            shared = len(system) // 8 * 8
            assert all(c >= shared for c in cached) and all(c % 8 == 0 for c in cached)
            assert engine.stats["cached_tokens"] == sum(cached)
        else:
            assert cached == [0, 0]
    assert outs[True] == outs[False]


def test_prefix_cache_never_covers_the_whole_prompt(course):
    model, tok, _, _ = course
    prompt = list(range(5, 5 + 32))  # exactly 4 blocks of 8
    engine = Engine(model, tok, EngineConfig(num_blocks=32, block_size=8))
    a = engine.generate([prompt], GREEDY)[0]
    b = engine.generate([prompt], GREEDY)[0]
    assert b.cached_tokens == 24  # three blocks: the last token must be computed for its logits
    assert a.output_ids == b.output_ids


def test_block_pool_lru_eviction_and_refcounts():
    pool = BlockPool(4)
    a, b = pool.allocate(), pool.allocate()
    pool.register(a, b"ha")
    pool.register(b, b"hb")
    pool.free_all([a, b])  # freed last to first: b is evicted before a
    assert pool.num_free == 4 and pool.lookup([b"ha", b"hb"]) == [a, b]
    pool.take(a)
    assert pool.refcount(a) == 1 and pool.num_free == 3
    got = [pool.allocate() for _ in range(3)]  # the two never-used blocks, then b (evicted)
    assert got[-1] == b and pool.lookup([b"ha", b"hb"]) == [a] and pool.evictions == 1
    with pytest.raises(Exception, match="in use"):
        pool.allocate()
    pool.free(a)
    with pytest.raises(Exception, match="freed twice"):
        pool.free(a)


def test_hash_chain_depends_on_everything_before():
    a = prefix_hashes([1, 2, 3, 4, 5, 6, 7], 3)
    b = prefix_hashes([9, 2, 3, 4, 5, 6], 3)
    assert len(a) == 2 and len(b) == 2  # the partial block [7] has no hash
    assert a[0] != b[0] and a[1] != b[1]  # the same second block, a different prefix
    assert a[1] == block_hash(block_hash(ROOT, [1, 2, 3]), [4, 5, 6])


def test_sampling_is_seeded_per_request(course):
    model, tok, ids, _ = course
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    alone = Engine(model, tok, EngineConfig()).generate([ids[0]], params)[0].output_ids
    crowd = Engine(model, tok, EngineConfig()).generate(ids, [params] + [SamplingParams(max_tokens=10, temperature=1.0,
                                                                                       seed=s) for s in range(4)])
    assert crowd[0].output_ids == alone  # the batch does not change a seeded request
    other = Engine(model, tok, EngineConfig()).generate([ids[0]], SamplingParams(max_tokens=10, temperature=1.0,
                                                                                   seed=8, ignore_eos=True))
    assert other[0].output_ids != alone


def test_top_p_and_top_k_filter():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.75))
    assert kept.tolist() == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, top_k=1)).sum() == 1
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [True, False, False, False]


def test_stops(course):
    model, tok, ids, ref = course
    engine = Engine(model, tok, EngineConfig())
    r = engine.generate([ids[0]], SamplingParams(max_tokens=12, stop_token_ids=(ref[0][3],), ignore_eos=True))[0]
    assert r.output_ids == ref[0][:ref[0].index(ref[0][3]) + 1] and r.finish_reason == "stop"
    full = tok.decode(ref[0])
    word = full.split()[1]
    r = engine.generate([ids[0]], SamplingParams(max_tokens=12, stop=(word,), ignore_eos=True))[0]
    assert r.finish_reason == "stop" and word not in r.text and full.startswith(r.text)


def test_streamed_text_adds_up(course):
    model, tok, ids, _ = course
    engine = Engine(model, tok, EngineConfig())
    rid = engine.add_request(ids[2], SamplingParams(max_tokens=20, ignore_eos=True))
    pieces = []
    while engine.has_unfinished():
        pieces += [o.new_text for o in engine.step() if o.request_id == rid]
    assert "".join(pieces) == engine.requests[rid].text == tok.decode(engine.requests[rid].output_ids)


@pytest.mark.parametrize("kwargs, params, match", [
    ({"prompt_ids": list(range(600))}, SamplingParams(), "context"),
    ({"prompt_ids": [1, 2, 3]}, SamplingParams(max_tokens=510), "exceeds the context"),
    ({"prompt_ids": [1, 2, 3]}, SamplingParams(stop_token_ids=(99999,)), "not in the vocabulary"),
    ({"prompt_ids": []}, SamplingParams(), "empty"),
    ({"prompt_ids": [5000]}, SamplingParams(), "vocabulary"),
])
def test_bad_requests_are_refused_and_the_rest_carry_on(course, kwargs, params, match):
    model, tok, ids, ref = course
    engine = Engine(model, tok, EngineConfig())
    good = engine.add_request(ids[0], GREEDY)
    with pytest.raises(RequestError, match=match):
        engine.add_request(params=params, **kwargs)
    while engine.has_unfinished():
        engine.step()
    assert engine.requests[good].output_ids == ref[0]


def test_request_that_never_fits_and_bad_settings(course):
    model, tok, ids, _ = course
    engine = Engine(model, tok, EngineConfig(num_blocks=4, block_size=4))
    with pytest.raises(RequestError, match="could never run"):
        engine.add_request(ids[0], SamplingParams(max_tokens=40))
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}, {"top_k": -2}):
        with pytest.raises(RequestError):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="kv_dtype"):
        EngineConfig(kv_dtype="int3")


def test_cuda_graphs_refused_on_cpu(course):
    model, tok, _, _ = course
    with pytest.raises(ValueError, match="CUDA"):
        Engine(model, tok, EngineConfig(cuda_graphs=True))


def test_unsupported_architecture_is_a_clear_error():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="Llama-style"):
        Engine(model, None, EngineConfig())


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_other_llama_style_architectures(arch):
    model = tiny_model(arch).float().eval()
    prompt = list(range(3, 20))
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                         pad_token_id=0)[0, len(prompt):].tolist()

    class Tok:
        eos_token_id = None

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    engine = Engine(model, Tok(), EngineConfig(block_size=4, max_num_batched_tokens=5))
    assert engine.generate([prompt], SamplingParams(max_tokens=6, ignore_eos=True))[0].output_ids == ref


def test_fp8_cache_holds_twice_the_tokens_and_stays_close(course):
    model, tok, ids, ref = course
    budget = 64 * 1024
    bf16 = Engine(model, tok, EngineConfig(kv_cache_bytes=budget, kv_dtype="bfloat16"))
    fp8 = Engine(model, tok, EngineConfig(kv_cache_bytes=budget, kv_dtype="fp8"))
    assert fp8.num_blocks == 2 * bf16.num_blocks
    assert fp8.runner.pool.nbytes() <= budget and bf16.runner.pool.nbytes() <= budget
    outs = fp8.generate(ids, GREEDY)
    same = sum(r.output_ids[:4] == t[:4] for r, t in zip(outs, ref))
    assert same >= 4  # the first tokens agree for nearly every prompt


def test_workload_runners_do_the_same_work(course):
    model, tok, _, _ = course
    wl = make_workload(tok, 6, prompt_mean=12, output_mean=6, max_output=10, seed=1)
    assert wl == make_workload(tok, 6, prompt_mean=12, output_mean=6, max_output=10, seed=1)  # seeded
    seq = serve_sequential(model, wl)
    static = serve_static(model, wl, batch_size=4)
    eng = serve_engine(Engine(model, tok, EngineConfig()), wl)
    for run in (seq, static, eng):
        assert [t.output_len for t in run.timings] == [w.output_len for w in wl.items]
        assert all(t.first_token >= t.arrival and t.finish >= t.first_token for t in run.timings)
    assert seq.forward_passes == wl.output_tokens
    assert static.forward_passes == max(w.output_len for w in wl.items[:4]) + max(w.output_len for w in wl.items[4:])
    assert eng.forward_passes < static.forward_passes  # iteration-level scheduling: no row waits for the longest
    s = eng.summary()
    assert s["tokens/s"] > 0 and s["TTFT p99 ms"] >= s["TTFT p50 ms"]


@pytest.mark.parametrize("stop", ["ter", "ssenger", "a Me", "\n\n[E"])
def test_streamed_text_with_stop_strings_equals_the_final_text(course, stop):
    model, tok, _, _ = course
    engine = Engine(model, tok, EngineConfig())
    rid = engine.add_request(tok.encode("Once upon a time"), SamplingParams(max_tokens=12, stop=(stop,)))
    streamed = ""
    while engine.has_unfinished():
        streamed += "".join(o.new_text for o in engine.step())
    req = engine.requests[rid]
    assert streamed == req.text and stop not in req.text
    full = tok.decode(req.output_ids)
    assert full.startswith(req.text)


@pytest.mark.parametrize("seed", [2**64, -1, 1.5, "abc", True])
def test_bad_seed_is_a_request_error(seed):
    with pytest.raises(RequestError, match="seed"):
        SamplingParams(temperature=1.0, seed=seed)


@pytest.mark.slow
def test_serving_bench_rows_on_cpu():
    from course_lib.serving.bench import bench_model

    rows = bench_model("course-model", torch.device("cpu"), repeats=1, quick=True)
    assert rows[0]["server"] == "HF generate, one at a time" and rows[0]["x one-at-a-time"] == 1
    tight = [r for r in rows if r["workload"] == "poisson, tight KV memory"]
    assert [("bfloat16" in tight[0]["server"]), ("fp8" in tight[1]["server"])] == [True, True]
    assert tight[1]["KV tokens"] == 2 * tight[0]["KV tokens"]
    shared = [r for r in rows if r["workload"] == "shared prefix"]
    assert shared[0]["cached_tokens"] == 0 < shared[1]["cached_tokens"]
    assert all(r["tokens/s"] > 0 and r["tokens/s min"] <= r["tokens/s"] <= r["tokens/s max"]
               for r in rows if "tokens/s min" in r)
    assert len({(r["workload"], r["server"]) for r in rows}) == len(rows) == 7
