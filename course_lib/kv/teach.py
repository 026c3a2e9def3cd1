"""Notebook helpers for chapter 09: comparison tables and plots built on the kv modules."""

from __future__ import annotations

import math

import torch

from .quant import KVQuant, simulate


@torch.no_grad()
def quality_rows(decoder, input_ids: torch.Tensor, schemes: list[KVQuant], *, head_dim: int | None = None,
                 n_tokens: int = 512) -> list[dict]:
    """One row per scheme: stored bits per cached number, and the damage against the float cache.

    KL = mean over positions of KL(p_float || p_quant) in nats; perplexity on `input_ids`; Δ nll =
    change of the mean next-token loss (log of the perplexity ratio); top-1 = how often the argmax
    token is unchanged. The first row is the float cache itself.
    Bits are counted at `n_tokens` cached tokens (KIVI's full-precision window included).
    """
    head_dim = head_dim or decoder.blocks[0].attn.head_dim
    base = torch.log_softmax(decoder(input_ids).logits.float(), -1)
    target = input_ids[:, 1:, None]
    base_nll = -base[:, :-1].gather(-1, target).mean().item()
    rows = [{"cache": "float (no quantization)", "bits/number": 8.0 * decoder.lm_head.weight.element_size(),
             "KL (nats)": 0.0, "perplexity": math.exp(base_nll), "Δ nll": 0.0, "top-1 same": 1.0}]
    for scheme in schemes:
        lq = torch.log_softmax(decoder(input_ids, kv_hook=simulate(scheme)).logits.float(), -1)
        bits = scheme.cache_bytes(n_tokens, n_layers=1, n_kv_heads=1, head_dim=head_dim) * 8 / (2 * n_tokens * head_dim)
        nll = -lq[:, :-1].gather(-1, target).mean().item()
        rows.append({"cache": scheme.label, "bits/number": bits,
                     "KL (nats)": (base.exp() * (base - lq)).sum(-1).mean().item(),
                     "perplexity": math.exp(nll), "Δ nll": nll - base_nll,
                     "top-1 same": (base.argmax(-1) == lq.argmax(-1)).float().mean().item()})
    return rows


def quality_plot(rows: list[dict], ax=None):
    """Bits stored per cached number against the KL to the float cache (log scale), one point per scheme."""
    from ..core.plotting import new_axes

    if ax is None:
        _, ax = new_axes()
    for r in rows:
        if r["KL (nats)"] > 0:
            ax.scatter(r["bits/number"], r["KL (nats)"])
            ax.annotate(r["cache"].replace(", no fp window", " -w"), (r["bits/number"], r["KL (nats)"]), fontsize=7)
    ax.set(xlabel="bits per cached number", ylabel="KL to the float cache (nats)", yscale="log",
           title="cache memory against damage")
    return ax


def decode_time_plot(rows: list[dict], title: str, ax=None):
    """Milliseconds per decode step against the position written (CPU recording) or the tokens already
    cached (``context``, GPU recording), one line per mode."""
    from ..core.plotting import new_axes

    if ax is None:
        _, ax = new_axes()
    x = "context" if "context" in rows[0] else "position"
    for mode in sorted({r["mode"] for r in rows}):
        sel = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r[x])
        ax.plot([r[x] for r in sel], [r["ms"] for r in sel], marker=".", label=mode)
    label = "tokens already cached" if x == "context" else "position of the token being generated"
    ax.set(xlabel=label, ylabel="ms per step", title=title)
    ax.set_ylim(bottom=0)
    ax.legend()
    return ax


def serving_plot(results: dict, labels: dict, ax_pair=None):
    """Left: running sequences per step; right: KV slots holding tokens / slots held, per policy."""
    from ..core.plotting import new_axes

    if ax_pair is None:
        _, ax_pair = new_axes(ncols=2)
    left, right = ax_pair
    for policy, r in results.items():
        h = r.history
        left.plot(h["batch"], label=labels[policy])
        held = h["held"].astype(float)
        right.plot(h["stored"] / held.clip(min=1), label=labels[policy])
    left.set(xlabel="step", ylabel="sequences running", title="concurrency")
    right.set(xlabel="step", ylabel="token slots / slots held", title="memory holding real tokens", ylim=(0, 1.05))
    left.legend()
    return ax_pair


def flops_rows(config, positions: list[int]) -> list[dict]:
    """FLOPs of one decode step with and without the cache at several positions."""
    from .generate import step_flops

    rows = []
    for n in positions:
        with_cache, without = step_flops(config, n - 1, use_cache=True), step_flops(config, n - 1, use_cache=False)
        rows.append({"position": n, "GFLOP with cache": with_cache / 1e9, "GFLOP without": without / 1e9,
                     "without / with": without / with_cache})
    return rows


def falcon_rows() -> list[dict]:
    """Falcon-7B and Falcon-40B: their config flags, the KV heads the config implies (``sizes``), the KV
    heads in the weights (the fused query_key_value projection of the model built on the meta device:
    (q heads + 2 x KV heads) x head_dim outputs), and how many heads transformers' cache stores per KV
    head, measured on a small random model with the same flags and the same query-to-KV ratio."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .sizes import attention_shape, falcon_configs

    rows = []
    for name, cfg in falcon_configs().items():
        fields = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "model_type"}
        shape = attention_shape(cfg)
        with torch.device("meta"):
            big = AutoModelForCausalLM.from_config(AutoConfig.for_model("falcon", **fields))
        qkv = big.transformer.h[0].self_attention.query_key_value.out_features
        ratio = shape["q_heads"] // shape["kv_heads"]
        heads = 2 * ratio if cfg["new_decoder_architecture"] else 8  # 2 KV groups, or MQA over 8 heads
        small = {**fields, "hidden_size": 4 * heads, "num_hidden_layers": 1, "num_attention_heads": heads,
                 "num_kv_heads": heads // ratio if cfg["new_decoder_architecture"] else heads, "vocab_size": 64}
        torch.manual_seed(0)
        with torch.no_grad():
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model("falcon", **small)).eval()
            past = model(input_ids=torch.ones(1, 3, dtype=torch.long), use_cache=True).past_key_values
        cached = past.layers[0].keys.shape[1] / attention_shape({**small, "model_type": "falcon"})["kv_heads"]
        rows.append({"model": name, "multi_query": cfg["multi_query"],
                     "new_decoder_architecture": cfg["new_decoder_architecture"], "q heads": shape["q_heads"],
                     "KV heads (config)": shape["kv_heads"],
                     "KV heads (weights)": (qkv // shape["head_dim"] - shape["q_heads"]) // 2,
                     "attention": shape["kind"], "transformers caches x KV heads": cached})
    return rows


def pretty_bytes(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = min(int(math.log(max(n, 1), 1024)), len(units) - 1)
    return f"{n / 1024**i:.4g} {units[i]}"
