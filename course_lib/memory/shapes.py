"""A decoder's shapes, its parameter count by formula, and the bytes of its weights under a storage scheme.

Supported: the llama, mistral and qwen2 families, decoder blocks of attention + SwiGLU MLP. Per
layer (h hidden, I intermediate, Hq query heads, Hk KV heads, d head_dim):

    q_proj h x Hq d   k_proj, v_proj h x Hk d   o_proj Hq d x h      (+ biases: qwen2 on q/k/v)
    gate_proj, up_proj h x I                     down_proj I x h      (+ biases with mlp_bias)
    2 RMSNorm weights of h

plus the embedding (V x h), the final norm (h) and lm_head (h x V, none when tied to the embedding).

Weights are stored per linear layer by a ``Scheme``: a plain dtype (fp32, fp16/bf16, fp8/int8) or
grouped integer quantization (GPTQ-style: packed codes, an fp16 scale per group and output,
zero points packed at ``bits`` bits or none when symmetric, an optional int32 g_idx per input
column). Embedding, norms, biases and lm_head stay in 16 bits unless said otherwise.

    shape = ModelShape.from_config(load_config("Meta-Llama-3-8B"))
    shape.parameter_count()                         # 8,030,261,248, the same as transformers builds
    weight_bytes(shape, "gptq-4bit-g128")           # 5.73e9 bytes
    weight_bytes(shape, {"default": 4.65})          # EXL2's average bits per weight as one number
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

SUPPORTED = ("llama", "mistral", "qwen2")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class ModelShape:
    """The shapes that set a llama/mistral/qwen2 decoder's memory."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False
    qkv_bias: bool = False     # biases on q/k/v (qwen2 always; llama when attention_bias)
    o_bias: bool = False       # bias on o_proj (llama's attention_bias sets it too, qwen2 never)
    mlp_bias: bool = False     # biases on gate/up/down (llama's mlp_bias)

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a config dict (as kv.sizes.load_config returns) or a transformers PretrainedConfig."""
        cfg = config if isinstance(config, Mapping) else config.to_dict()
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED:
            raise ValueError(f"model_type {model_type!r} is not supported; the memory estimator knows "
                             f"{', '.join(SUPPORTED)} (decoder blocks of attention + SwiGLU MLP).")
        for key in REQUIRED:
            if cfg.get(key) is None:
                raise ValueError(f"config has no {key!r}; a {model_type} config.json always names it.")
        hidden, q_heads = cfg["hidden_size"], cfg["num_attention_heads"]
        kv_heads = cfg.get("num_key_value_heads") or q_heads
        if q_heads % kv_heads:
            raise ValueError(f"num_attention_heads={q_heads} is not a multiple of num_key_value_heads={kv_heads}.")
        head_dim = cfg.get("head_dim") or hidden // q_heads  # Mistral's config may say head_dim: null
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(model_type=model_type, hidden=hidden, intermediate=cfg["intermediate_size"],
                   layers=cfg["num_hidden_layers"], q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim,
                   vocab=cfg["vocab_size"], tied=bool(cfg.get("tie_word_embeddings", False)),
                   qkv_bias=model_type == "qwen2" or attention_bias,
                   o_bias=model_type == "llama" and attention_bias,
                   mlp_bias=model_type == "llama" and bool(cfg.get("mlp_bias", False)))

    def linear_shapes(self) -> dict[str, tuple[int, int, bool]]:
        """(in_features, out_features, has_bias) of each linear layer of one decoder block."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (h, q, self.qkv_bias), "k_proj": (h, kv, self.qkv_bias), "v_proj": (h, kv, self.qkv_bias),
                "o_proj": (q, h, self.o_bias), "gate_proj": (h, i, self.mlp_bias), "up_proj": (h, i, self.mlp_bias),
                "down_proj": (i, h, self.mlp_bias)}

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per module kind, summed over the model."""
        counts = {"embedding": self.vocab * self.hidden}
        for name, (n_in, n_out, bias) in self.linear_shapes().items():
            counts[name] = self.layers * (n_in * n_out + (n_out if bias else 0))
        counts["norms"] = (2 * self.layers + 1) * self.hidden  # two RMSNorms per block + the final one
        counts["lm_head"] = 0 if self.tied else self.vocab * self.hidden  # tied: the embedding, counted once
        return counts

    def parameter_count(self) -> int:
        return sum(self.parameter_counts().values())


# ----------------------------------------------------------------------------- storage schemes

@dataclass(frozen=True)
class Scheme:
    """How a weight matrix is stored.

    bits        bits per weight code: 32/16/8 for plain dtypes, 4 for INT4, or an average bits per
                weight (4.65 for an EXL2 mix, ~4.127 for bitsandbytes NF4 with double quantization)
    group_size  weights per quantization group along the input dimension (None: no per-group data;
                -1: one group spanning the whole input, i.e. per output channel)
    scale_bits  bits of each group's scale (fp16: 16)
    zero_bits   bits of each group's zero point: ``bits`` when GPTQ packs them, None when symmetric
    g_idx       an int32 group index per input column (GPTQ with act-order stores it; QuantLinear always)
    """

    bits: float
    group_size: int | None = None
    scale_bits: int = 16
    zero_bits: float | None = None
    g_idx: bool = False

    def matrix_bytes(self, n_in: int, n_out: int) -> float:
        """Bytes of one (n_out x n_in) matrix: codes + per-group scales and zeros + g_idx."""
        codes = n_in * n_out * self.bits / 8
        if self.group_size is None:
            return codes
        if self.group_size == -1:
            groups = 1
        elif self.group_size < 1 or n_in % self.group_size:
            raise ValueError(f"group_size {self.group_size} does not divide in_features {n_in}; pick a group "
                             f"size that divides every quantized layer's input width (e.g. 32, 64 or 128).")
        else:
            groups = n_in // self.group_size
        meta = groups * n_out * (self.scale_bits + (self.zero_bits or 0)) / 8
        return codes + meta + (4 * n_in if self.g_idx else 0)

    def bits_per_weight(self, n_in: int, n_out: int) -> float:
        return 8 * self.matrix_bytes(n_in, n_out) / (n_in * n_out)


DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
               "float8": 1, "fp8": 1, "float8_e4m3fn": 1, "int8": 1}
PLAIN = {name: Scheme(bits=8 * b) for name, b in DTYPE_BYTES.items()}
HALF = Scheme(bits=16)


def gptq(bits: int = 4, group_size: int | None = 128, *, sym: bool = False, g_idx: bool = True) -> Scheme:
    """GPTQ as course_lib.gptq.qlinear.QuantLinear stores it: packed codes, fp16 scales, zeros packed at
    `bits` bits (also for sym=True in that format; pass sym=True with g_idx=False for a symmetric format
    without zeros), int32 g_idx. group_size None: one group per output row (per-channel)."""
    return Scheme(bits=bits, group_size=-1 if group_size in (None, -1) else group_size, zero_bits=None if sym else bits, g_idx=g_idx)


def scheme(spec) -> Scheme:
    """A Scheme from a Scheme, a number of bits per weight, a dtype name ("float16", "fp8", ...) or
    "gptq-<bits>bit-g<group>" ("gptq-4bit-g128"; "gptq-4bit-channel" for one group per row; a "-sym"
    suffix for a symmetric format without zeros or g_idx)."""
    if isinstance(spec, Scheme):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if not spec > 0:
            raise ValueError(f"bits per weight must be > 0, not {spec!r}.")
        return Scheme(bits=float(spec))
    if isinstance(spec, str):
        name = spec.lower().replace("torch.", "")
        if name in PLAIN:
            return PLAIN[name]
        match = re.fullmatch(r"gptq-(\d)bit-(g(\d+)|channel)(-sym)?", name)
        if match:
            group = int(match.group(3)) if match.group(3) else None
            return gptq(int(match.group(1)), group, sym=bool(match.group(4)), g_idx=not match.group(4))
    raise ValueError(f"Unknown weight scheme {spec!r}: pass a dtype name ({', '.join(sorted(DTYPE_BYTES))}), "
                     f"a number of bits per weight (4.65), 'gptq-4bit-g128', or a memory.shapes.Scheme.")


def _is_plain_dtype(spec) -> bool:
    return isinstance(spec, str) and spec.lower().replace("torch.", "") in PLAIN


def weight_plan(shape: ModelShape, weights="float16") -> dict[str, Scheme]:
    """The scheme of every stored matrix: "embed", "lm_head", "other" (norms, biases) and "<layer>.<linear>".

    weights: one spec for every linear layer (see ``scheme``), or a mapping whose keys pick layers,
    most specific first: (layer index, linear name), layer index, linear name, "default". The
    mapping may also set "embed", "lm_head" and "other". A plain dtype name stores *everything* in
    that dtype (fp32 model, fp16 model); an 8-bit dtype or a quantized scheme keeps the embedding,
    lm_head, norms and biases in 16 bits unless the mapping says otherwise.
    """
    spec = weights if isinstance(weights, Mapping) else {"default": weights}
    default = spec.get("default", "float16")
    rest = default if _is_plain_dtype(default) and DTYPE_BYTES[default.lower().replace("torch.", "")] >= 2 else HALF
    plan = {key: scheme(spec.get(key, rest)) for key in ("embed", "lm_head", "other")}
    known = set(LINEARS) | {"default", "embed", "lm_head", "other"}
    for key in spec:
        index = key[0] if isinstance(key, tuple) else key
        if isinstance(index, int) and not 0 <= index < shape.layers or not isinstance(index, int) and key not in known:
            raise ValueError(f"weights has a key {key!r} that names no layer: use a layer index 0..{shape.layers - 1}, "
                             f"a linear name ({', '.join(LINEARS)}), (index, name), 'embed', 'lm_head', 'other' or 'default'.")
    for layer in range(shape.layers):
        for name in LINEARS:
            for key in ((layer, name), layer, name, "default"):
                if key in spec:
                    plan[f"{layer}.{name}"] = scheme(spec[key])
                    break
    return plan


def weight_bytes(shape: ModelShape, weights="float16", *, detail: bool = False):
    """Bytes of all the weights under `weights` (see weight_plan); with detail, a dict per module kind."""
    plan = weight_plan(shape, weights)
    parts = {"embedding": plan["embed"].matrix_bytes(shape.hidden, shape.vocab),
             "lm_head": 0.0 if shape.tied else plan["lm_head"].matrix_bytes(shape.hidden, shape.vocab),
             "norms": (2 * shape.layers + 1) * shape.hidden * plan["other"].bits / 8, "linears": 0.0, "biases": 0.0}
    for layer in range(shape.layers):
        for name, (n_in, n_out, bias) in shape.linear_shapes().items():
            parts["linears"] += plan[f"{layer}.{name}"].matrix_bytes(n_in, n_out)
            parts["biases"] += n_out * plan["other"].bits / 8 if bias else 0.0
    return parts if detail else sum(parts.values())


def bits_per_weight(shape: ModelShape, weights="float16", *, linears_only: bool = False) -> float:
    """Average stored bits per parameter: over the linear layers only, or over the whole model."""
    parts = weight_bytes(shape, weights, detail=True)
    counts = shape.parameter_counts()
    if linears_only:
        n = sum(shape.layers * n_in * n_out for n_in, n_out, _ in shape.linear_shapes().values())
        return 8 * parts["linears"] / n
    return 8 * sum(parts.values()) / sum(counts.values())
