"""Greedy generation with and without a KV cache, timed per step, and its cost counted in FLOPs.

The seed's ``generate_with_kv_cache`` (003 §6.5.1), rewritten so that it works:

* a batch of prompts, left-padded, with an attention mask and per-row positions;
* the step input is (B, 1), one new token per row;
* each row stops at its EOS (it then emits padding) and the loop stops when every row has;
* ``max_new_tokens`` counts generated tokens (the seed's ``max_length`` counted loop steps).

``generate`` accepts a transformers model (its own ``DynamicCache``) or a ``CourseDecoder`` (the
course's ``KVCache`` or a quantized one): the same loop, two implementations of the cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .attention import KVCache
from .decoder import CourseDecoder


@dataclass
class Generation:
    tokens: torch.Tensor                 # (B, prompt + generated), padding included
    new_tokens: int                      # decode steps taken
    step_seconds: list[float] = field(default_factory=list)  # step 0 is the prefill
    finished: torch.Tensor | None = None  # (B,) bool: reached EOS


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(model, ids, mask, cache, use_cache: bool):
    """Logits of the last position and the updated cache, for either kind of model."""
    if isinstance(model, CourseDecoder):
        if use_cache:
            return model(ids, cache=cache, attention_mask=mask, logits_to_keep=1).logits[:, -1], cache
        return model(ids, attention_mask=mask, logits_to_keep=1).logits[:, -1], None
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=use_cache,
                logits_to_keep=1)
    return out.logits[:, -1], (out.past_key_values if use_cache else None)


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, *, use_cache: bool = True,
             attention_mask: torch.Tensor | None = None, eos_token_id: int | None = None, pad_token_id: int = 0,
             cache_factory: Callable[[], object] | None = None, time_steps: bool = False) -> Generation:
    """Greedy decoding of `max_new_tokens` tokens after a (left-padded) batch of prompts.

    use_cache=False recomputes the whole sequence at every step (the seed's "without KV cache").
    cache_factory: for a CourseDecoder, builds the cache (default: the plain ``KVCache``).
    The prompt (and its mask) are moved to the model's device, where the tokens are returned.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}; "
                         "add a batch dimension with input_ids[None].")
    device = next(model.parameters()).device  # a tokenizer's tensors are on the CPU; the model may not be
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
        raise ValueError(f"prompt ({input_ids.shape[1]}) + {max_new_tokens} new tokens exceeds the model's "
                         f"{limit} positions; generate fewer tokens or shorten the prompt.")
    cache = None
    if use_cache and isinstance(model, CourseDecoder):
        cache = cache_factory() if cache_factory else KVCache(model.n_layers)
    tokens, finished = input_ids, torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    step_input, times = input_ids, []
    for step in range(max_new_tokens):
        t0 = time.perf_counter()
        if use_cache:
            logits, cache = _forward(model, step_input, mask, cache, True)
        else:
            logits, _ = _forward(model, tokens, mask, None, False)  # everything, every step
        nxt = logits.argmax(-1)
        if time_steps:
            _sync(device)
            times.append(time.perf_counter() - t0)
        nxt = torch.where(finished, torch.full_like(nxt, pad_token_id), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)
        if eos_token_id is not None:
            finished = finished | (nxt == eos_token_id)
        step_input = nxt[:, None]  # (B, 1): one new token per row
        if bool(finished.all()):
            return Generation(tokens, step + 1, times, finished)
    return Generation(tokens, max_new_tokens, times, finished)


# ----------------------------------------------------------------------------- cost
def step_flops(config, context: int, *, use_cache: bool) -> int:
    """Matmul FLOPs of one greedy step that produces token number `context` + 1.

    With the cache only the new token goes through the layers: the projections and MLP cost
    2·(params per token), attention reads `context` + 1 cached keys and values: O(n) per step.
    Without it all n = context + 1 tokens are recomputed: n times the projections and an n×n
    score matrix per head: O(n·P + n²·d) per step.
    """
    d_model, n_layers = config.hidden_size, config.num_hidden_layers
    h, h_kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d_model // h
    inter, vocab = config.intermediate_size, config.vocab_size
    proj = 2 * d_model * (2 * h * head_dim + 2 * h_kv * head_dim) + 2 * 3 * d_model * inter  # per token per layer
    n = context + 1
    tokens, keys = (1, n) if use_cache else (n, n)
    attention = 2 * 2 * h * head_dim * tokens * keys  # q·kᵀ and p·v
    return n_layers * (tokens * proj + attention) + 2 * d_model * vocab  # lm_head only on the last position


def total_flops(config, prompt: int, new_tokens: int, *, use_cache: bool) -> int:
    """FLOPs to generate `new_tokens` after a `prompt`; the prefill is step 0 either way."""
    prefill = step_flops(config, prompt - 1, use_cache=False)
    return prefill + sum(step_flops(config, prompt + i, use_cache=use_cache) for i in range(new_tokens - 1))


def per_step_times(model, prompt_ids: torch.Tensor, new_tokens: int, *, use_cache: bool, repeats: int = 1) -> list[float]:
    """Median over `repeats` runs of each decode step's seconds (the prefill step dropped)."""
    runs = [generate(model, prompt_ids, new_tokens, use_cache=use_cache, time_steps=True).step_seconds[1:]
            for _ in range(repeats)]
    return [sorted(col)[len(col) // 2] for col in zip(*runs)]
