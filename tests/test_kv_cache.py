"""The cache from scratch: exactness against one forward pass, transformers' cache, generation, masks, GQA, FLOPs."""

import pytest
import torch

from course_lib.kv.attention import (AttentionWithKVCache, KVCache, attend, causal_mask, kv_head_for_query_head,
                                     repeat_kv)
from course_lib.kv.decoder import CourseDecoder
from course_lib.kv.generate import generate, step_flops, total_flops
from course_lib.lm.models import load_model, tiny_model

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def bundled():
    """The bundled model in float32 on the default device: on a GPU machine these tests run on the GPU,
    so every input below is put on the model's device (CPU-made token ids on a CUDA model fail in the
    embedding's index_select)."""
    model, tok = load_model(dtype=torch.float32)
    return model, tok, CourseDecoder.from_hf(model)


def tol(model):
    """float32 on a GPU sums in other orders (and SDPA vs our attention): a looser tolerance there."""
    return TOL if model.device.type == "cpu" else dict(rtol=1e-4, atol=1e-4)


def ids(batch=2, length=33, seed=0, device="cpu"):
    return torch.randint(1, 4096, (batch, length), generator=torch.Generator().manual_seed(seed)).to(device)


def stepwise(decoder, x, prefill):
    cache = KVCache(decoder.n_layers)
    parts = [decoder(x[:, :prefill], cache=cache).logits]
    parts += [decoder(x[:, t:t + 1], cache=cache).logits for t in range(prefill, x.shape[1])]
    return torch.cat(parts, 1), cache


