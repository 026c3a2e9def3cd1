"""A Llama-architecture transformers model written to a GGUF file with the ``gguf`` package, and read back.

    write_gguf(model, "model-Q8_0.gguf", "Q8_0", tokenizer_json="data/course-model/tokenizer.json")
    AutoModelForCausalLM.from_pretrained(folder, gguf_file="model-Q8_0.gguf")     # transformers de-quantizes it

What a converter does (llama.cpp's ``convert_hf_to_gguf.py`` does the same for many architectures):

* metadata under the architecture's prefix (``llama.block_count``, ``llama.attention.head_count_kv``, ...);
* the tokenizer: a byte-level BPE's tokens, their types (normal, or control for special tokens) and merges,
  with ``tokenizer.ggml.model = "gpt2"`` and the pre-tokenizer declared as ``"gpt-2"`` (the course's tokenizer
  splits like GPT-2; llama.cpp refuses a BPE tokenizer whose pre-tokenizer it does not know);
* tensors renamed (``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``), and q and k permuted:
  transformers' rotary embedding rotates the two halves of a head (x_i with x_{i + d/2}), GGML's rotates
  neighbouring pairs (x_{2i} with x_{2i+1}), so the rows of each head are reordered; readers undo it;
* 2-D weights quantized to the chosen block type (``gguf.quants.quantize``), norms kept in float32; a tied output
  head is not written twice (llama.cpp's converter leaves out ``output.weight`` too, and readers re-tie it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WRITABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf_name: str) -> str:
    """transformers' parameter name -> GGUF's tensor name (Llama)."""
    if hf_name in _TOP:
        return _TOP[hf_name]
    parts = hf_name.split(".")
    inner = ".".join(parts[3:-1])
    if len(parts) < 5 or parts[:2] != ["model", "layers"] or inner not in _LAYER:
        raise ValueError(f"No GGUF name for the parameter {hf_name!r} (a Llama model's parameters only).")
    return f"blk.{int(parts[2])}.{_LAYER[inner]}.{parts[-1]}"


def rotary_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head reordered from halves (x_i, x_{i+d/2}) to neighbouring pairs (x_{2i}, x_{2i+1})."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_fields(tokenizer_json) -> tuple[list[str], list[int], list[str]]:
    data = json.loads(Path(tokenizer_json).read_text())
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"Only byte-level BPE tokenizers are written here; this one is {model.get('type')!r}.")
    vocab = model["vocab"]
    tokens = [""] * (max(vocab.values()) + 1)
    for text, index in vocab.items():
        tokens[index] = text
    types = [1] * len(tokens)                                   # 1: normal
    for added in data.get("added_tokens", []):
        if added["id"] < len(tokens):
            tokens[added["id"]] = added["content"]
            types[added["id"]] = 3 if added.get("special") else 4  # 3: control, 4: user defined
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def write_gguf(model, path, kind: str = "F16", *, tokenizer_json=None) -> Path:
    """Write a LlamaForCausalLM to `path`, its 2-D weights in `kind` (norms in float32); the tokenizer's fields
    too when `tokenizer_json` (a tokenizers BPE file) is given."""
    import gguf

    if kind not in WRITABLE:
        raise ValueError(f"The gguf package writes {', '.join(WRITABLE)}; got {kind!r}. K-quants need llama.cpp's "
                         "quantizer (or course_lib.mixed.kquants for Q4_K blocks).")
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise ValueError(f"write_gguf writes Llama models; this is {getattr(cfg, 'model_type', None)!r}.")
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    theta = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type({"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "BF16": 32}[kind])
    if tokenizer_json is not None:
        tokens, types, merges = _tokenizer_fields(tokenizer_json)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
    for name, value in (("bos", cfg.bos_token_id), ("eos", cfg.eos_token_id), ("pad", cfg.pad_token_id)):
        if value is not None:
            getattr(w, f"add_{name}_token_id")(value if isinstance(value, int) else value[0])
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if "rotary_emb" in hf_name or (tied and hf_name == "lm_head.weight"):
            continue                      # a tied output head is the embedding: readers re-tie it, as llama.cpp does
        name = gguf_name(hf_name)
        arr = tensor.detach().float().cpu().numpy()
        if name.endswith("attn_q.weight"):
            arr = rotary_permute(arr, heads)
        elif name.endswith("attn_k.weight"):
            arr = rotary_permute(arr, kv_heads)
        if arr.ndim == 1 or kind == "F32":
            w.add_tensor(name, arr.astype(np.float32))
        elif kind == "F16":
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
