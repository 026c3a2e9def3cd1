"""The KV-cache size formula (course_lib.kv.sizes) against real caches and published configurations."""

from __future__ import annotations

import pytest
import torch

from course_lib.kv import sizes
from course_lib.lm.models import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GIB = 1024**3
PUBLISHED = {  # total parameters as published (see data/model_configs/README.md)
    "Llama-2-7b-hf": 6.74e9, "Meta-Llama-3-8B": 8.03e9, "Meta-Llama-3-70B": 70.55e9, "Llama-3.1-70B": 70.55e9,
    "Qwen2.5-7B": 7.62e9, "Mistral-7B-v0.1": 7.24e9, "Mixtral-8x7B-v0.1": 46.7e9,
    "DeepSeek-V3": 671e9,  # main model, without the 14B multi-token-prediction module (685B with it)
}


def prefill_then_decode(model, batch: int = 2, prompt: int = 7):
    """A prefill of `batch` x `prompt` tokens with use_cache=True, then one decode step: returns the cache."""
    ids = torch.randint(1, 100, (batch, prompt), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        out = model(ids[:, -1:], past_key_values=out.past_key_values, use_cache=True)
    return out.past_key_values


def tiny_deepseek_config():
    from transformers import DeepseekV3Config

    return DeepseekV3Config(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
                            num_key_value_heads=4, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
                            n_group=2, topk_group=1, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
                            qk_nope_head_dim=16, v_head_dim=16, max_position_embeddings=64)


# ----------------------------------------------------------------------------- formula == real cache

@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "opt", "gpt2"])
def test_formula_equals_the_bytes_of_the_real_cache(arch):
    model = tiny_model(arch)
    cfg = model.config.to_dict()
    cache = prefill_then_decode(model)  # 7 prompt tokens + 1 decoded = 8 cached per sequence
    expected = sizes.kv_cache_bytes(cfg, batch=2, seq_len=8, bytes_per_element=4)  # fp32 tiny models
    assert sizes.cache_tensor_bytes(cache) == expected
    assert sizes.cache_tensor_bytes(cache, storage=True) == expected  # no hidden buffers behind these tensors
    shape = sizes.attention_shape(cfg)
    assert shape["kind"] == ("GQA" if arch in ("llama", "qwen2", "mistral") else "MHA")  # OPT, GPT-2: no kv field
    assert expected == 2 * 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * 8 * 4


def test_sliding_window_cache_holds_at_most_the_window():
    from transformers import AutoModelForCausalLM, MistralConfig

    window = 4
    config = MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, sliding_window=window, vocab_size=128)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    cfg = model.config.to_dict()
    cache = prefill_then_decode(model)  # 8 tokens seen, window 4
    full = sizes.kv_cache_bytes(cfg, batch=2, seq_len=8, bytes_per_element=4, sliding_window=False)
    rolling = sizes.kv_cache_bytes(cfg, batch=2, seq_len=8, bytes_per_element=4)
    assert rolling == full * window / 8
    # transformers' DynamicSlidingWindowLayer shows window - 1 tokens (the next token makes the window) ...
    assert sizes.cache_tensor_bytes(cache) == sizes.kv_cache_bytes(cfg, batch=2, seq_len=window - 1,
                                                                   bytes_per_element=4)
    # ... as views into a buffer of exactly `window` tokens: the memory held is the formula's.
    assert sizes.cache_tensor_bytes(cache, storage=True) == rolling


def test_mla_cache_in_transformers_is_the_latent():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_deepseek_config()).eval()
    cfg = model.config.to_dict()
    shape = sizes.attention_shape(cfg)
    assert shape["kind"] == "MLA" and shape["head_dim"] == 16 + 8 and shape["latent_dim"] == 16 + 8
    cache = prefill_then_decode(model)
    measured = sizes.cache_tensor_bytes(cache)
    latent = sizes.kv_cache_bytes(cfg, batch=2, seq_len=8, bytes_per_element=4, mla="latent")
    expanded = sizes.kv_cache_bytes(cfg, batch=2, seq_len=8, bytes_per_element=4, mla="expanded")
    assert measured == latent == 2 * 8 * 3 * (16 + 8) * 4  # batch x tokens x layers x (kv_lora_rank + rope) x fp32
    assert expanded == 2 * 8 * 3 * 4 * (16 + 8 + 16) * 4 and measured != expanded
    assert tuple(cache.layers[0].keys.shape) == (2, 1, 8, 16)  # one latent "head" per token, shared by all heads


def test_cache_tensor_bytes_reads_legacy_tuples_and_rejects_strangers():
    k = torch.zeros(2, 3, 5, 4)
    assert sizes.cache_tensor_bytes(((k, k), (k, k.clone()))) == 4 * k.nbytes
    assert sizes.cache_tensor_bytes(((k, k), (k, k.clone())), storage=True) == 2 * k.nbytes  # k counted once
    with pytest.raises(TypeError, match="past_key_values"):
        sizes.cache_tensor_bytes({"keys": k})