def test_course_decoder_equals_transformers(bundled):
    model, _, dec = bundled
    x = ids(device=model.device)
    with torch.no_grad():
        torch.testing.assert_close(dec(x).logits, model(input_ids=x).logits, **tol(model))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_course_decoder_other_architectures(arch):
    model = tiny_model(arch).float()
    dec, x = CourseDecoder.from_hf(model), ids(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(dec(x).logits, model(input_ids=x).logits, **TOL)
        torch.testing.assert_close(stepwise(dec, x, 7)[0], dec(x).logits, **TOL)


@pytest.mark.parametrize("prefill", [1, 10, 32])
def test_prefill_then_decode_equals_full_forward_course(bundled, prefill):
    model, _, dec = bundled
    x = ids(device=model.device)
    with torch.no_grad():
        step, cache = stepwise(dec, x, prefill)
        torch.testing.assert_close(step, dec(x).logits, **tol(model))
    assert cache.seq_len() == x.shape[1]
    assert cache.nbytes() == 2 * 8 * 2 * 2 * 64 * x.shape[1] * 4  # K,V x layers x batch x kv heads x d x T x fp32


def test_prefill_then_decode_equals_full_forward_transformers(bundled):
    model, _, _ = bundled
    x = ids(device=model.device)
    with torch.no_grad():
        out = model(input_ids=x[:, :10], use_cache=True)
        parts = [out.logits]
        for t in range(10, x.shape[1]):
            out = model(input_ids=x[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            parts.append(out.logits)
        torch.testing.assert_close(torch.cat(parts, 1), model(input_ids=x).logits, **tol(model))


def test_rope_positions_matter(bundled):
    """Decoding the new token at position 0 (the seed's bug) changes the logits."""
    model, _, dec = bundled
    x = ids(1, 12, device=model.device)
    with torch.no_grad():
        full = dec(x).logits[:, -1]
        alone = dec(x[:, -1:]).logits[:, -1]  # no cache: position 0 and nothing to attend to
    assert (full - alone).abs().max() > 1e-2


def test_generate_same_tokens_with_and_without_cache_and_library(bundled):
    model, tok, dec = bundled
    batch = tok(["To be, or not to be", "My lord"], return_tensors="pt", padding=True, padding_side="left").to(model.device)
    runs = [generate(m, batch.input_ids, 12, use_cache=c, attention_mask=batch.attention_mask).tokens
            for m in (model, dec) for c in (True, False)]
    ref = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    for r in runs:
        assert torch.equal(r, ref)


def test_left_padded_batch_equals_rows_alone(bundled):
    model, tok, dec = bundled
    prompts = ["To be, or not to be", "My lord"]
    batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left").to(model.device)
    together = generate(dec, batch.input_ids, 10, attention_mask=batch.attention_mask).tokens[:, -10:]
    for i, p in enumerate(prompts):
        alone = generate(dec, tok(p, return_tensors="pt").input_ids.to(model.device), 10).tokens[:, -10:]
        assert torch.equal(alone[0], together[i])


def test_generate_stops_at_eos_per_row(bundled):
    model, _, dec = bundled
    x = ids(2, 5, device=model.device)
    free = generate(dec, x, 8).tokens[:, 5:]
    eos = int(free[0, 2])  # row 0 emits it at step 2
    g = generate(dec, x, 8, eos_token_id=eos, pad_token_id=0)
    row0 = g.tokens[0, 5:].tolist()
    assert row0[:3] == free[0, :3].tolist() and all(t == 0 for t in row0[3:])
    assert bool(g.finished[0])
    if not bool((free[1] == eos).any()):
        assert g.new_tokens == 8 and torch.equal(g.tokens[1, 5:], free[1])


def test_generate_errors(bundled):
    model, _, dec = bundled
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(dec, ids(1, 3), 0)
    with pytest.raises(ValueError, match="batch"):
        generate(dec, ids(1, 3)[0], 2)
    with pytest.raises(ValueError, match="positions"):
        generate(model, ids(1, 500), 20)
    with pytest.raises(ValueError, match="Llama-style"):
        CourseDecoder.from_hf(tiny_model("opt"))


def test_causal_mask_bottom_right():
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True] * 5]
    assert torch.equal(causal_mask(4, 4), torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    with pytest.raises(ValueError):
        causal_mask(3, 2)


def test_gqa_mapping_is_repeat_interleave():
    assert kv_head_for_query_head(8, 2) == [0, 0, 0, 0, 1, 1, 1, 1]
    x = torch.arange(2.0).view(1, 2, 1, 1)
    assert repeat_kv(x, 4).flatten().tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError):
        kv_head_for_query_head(6, 4)


def test_gqa_with_all_heads_is_mha():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(attend(q, k, v), ref, **TOL)
    k2, v2 = k[:, :2], v[:, :2]  # GQA: 2 KV heads, each shared by two consecutive query heads
    ref2 = torch.nn.functional.scaled_dot_product_attention(q, k2.repeat_interleave(2, 1), v2.repeat_interleave(2, 1),
                                                            is_causal=True)
    torch.testing.assert_close(attend(q, k2, v2), ref2, **TOL)
    tiled = torch.nn.functional.scaled_dot_product_attention(q, k2.repeat(1, 2, 1, 1), v2.repeat(1, 2, 1, 1),
                                                             is_causal=True)
    assert (attend(q, k2, v2) - tiled).abs().max() > 1e-3


def test_standalone_attention_module_cache():
    torch.manual_seed(0)
    attn = AttentionWithKVCache(32, 4, 2).eval()
    x = torch.randn(2, 9, 32)
    pos = torch.arange(9).expand(2, 9)
    with torch.no_grad():
        full = attn(x, pos)
        cache = KVCache(1)
        parts = [attn(x[:, :4], pos[:, :4], cache=cache)] + [attn(x[:, t:t + 1], pos[:, t:t + 1], cache=cache)
                                                             for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(parts, 1), full, **TOL)


def test_flops_linear_with_cache_quadratic_without(bundled):
    cfg = bundled[0].config
    w = [step_flops(cfg, n, use_cache=True) for n in (100, 200, 300)]
    wo = [step_flops(cfg, n, use_cache=False) for n in (100, 200, 300)]
    assert w[2] - w[1] == w[1] - w[0] > 0
    assert (wo[2] - wo[1]) > (wo[1] - wo[0])  # the n² attention term
    # one token, no cache: the counts agree (both process exactly one token)
    assert step_flops(cfg, 0, use_cache=True) == step_flops(cfg, 0, use_cache=False)
    # hand count of the with-cache step at context 0: per layer 2*256*(2*256 + 2*128) + 6*256*768, attention 4*4*64
    per_layer = 2 * 256 * (2 * 256 + 2 * 128) + 2 * 3 * 256 * 768 + 4 * 4 * 64
    assert step_flops(cfg, 0, use_cache=True) == 8 * per_layer + 2 * 256 * 4096
    assert total_flops(cfg, 1, 100, use_cache=False) > 10 * total_flops(cfg, 1, 100, use_cache=True)


def test_decode_bench_rows_and_cli_errors(capsys):
    from course_lib.bench import main
    from course_lib.kv.bench import decode_step_rows, summary_rows

    rows = decode_step_rows(tiny_model("llama").float(), "tiny", steps=7, repeats=1, every=2,
                            modes=("hf cache", "course fp8"))
    assert {r["mode"] for r in rows} == {"hf cache", "course fp8"}
    assert sorted({r["position"] for r in rows}) == [3, 5, 7]  # steps 2, 4, 6 write positions 3, 5, 7
    assert all(r["ms"] > 0 for r in rows)
    summary = summary_rows(rows)
    assert len(summary) == 2 and all(s["last position"] == 7 for s in summary)
    if not torch.cuda.is_available():
        assert main(["kv-decode", "--device", "cpu", "--model", "llama-1b-shape"]) == 2
        assert "CUDA" in capsys.readouterr().err
