"""The course model's recipe, as the chapters reuse it: its architecture and its training helpers.

    ModelSpec, llama_config(spec, tokenizer)   the shipped model's dimensions and its LlamaConfig
    TrainConfig                                the shipped run's hyper-parameters
    adamw, warmup_cosine, lr_at, autocast      the optimiser, the schedule and the precision
    evaluate_loss(model, stream, seq_len)      mean next-token loss on a token stream

The training run that made the bundled model (pipeline.train) and the chapters that train
(quantization-aware training, pruning recovery, distillation) share these, so a chapter's
training matches the recipe recorded in the model's card.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Model dimensions. Defaults: the shipped model."""

    hidden: int = 256
    layers: int = 8
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 768
    max_positions: int = 512
    attention_dropout: float = 0.0
    linear_multiple: int = 128  # every linear in/out must divide by this (0: don't check)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000
    batch_size: int = 64
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_tokens: int = 0  # 0: the whole validation split
    seed: int = 0


def llama_config(spec: ModelSpec, tokenizer):
    """A transformers LlamaConfig for `spec`, with the tokenizer's vocabulary and special tokens."""
    from transformers import LlamaConfig

    if spec.hidden % spec.heads or spec.heads % spec.kv_heads:
        raise ValueError(f"hidden ({spec.hidden}) must divide by heads ({spec.heads}), heads by kv_heads ({spec.kv_heads}).")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        attention_dropout=spec.attention_dropout,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return config


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every nn.Linear in the model, by name."""
    import torch

    return {name: (m.in_features, m.out_features) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def check_dims(model, multiple: int = 128) -> None:
    """Raise if a linear layer's input or output size is not a multiple of `multiple`."""
    bad = {n: s for n, s in linear_shapes(model).items() if s[0] % multiple or s[1] % multiple}
    if bad:
        raise ValueError(f"These linear layers are not multiples of {multiple} (in, out): {bad}")


def warmup_cosine(step: int, lr: float, warmup: int, decay_end: int, min_lr_ratio: float) -> float:
    """Linear warm-up to `lr` over `warmup` steps, then cosine decay to lr * min_lr_ratio at `decay_end`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, decay_end - warmup))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def adamw(params, lr: float, weight_decay: float, *, betas=(0.9, 0.95), fused: bool = False):
    """AdamW with weight decay on the matrices only (biases and norm weights, ndim < 2, are not decayed)."""
    import torch

    params = list(params)
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                             lr=lr, betas=betas, fused=True if fused else None)  # None: torch's default path


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The recipe's schedule: warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at cfg.steps."""
    return warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)


def evaluate_loss(model, stream, seq_len: int, max_tokens: int = 0, batch_size: int = 32) -> float:
    """Mean next-token loss over non-overlapping windows of `seq_len` tokens (token-weighted)."""
    import torch

    n_windows = (len(stream) - 1) // seq_len
    if max_tokens:
        n_windows = min(n_windows, max(1, max_tokens // seq_len))
    if n_windows < 1:
        raise ValueError(f"The evaluation stream ({len(stream)} tokens) is shorter than one window of {seq_len}.")
    windows = stream[: n_windows * seq_len].view(n_windows, seq_len)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad(), autocast(device):
        for i in range(0, n_windows, batch_size):
            batch = windows[i : i + batch_size].to(device)
            out = model(input_ids=batch, labels=batch)
            total += out.loss.float().item() * batch.shape[0]
    model.train(was_training)
    return total / n_windows


def autocast(device):
    """bf16 autocast on CUDA, nothing (fp32) on a CPU: the course's training precision."""
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
