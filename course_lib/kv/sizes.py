"""How big is the KV cache? The size formula, applied to published model configurations.

Every decoder layer keeps, for every token seen so far, one key and one value vector per KV head:

    Size = 2 (K and V) x batch x layers x kv_heads x head_dim x seq_len x bytes_per_element

The count is per *KV* head: grouped-query attention (GQA) shares one K/V head between several query
heads, so a formula written with the query heads overstates the cache by heads / kv_heads (8x for
Llama-3-70B). Multi-head latent attention (MLA, DeepSeek-V2/V3) caches one compressed latent per
token and layer instead of per-head keys and values.

The configurations live in ``data/model_configs/<name>.json``: the published Hugging Face
``config.json`` values (see that folder's README for where each number comes from). Parameter
counts are exact: the model is instantiated on PyTorch's ``meta`` device, which records shapes and
allocates nothing.

    cfg = load_config("Meta-Llama-3-70B")
    kv_bytes_per_token(cfg)                        # 327680.0 bytes in fp16
    kv_cache_bytes(cfg, batch=1, seq_len=131072)   # 40 GiB
    crossover_tokens(cfg)                          # tokens at which the cache outweighs the weights
"""

from __future__ import annotations

import functools
import json

from ..core.env import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "data" / "model_configs"
KIB = 1024
GIB = 1024**3
MLA_MODES = ("latent", "expanded")
# config.json keys that describe the checkpoint, not the architecture: left out when instantiating.
NOT_ARCHITECTURE = ("quantization_config", "auto_map", "transformers_version")


# ----------------------------------------------------------------------------- configurations

def available_configs() -> list[str]:
    """Names of the stored configurations (file names in data/model_configs without .json)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name: str) -> dict:
    """The configuration dict stored as data/model_configs/<name>.json ("_source" etc. included)."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"No model configuration named {name!r}; available: {', '.join(available_configs())}.")
    return json.loads(path.read_text())


def falcon_configs() -> dict[str, dict]:
    """Falcon-7B's and Falcon-40B's published attention fields ("falcon-7b", "falcon-40b"), each with
    "_source" and "_verified", from data/kv/falcon_configs.json (seed 003's MQA example, checked)."""
    return json.loads((REPO_ROOT / "data" / "kv" / "falcon_configs.json").read_text())["models"]


def _first(cfg: dict, *keys: str):
    """The first of `keys` present in cfg with a non-None value (GPT-2 names fields n_layer, n_head, n_embd)."""
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return None


def attention_shape(cfg: dict) -> dict:
    """Layers, query heads, KV heads, head_dim and the attention kind: "MHA", "GQA", "MQA" or "MLA".

    head_dim is the config's own when it has one (Mistral, Llama-3.2), else hidden_size / heads. For
    MLA it is the query/key head width qk_nope_head_dim + qk_rope_head_dim (transformers' DeepSeek-V3
    config sets its ``head_dim`` field to qk_rope_head_dim, which is not the head width), and the
    dict adds ``latent_dim`` = kv_lora_rank + qk_rope_head_dim, the width of what is cached.
    """
    layers = _first(cfg, "num_hidden_layers", "n_layer")
    q_heads = _first(cfg, "num_attention_heads", "n_head")
    if layers is None or q_heads is None:
        raise ValueError("The config names no layer count or head count (num_hidden_layers/n_layer, "
                         "num_attention_heads/n_head); pass a decoder's config.json as a dict.")
    kv_heads = _first(cfg, "num_key_value_heads")
    if kv_heads is None and cfg.get("model_type") == "falcon":  # read as transformers' FalconAttention does:
        new_arch, mqa = cfg.get("new_decoder_architecture"), cfg.get("multi_query", True)  # Falcon-40B sets both
        kv_heads = cfg.get("num_kv_heads") if new_arch or not mqa else 1
    kv_heads = kv_heads or q_heads  # OPT, GPT-2, Llama-2-7B: one KV head per query head
    if cfg.get("kv_lora_rank"):
        nope, rope, v = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        return {"layers": layers, "q_heads": q_heads, "kv_heads": kv_heads, "head_dim": nope + rope, "kind": "MLA",
                "latent_dim": cfg["kv_lora_rank"] + rope, "kv_lora_rank": cfg["kv_lora_rank"],
                "qk_nope_head_dim": nope, "qk_rope_head_dim": rope, "v_head_dim": v}
    if q_heads % kv_heads:
        raise ValueError(f"num_attention_heads={q_heads} is not a multiple of num_key_value_heads={kv_heads}: "
                         "each KV head must serve the same number of query heads.")
    head_dim = cfg.get("head_dim")
    if head_dim is None:
        hidden = _first(cfg, "hidden_size", "n_embd")
        if hidden is None or hidden % q_heads:
            raise ValueError(f"Can't infer head_dim: hidden size {hidden} over {q_heads} heads; add 'head_dim'.")
        head_dim = hidden // q_heads
    kind = "MHA" if kv_heads == q_heads else "MQA" if kv_heads == 1 else "GQA"
    return {"layers": layers, "q_heads": q_heads, "kv_heads": kv_heads, "head_dim": head_dim, "kind": kind}


