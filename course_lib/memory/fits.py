"""Does it fit? The longest context per model, weight precision and card; and the seeds' claims, checked.

    fits_table()                 # Llama-2-7B ... Llama-3-70B x 16/8/4/4.65 bits x 24/48/80 GB cards
    claim_70b_fp16()             # "70B needs 140 GB+ in fp16": 141.1 GB of weights, yes
    int4_ratio("Meta-Llama-3-8B")    # "INT4 is a quarter of FP16": 0.357 for the 8B (scales, zeros, 16-bit embeddings)
    kv_vs_weights()              # "at 128k the KV cache exceeds the weights": not at batch 1 with fp16 weights

A card of "80 GB" is read as 80 GiB (an H100 80GB reports 79.6 GiB usable, an RTX 4090 24 GiB).
"Fits" means weights + KV cache + activations + cuBLAS workspace + CUDA context <= the card, at the
larger of the two phases: the prefill of the whole context in one forward pass (transformers does
that unless told to chunk: its MLP intermediates grow with the context) and a decode step.
"""

from __future__ import annotations

from ..kv import sizes
from .estimate import GB, GIB, PHASES, config_dict, estimate
from .shapes import ModelShape, gptq, weight_bytes

FITS_MODELS = ("Llama-2-7b-hf", "Meta-Llama-3-8B", "Mistral-7B-v0.1", "Qwen2.5-7B", "Meta-Llama-3-70B", "Llama-3.1-70B")


def weights_for_bits(bits: float):
    """The storage that a bit width stands for here: 16 -> fp16; 8 -> int8 linears; an integer below 8 ->
    GPTQ at group 128 with packed zeros and g_idx; anything else -> that many bits per weight, flat (an
    EXL2 or bitsandbytes average). Below 16 bits the embedding, lm_head and norms stay in fp16."""
    if bits == 16:
        return "float16"
    if bits == 8:
        return "int8"
    if float(bits).is_integer() and 2 <= bits < 8:
        return gptq(int(bits), 128)
    return float(bits)


def label_for_bits(bits: float) -> str:
    return {16: "fp16", 8: "int8"}.get(bits) or (f"{int(bits)}-bit g128" if float(bits).is_integer() else f"{bits} bpw")


def fits(config, context: int, card_bytes: float, *, batch: int = 1, weights="float16", phase: str = "both",
         kv_dtype="float16") -> bool:
    """Whether the peak (allocator + CUDA context) at this context fits in card_bytes."""
    phases = PHASES if phase == "both" else (phase,)
    return all(estimate(config, batch=batch, context=context, phase=p, dtype="float16", weights=weights,
                        kv_dtype=kv_dtype).total_device <= card_bytes for p in phases)


def longest_context(config, card_bytes: float, *, batch: int = 1, weights="float16", phase: str = "both",
                    limit: int | None = None) -> int:
    """The largest context (tokens per sequence, at most `limit`, default the model's max_position_embeddings)
    that fits; 0 when not even one token does (the weights alone are too big)."""
    cfg = config_dict(config)
    limit = limit or cfg.get("max_position_embeddings") or 131072
    if not fits(cfg, 1, card_bytes, batch=batch, weights=weights, phase=phase):
        return 0
    lo, hi = 1, limit  # invariant: lo fits; binary search on a peak that grows with the context
    if fits(cfg, hi, card_bytes, batch=batch, weights=weights, phase=phase):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(cfg, mid, card_bytes, batch=batch, weights=weights, phase=phase) else (lo, mid)
    return lo


def fits_table(models=FITS_MODELS, bits=(16, 8, 4, 4.65), cards_gb=(24, 48, 80), batch: int = 1, *,
               phase: str = "both") -> list[dict]:
    """One row per model and bit width: weight GiB, and per card the longest context that fits (0: the
    weights alone don't fit; the model's max_position_embeddings when everything up to it fits)."""
    rows = []
    for name in models:
        cfg = sizes.load_config(name)
        shape = ModelShape.from_config(cfg)
        for b in bits:
            w = weights_for_bits(b)
            row = {"model": name, "weights": label_for_bits(b), "weights GiB": weight_bytes(shape, w) / GIB,
                   "max positions": cfg.get("max_position_embeddings")}
            for card in cards_gb:
                row[f"{card} GB"] = longest_context(cfg, card * GIB, batch=batch, weights=w, phase=phase)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the seeds' claims

def claim_70b_fp16(name: str = "Meta-Llama-3-70B") -> dict:
    """"A 70B model needs 140 GB+ in fp16": the weights alone, in GB (1e9) and GiB."""
    w = weight_bytes(ModelShape.from_config(sizes.load_config(name)), "float16")
    return {"model": name, "weights GB": w / GB, "weights GiB": w / GIB, "holds": w >= 140 * GB}


def int4_ratio(name: str = "Meta-Llama-3-8B", *, group_size: int = 128) -> dict:
    """"INT4 is a quarter of FP16": the real ratio of GPTQ 4-bit weights (fp16 scale and 4-bit zero per
    group, int32 g_idx, embedding and lm_head left in fp16) to fp16 weights."""
    shape = ModelShape.from_config(sizes.load_config(name))
    fp16 = weight_bytes(shape, "float16")
    q = weight_bytes(shape, gptq(4, group_size), detail=True)
    linear_params = sum(shape.layers * i * o for i, o, _ in shape.linear_shapes().values())
    return {"model": name, "group size": group_size, "fp16 GB": fp16 / GB, "int4 GB": sum(q.values()) / GB,
            "ratio": sum(q.values()) / fp16, "linear bits/weight": 8 * q["linears"] / linear_params,
            "fp16 embedding + lm_head GB": (q["embedding"] + q["lm_head"]) / GB}


def kv_vs_weights(name: str = "Llama-3.1-70B", *, context: int = 131072, bits=(16, 8, 4)) -> list[dict]:
    """"At 128k context the KV cache exceeds the weights": per weight precision (fp16 cache), the cache
    and the weights at batch 1, and the smallest batch at which the cache outweighs the weights."""
    cfg = sizes.load_config(name)
    shape = ModelShape.from_config(cfg)
    per_sequence = sizes.kv_cache_bytes(cfg, batch=1, seq_len=context)
    rows = []
    for b in bits:
        w = weight_bytes(shape, weights_for_bits(b))
        rows.append({"model": name, "weights": label_for_bits(b), "weights GB": w / GB,
                     f"KV GB @1x{context}": per_sequence / GB, "KV > weights at batch 1": per_sequence > w,
                     "smallest batch with KV > weights": int(w // per_sequence) + 1})
    return rows