# ----------------------------------------------------------------------------- published configurations

@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_published_size(name):
    cfg = sizes.load_config(name)
    assert sizes.parameter_count(cfg) == pytest.approx(PUBLISHED[name], rel=0.01)
    assert cfg["_source"].startswith("https://huggingface.co/") and cfg["_source"].endswith("/blob/main/config.json")
    assert cfg["_verified"]


def test_every_stored_config_is_tested():
    assert sorted(PUBLISHED) == sizes.available_configs()


def test_attention_kinds():
    kind = {n: sizes.attention_shape(sizes.load_config(n)) for n in sizes.available_configs()}
    assert kind["Llama-2-7b-hf"]["kind"] == "MHA"
    assert kind["Meta-Llama-3-8B"]["kind"] == "GQA" and kind["Meta-Llama-3-8B"]["kv_heads"] == 8
    assert kind["DeepSeek-V3"]["kind"] == "MLA" and kind["DeepSeek-V3"]["latent_dim"] == 512 + 64
    assert kind["Qwen2.5-7B"]["kv_heads"] == 4 and kind["Qwen2.5-7B"]["head_dim"] == 3584 // 28


def test_llama3_70b_at_128k():
    cfg = sizes.load_config("Meta-Llama-3-70B")
    assert sizes.kv_bytes_per_token(cfg) == 2 * 80 * 8 * 128 * 2 == 327680
    # 128k tokens need Llama-3.1 (Llama-3-70B stops at 8192 positions); the shapes are the same.
    long = sizes.load_config("Llama-3.1-70B")
    assert cfg["max_position_embeddings"] == 8192 and long["max_position_embeddings"] == 131072
    assert sizes.kv_bytes_per_token(long) == 327680
    cache = sizes.kv_cache_bytes(long, batch=1, seq_len=131072)
    assert cache == 327680 * 131072 == 40 * GIB
    # The source: "may even exceed the weights". At batch 1 it is less than a third of them ...
    weights = sizes.weight_bytes(long)
    assert weights == pytest.approx(141.1e9, rel=1e-3) and cache < weights / 3
    # ... it takes ~431k cached tokens, i.e. 4 sequences of 128k, for the cache to outweigh the weights.
    crossover = sizes.crossover_tokens(long)
    assert crossover == pytest.approx(430_626, abs=1)
    assert sizes.kv_cache_bytes(long, batch=4, seq_len=131072) > weights > sizes.kv_cache_bytes(
        long, batch=3, seq_len=131072)
    # The source's formula with the 64 query heads instead of the 8 KV heads: 8x too big.
    shape = sizes.attention_shape(long)
    with_query_heads = 2 * 1 * shape["layers"] * shape["q_heads"] * shape["head_dim"] * 131072 * 2
    assert with_query_heads / cache == 8


def test_mixtral_caches_like_mistral_but_weighs_6x():
    mistral, mixtral = sizes.load_config("Mistral-7B-v0.1"), sizes.load_config("Mixtral-8x7B-v0.1")
    assert sizes.kv_bytes_per_token(mixtral) == sizes.kv_bytes_per_token(mistral) == 2 * 32 * 8 * 128 * 2
    assert sizes.weight_bytes(mixtral) / sizes.weight_bytes(mistral) == pytest.approx(6.45, abs=0.01)
    assert sizes.active_parameter_count(mixtral) == pytest.approx(12.9e9, rel=0.01)
    assert sizes.active_parameter_count(mistral) == sizes.parameter_count(mistral)  # dense
    # Mistral's 4096-token window caps its cache; Mixtral has no window.
    assert sizes.kv_cache_bytes(mistral, batch=1, seq_len=32768) == 4096 * sizes.kv_bytes_per_token(mistral)
    assert sizes.kv_cache_bytes(mixtral, batch=1, seq_len=32768) == 32768 * sizes.kv_bytes_per_token(mixtral)


def test_qwen_declares_a_window_it_does_not_use():
    qwen = sizes.load_config("Qwen2.5-7B")
    assert qwen["sliding_window"] == 131072 and qwen["use_sliding_window"] is False
    assert sizes.layer_windows(qwen) == [None] * 28
    assert sizes.layer_windows({**qwen, "use_sliding_window": True, "sliding_window": 4096}) == [None] * 28
    assert sizes.layer_windows({**qwen, "use_sliding_window": True, "max_window_layers": 20})[19:21] == [None, 131072]