# ----------------------------------------------------------------------------- the cache formula

def _check_mla(mla: str) -> None:
    if mla not in MLA_MODES:
        raise ValueError(f"mla must be one of {MLA_MODES}, not {mla!r}.")


def _check_bytes(bytes_per_element: float) -> None:
    if not bytes_per_element > 0:
        raise ValueError(f"bytes_per_element must be > 0 (2 for fp16/bf16, 1 for fp8/int8, 0.5 for int4), "
                         f"not {bytes_per_element!r}.")


def kv_elements_per_token(cfg: dict, *, mla: str = "latent") -> int:
    """Cached numbers per token, summed over all layers.

    Standard attention (MHA/GQA/MQA): 2 x layers x kv_heads x head_dim (a key and a value per KV head).

    MLA, two ways to cache:
    * "latent": layers x (kv_lora_rank + qk_rope_head_dim): the compressed KV latent plus the one
      shared RoPE key, what DeepSeek's reference inference, vLLM and SGLang cache. It is also what
      the installed transformers (5.17) caches: ``DeepseekV3Attention.forward`` calls
      ``past_key_values.update(kv_nope, k_rot)`` on the latent (shape [batch, 1, seq, kv_lora_rank])
      and the RoPE key ([batch, 1, seq, qk_rope_head_dim]) and expands them into per-head keys and
      values only after reading the cache (``expand_kv``); tests/test_kv_sizes.py measures it.
    * "expanded": layers x heads x (qk_nope_head_dim + qk_rope_head_dim + v_head_dim): per-head keys
      and values, what a cache of ordinary K/V would hold (older transformers versions did this);
      71x more for DeepSeek-V3.
    """
    _check_mla(mla)
    shape = attention_shape(cfg)
    if shape["kind"] != "MLA":
        return 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"]
    if mla == "latent":
        return shape["layers"] * shape["latent_dim"]
    per_head = shape["qk_nope_head_dim"] + shape["qk_rope_head_dim"] + shape["v_head_dim"]
    return shape["layers"] * shape["q_heads"] * per_head


def kv_bytes_per_token(cfg: dict, bytes_per_element: float = 2.0, *, mla: str = "latent") -> float:
    """Cache bytes per token (all layers); 2 bytes per element is fp16/bf16."""
    _check_bytes(bytes_per_element)
    return kv_elements_per_token(cfg, mla=mla) * bytes_per_element


def layer_windows(cfg: dict) -> list[int | None]:
    """Per layer, the sliding-window length, or None for a layer that attends to (and caches) everything.

    Read like transformers does: an explicit ``layer_types`` list wins; Qwen2-style configs slide only
    when ``use_sliding_window`` is true, and then only from layer ``max_window_layers`` on (Qwen2.5-7B
    sets sliding_window=131072 but use_sliding_window=false: no window); otherwise a
    ``sliding_window`` (Mistral-7B-v0.1: 4096) applies to every layer.
    """
    layers = attention_shape(cfg)["layers"]
    window = cfg.get("sliding_window")
    if cfg.get("layer_types"):
        return [window if kind == "sliding_attention" else None for kind in cfg["layer_types"]]
    if not window or cfg.get("use_sliding_window") is False:
        return [None] * layers
    first = cfg.get("max_window_layers", 0) if "use_sliding_window" in cfg else 0
    return [window if i >= first else None for i in range(layers)]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, not {value!r}.")
    return value


