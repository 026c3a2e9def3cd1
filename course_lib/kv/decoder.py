"""A Llama-style decoder written from scratch that runs on a transformers model's own weights.

    dec = CourseDecoder.from_hf(model)            # shares the weights, copies nothing
    cache = KVCache(dec.n_layers)
    logits = dec(prompt_ids, cache=cache).logits  # prefill: fills the cache
    logits = dec(next_ids, cache=cache).logits    # one decode step: one new token per row

Every piece is visible: RMSNorm, RoPE attention with the course's cache (``kv.attention``), the
SwiGLU MLP. Its logits equal the transformers model's to float32 rounding (tested), so anything
measured on it (a quantized cache, fewer KV heads) is a statement about the real model.

Supported: Llama, Qwen2 (q/k/v biases) and Mistral without a sliding window, i.e. the
architectures whose blocks are ``x + attn(norm(x))`` then ``x + mlp(norm(x))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import AttentionWithKVCache, KVCache

SUPPORTED = ("llama", "qwen2", "mistral")


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · w, computed in float32."""

    def __init__(self, weight: nn.Parameter, eps: float):
        super().__init__()
        self.weight, self.eps = weight, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x))."""

    def __init__(self, gate: nn.Linear, up: nn.Linear, down: nn.Linear):
        super().__init__()
        self.gate, self.up, self.down = gate, up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, attn: AttentionWithKVCache, mlp: SwiGLU, norm1: RMSNorm, norm2: RMSNorm):
        super().__init__()
        self.attn, self.mlp, self.norm1, self.norm2 = attn, mlp, norm1, norm2

    def forward(self, x, positions, cache, layer, key_mask, kv_hook):
        x = x + self.attn(self.norm1(x), positions, cache=cache, layer=layer, key_mask=key_mask, kv_hook=kv_hook)
        return x + self.mlp(self.norm2(x))


@dataclass
class DecoderOutput:
    logits: torch.Tensor


def positions_for(input_len: int, cache: KVCache | None, attention_mask: torch.Tensor | None, batch: int,
                  device) -> torch.Tensor:
    """Absolute positions (B, T) of the new tokens.

    Without padding the new tokens sit at cache_len .. cache_len + T - 1. With a left-padded batch
    (attention_mask (B, T_total), 0 for padding) a row's position counts only its real tokens,
    which is what the model saw in training.
    """
    if attention_mask is not None:
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return pos[:, -input_len:]
    start = 0 if cache is None else cache.seq_len(0)
    return torch.arange(start, start + input_len, device=device).expand(batch, input_len)


class CourseDecoder(nn.Module):
    """A decoder-only transformer assembled around a transformers model's parameters."""

    def __init__(self, embed: nn.Embedding, blocks: list[Block], norm: RMSNorm, lm_head: nn.Linear, config):
        super().__init__()
        self.embed, self.blocks, self.norm, self.lm_head = embed, nn.ModuleList(blocks), norm, lm_head
        self.config = config

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @classmethod
    def from_hf(cls, model) -> CourseDecoder:
        """Wrap a transformers Llama/Qwen2/Mistral model; the parameters are shared, not copied."""
        c = model.config
        if c.model_type not in SUPPORTED:
            raise ValueError(f"CourseDecoder reads Llama-style models ({', '.join(SUPPORTED)}); this one is "
                             f"{c.model_type!r}. Use transformers' own forward and cache for it "
                             "(course_lib.kv.generate.generate accepts a transformers model too).")
        if getattr(c, "sliding_window", None) and c.sliding_window < c.max_position_embeddings:
            raise ValueError(f"This model uses a {c.sliding_window}-token sliding window, which CourseDecoder does "
                             "not implement; load it with sliding_window=None or use transformers' cache.")
        inner = model.model
        rotary = inner.rotary_emb
        if getattr(rotary, "attention_scaling", 1.0) != 1.0:
            raise ValueError("RoPE variants that scale attention (e.g. YaRN) are not implemented in CourseDecoder.")
        blocks = []
        for layer in inner.layers:
            a = layer.self_attn
            attn = AttentionWithKVCache(c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
                                        head_dim=a.head_dim)
            attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj = a.q_proj, a.k_proj, a.v_proj, a.o_proj
            attn.inv_freq = rotary.inv_freq  # the model's own frequencies (covers Llama-3's rescaled RoPE)
            m = layer.mlp
            blocks.append(Block(attn, SwiGLU(m.gate_proj, m.up_proj, m.down_proj),
                                RMSNorm(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                                RMSNorm(layer.post_attention_layernorm.weight,
                                        layer.post_attention_layernorm.variance_epsilon)))
        norm = RMSNorm(inner.norm.weight, inner.norm.variance_epsilon)
        return cls(inner.embed_tokens, blocks, norm, model.lm_head, c).eval()

    def forward(self, input_ids: torch.Tensor, *, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, kv_hook=None,
                logits_to_keep: int | None = None) -> DecoderOutput:
        """Logits (B, T, V) for the new tokens `input_ids` (B, T).

        cache: appended to in place (prefill, then one token per decode step).
        attention_mask: (B, cached + T), 0 marks left padding.
        kv_hook: replaces the attention call in every layer, e.g. to simulate a quantized cache.
        logits_to_keep: compute the logits of the last k positions only (generation needs 1).
        """
        if input_ids.device != self.embed.weight.device:
            where = str(self.embed.weight.device)
            raise ValueError(f"input_ids are on {input_ids.device} but the model's weights on {where}; "
                             f"move them first: input_ids.to({where!r}).")
        b, t = input_ids.shape
        positions = positions_for(t, cache, attention_mask, b, input_ids.device)
        x = self.embed(input_ids)
        for i, block in enumerate(self.blocks):
            hook = None if kv_hook is None else (lambda q, k, v, m, i=i: kv_hook(i, q, k, v, m))
            x = block(x, positions, cache, i, attention_mask, hook)
        if logits_to_keep is not None:
            x = x[:, -logits_to_keep:]
        return DecoderOutput(logits=self.lm_head(self.norm(x)))