def test_deepseek_v3_mla_and_active_parameters():
    cfg = sizes.load_config("DeepSeek-V3")
    assert sizes.kv_bytes_per_token(cfg) == 61 * (512 + 64) * 2 == 70272
    assert sizes.kv_bytes_per_token(cfg, mla="expanded") == 61 * 128 * (128 + 64 + 128) * 2
    active = sizes.active_parameter_count(cfg)
    assert active == pytest.approx(37e9, rel=0.02)  # DeepSeek: "37B activated"
    embedding = cfg["vocab_size"] * cfg["hidden_size"]
    assert active - embedding == pytest.approx(36.6e9, rel=0.005)  # README_WEIGHTS: 36.6B, input embedding excluded


@pytest.mark.parametrize("build", ["mixtral", "deepseek"])
def test_active_parameter_formula_matches_an_instantiated_model(build):
    """active = total - idle experts, checked against the expert tensors of a small real model."""
    from transformers import AutoModelForCausalLM, MixtralConfig

    if build == "mixtral":
        config = MixtralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=128)
    else:
        config = tiny_deepseek_config()
    model = AutoModelForCausalLM.from_config(config)
    cfg = model.config.to_dict()
    total = sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)  # not shared_experts
    layout = sizes.moe_layout(cfg)
    assert sizes.parameter_count(cfg) == total
    assert routed == layout["moe_layers"] * layout["experts"] * layout["expert_params"]
    assert sizes.active_parameter_count(cfg) == total - routed * (1 - layout["top_k"] / layout["experts"])


def test_size_rows_table():
    rows = sizes.size_rows(["Meta-Llama-3-8B", "DeepSeek-V3"], seq_len=8192, batch=2)
    assert [r["model"] for r in rows] == ["Meta-Llama-3-8B", "DeepSeek-V3"]
    llama = rows[0]
    assert llama["KiB/token"] == 128 and llama["cache GiB @2x8192"] == 2 and llama["attention"] == "GQA"
    assert llama["crossover tokens"] == pytest.approx(8.03e9 * 2 / 131072, rel=0.01)
    assert rows[1]["KiB/token"] == pytest.approx(70272 / 1024)


# ----------------------------------------------------------------------------- errors

def test_errors_are_clear():
    cfg = sizes.load_config("Meta-Llama-3-8B")
    with pytest.raises(ValueError, match="available: .*Meta-Llama-3-8B"):
        sizes.load_config("llama-9000")
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        sizes.kv_cache_bytes(cfg, batch=0, seq_len=10)
    with pytest.raises(ValueError, match="seq_len must be an integer >= 1"):
        sizes.kv_cache_bytes(cfg, batch=1, seq_len=0)
    with pytest.raises(ValueError, match="bytes_per_element must be > 0"):
        sizes.kv_bytes_per_token(cfg, 0)
    with pytest.raises(ValueError, match="bytes_per_element must be > 0"):
        sizes.weight_bytes(cfg, -1.0)
    with pytest.raises(ValueError, match="not a multiple of num_key_value_heads=5"):
        sizes.attention_shape({**cfg, "num_key_value_heads": 5})
    with pytest.raises(ValueError, match="mla must be one of"):
        sizes.kv_elements_per_token(cfg, mla="compressed")
    with pytest.raises(ValueError, match="model_type"):
        sizes.parameter_count({k: v for k, v in cfg.items() if k != "model_type"})
    with pytest.raises(ValueError, match="layer count"):
        sizes.attention_shape({"hidden_size": 64})


def test_falcon_attention_is_read_as_transformers_reads_it():
    """Seed 003 names Falcon as an MQA model: Falcon-7B is; Falcon-40B has 8 KV groups (its config still
    says multi_query: true, which new_decoder_architecture overrides)."""
    from course_lib.kv.teach import falcon_rows

    cfgs = sizes.falcon_configs()
    assert sizes.attention_shape(cfgs["falcon-7b"]) == {"layers": 32, "q_heads": 71, "kv_heads": 1, "head_dim": 64,
                                                        "kind": "MQA"}
    assert sizes.attention_shape(cfgs["falcon-40b"])["kv_heads"] == 8
    assert all(c["_source"].startswith("https://huggingface.co/tiiuae/") and c["_verified"] for c in cfgs.values())
    base = {"model_type": "falcon", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8}
    assert sizes.attention_shape({**base, "multi_query": False})["kind"] == "MHA"  # falcon-rw style
    assert sizes.attention_shape({**base, "new_decoder_architecture": True, "num_kv_heads": 2})["kv_heads"] == 2
    assert sizes.attention_shape(base)["kind"] == "MQA"  # transformers' default: multi_query=True
    rows = {r["model"]: r for r in falcon_rows()}
    assert rows["falcon-7b"]["KV heads (weights)"] == 1 and rows["falcon-40b"]["KV heads (weights)"] == 8
    # transformers broadcasts Falcon-40B's 8 KV heads to all 128 query heads before caching them
    assert rows["falcon-7b"]["transformers caches x KV heads"] == 1
    assert rows["falcon-40b"]["transformers caches x KV heads"] == 16