def kv_cache_bytes(cfg: dict, *, batch: int, seq_len: int, bytes_per_element: float = 2.0,
                   mla: str = "latent", sliding_window: bool = True) -> float:
    """Bytes of the whole cache for `batch` sequences of `seq_len` tokens each.

    Size = 2 x batch x layers x kv_heads x head_dim x tokens_held x bytes (MLA: see kv_elements_per_token),
    where tokens_held = seq_len, except in sliding-window layers when `sliding_window` is True: a
    rolling buffer then holds at most `window` tokens per sequence (Mistral-7B-v0.1: 4096), since
    older tokens are never attended to again. That is what Mistral's reference rolling-buffer cache
    and transformers' StaticSlidingWindowLayer allocate. transformers' default DynamicSlidingWindowLayer
    keeps tensors of window - 1 tokens between steps (the incoming token makes `window`), but they
    are views into a buffer of `window` tokens, so the memory held matches this formula (the tests
    measure both). Pass sliding_window=False for a cache that keeps everything.
    """
    _positive_int("batch", batch)
    _positive_int("seq_len", seq_len)
    _check_bytes(bytes_per_element)
    shape = attention_shape(cfg)
    per_layer = kv_elements_per_token(cfg, mla=mla) // shape["layers"]  # same width in every layer
    windows = layer_windows(cfg) if sliding_window else [None] * shape["layers"]
    tokens_held = sum(seq_len if w is None else min(seq_len, w) for w in windows)  # summed over layers
    return batch * tokens_held * per_layer * bytes_per_element


# ----------------------------------------------------------------------------- parameters and weights

def _architecture_fields(cfg: dict) -> dict:
    """The config without bookkeeping ("_source", "_name_or_path", ...) and checkpoint-only keys."""
    if not cfg.get("model_type"):
        raise ValueError("The config has no 'model_type'; transformers needs it to build the model.")
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in NOT_ARCHITECTURE}


@functools.lru_cache(maxsize=None)
def _count_on_meta(frozen: str) -> int:
    """Build the model on the meta device (shapes only, no memory) and count its parameters."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = json.loads(frozen)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # tied embeddings are one parameter, counted once


def parameter_count(cfg: dict) -> int:
    """Exact parameter count of the causal LM that transformers builds from this config.

    For DeepSeek-V3 this is the main model (671.0B): transformers does not instantiate the
    multi-token-prediction module that the hub checkpoint also carries (685B in all).
    """
    return _count_on_meta(json.dumps(_architecture_fields(cfg), sort_keys=True))


def moe_layout(cfg: dict) -> dict | None:
    """For a mixture-of-experts config: how many MoE layers, experts, experts per token, parameters per
    routed expert. None for a dense model."""
    experts = _first(cfg, "num_local_experts", "n_routed_experts", "num_experts")
    if not experts:
        return None
    layers, hidden = attention_shape(cfg)["layers"], cfg["hidden_size"]
    if cfg["model_type"] == "mixtral":  # every layer is MoE; each expert is a full-width SwiGLU FFN
        moe_layers, expert_width = layers, cfg["intermediate_size"]
    elif cfg["model_type"] == "deepseek_v3":  # the first k layers are dense, the rest MoE with narrow experts
        moe_layers, expert_width = layers - cfg["first_k_dense_replace"], cfg["moe_intermediate_size"]
    else:
        raise ValueError(f"moe_layout knows Mixtral's and DeepSeek-V3's expert layout, not {cfg['model_type']!r}.")
    # A SwiGLU expert: gate and up projections (hidden -> width) and down (width -> hidden), no biases.
    return {"moe_layers": moe_layers, "experts": experts, "top_k": cfg["num_experts_per_tok"],
            "expert_params": 3 * hidden * expert_width}


def active_parameter_count(cfg: dict) -> int:
    """Parameters a token touches: everything except the routed experts the router did not pick.

    active = total - moe_layers x (experts - top_k) x params_per_expert. Attention, embeddings, the
    output head, the routers and DeepSeek's always-on shared expert all count. Equals
    parameter_count for a dense model. (DeepSeek's own 36.6B also leaves out the input embedding,
    a table lookup rather than a matrix product; Mixtral's 12.9B keeps it.)
    """
    layout = moe_layout(cfg)
    total = parameter_count(cfg)
    if layout is None:
        return total
    idle = layout["moe_layers"] * (layout["experts"] - layout["top_k"]) * layout["expert_params"]
    return total - idle


def weight_bytes(cfg: dict, bytes_per_element: float = 2.0) -> float:
    """Bytes of all the weights at `bytes_per_element` (2: fp16/bf16)."""
    _check_bytes(bytes_per_element)
    return parameter_count(cfg) * bytes_per_element


def crossover_tokens(cfg: dict, bytes_per_element: float = 2.0, *, mla: str = "latent") -> float:
    """Cached tokens (batch x tokens held per sequence) at which the cache weighs as much as the weights.

    Both at `bytes_per_element`, so the answer doesn't depend on it when cache and weights share a format.
    """
    return weight_bytes(cfg, bytes_per_element) / kv_bytes_per_token(cfg, bytes_per_element, mla=mla)


def size_rows(names: list[str] | None = None, *, seq_len: int = 4096, batch: int = 1) -> list[dict]:
    """One row per stored configuration for course_lib.print_table: shapes, cache and weight sizes (fp16)."""
    rows = []
    for name in names if names is not None else available_configs():
        cfg = load_config(name)
        shape = attention_shape(cfg)
        rows.append({
            "model": name,
            "attention": shape["kind"],
            "layers": shape["layers"],
            "q heads": shape["q_heads"],
            "kv heads": shape["kv_heads"],
            "head dim": shape["head_dim"],
            "KiB/token": kv_bytes_per_token(cfg) / KIB,
            f"cache GiB @{batch}x{seq_len}": kv_cache_bytes(cfg, batch=batch, seq_len=seq_len) / GIB,
            "weights GiB": weight_bytes(cfg) / GIB,
            "crossover tokens": crossover_tokens(cfg),
        })
    return rows


# ----------------------------------------------------------------------------- measuring a real cache

def _tensor_bytes(tensors, storage: bool, seen: set) -> int:
    total = 0
    for t in tensors:
        if t is None or not hasattr(t, "untyped_storage"):
            continue
        if not storage:
            total += t.nbytes
            continue
        buffer = t.untyped_storage()
        if buffer.data_ptr() not in seen:  # a buffer shared by several views counts once
            seen.add(buffer.data_ptr())
            total += buffer.nbytes()
    return total


def cache_tensor_bytes(past_key_values, *, storage: bool = False) -> int:
    """Bytes of every key and value tensor held by a transformers cache (``out.past_key_values``).

    Reads transformers 5 caches (DynamicCache, StaticCache, ...: ``.layers[i].keys`` / ``.values``),
    an EncoderDecoderCache (both halves), or the legacy tuple of (key, value) pairs. With
    storage=False it sums ``tensor.nbytes`` (the elements the tensors show); with storage=True it sums
    the buffers behind them, once each, i.e. the memory the cache keeps alive: a sliding-window
    layer's tensors are views into a larger buffer. A StaticCache counts its whole preallocation.
    """
    seen: set = set()
    if hasattr(past_key_values, "self_attention_cache") and hasattr(past_key_values, "cross_attention_cache"):
        return (cache_tensor_bytes(past_key_values.self_attention_cache, storage=storage)
                + cache_tensor_bytes(past_key_values.cross_attention_cache, storage=storage))
    if hasattr(past_key_values, "layers"):
        total = 0
        for layer in past_key_values.layers:
            if hasattr(layer, "_quantized_keys"):
                raise TypeError("A quantized transformers cache packs its tensors in the quantizer's own format; "
                                "measure quantized caches with course_lib.kv.quant instead.")
            total += _tensor_bytes((getattr(layer, "keys", None), getattr(layer, "values", None)), storage, seen)
        return total
    if isinstance(past_key_values, (tuple, list)) and all(isinstance(p, (tuple, list)) for p in past_key_values):
        return sum(_tensor_bytes(pair, storage, seen) for pair in past_key_values)
    raise TypeError(f"Don't know how to read a cache of type {type(past_key_values).__name__}: pass "
                    "out.past_key_values from a transformers model run with use_cache=True.")
