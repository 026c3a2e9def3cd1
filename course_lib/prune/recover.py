"""A short recovery fine-tune after pruning (LLM-Pruner's step 4), full or LoRA.

    result = recover(model, tok, steps=100, lr=5e-5, batch_size=8, seq_len=128)            # all parameters
    result = recover(model, tok, steps=50, lr=1e-3, batch_size=4, seq_len=128, lora_rank=8)
    result.losses     # training loss per step

It reuses the course's training recipe (``course_lib.pipeline.train``): random windows of the train split,
AdamW with betas (0.9, 0.95), linear warm-up then cosine decay (``warmup_cosine``), gradient
clipping at 1.0, the model in train mode (the course model trains with attention dropout).

LoRA, written out: a frozen linear W gets a trainable low-rank update,
    y = x W^T + (alpha / r) * x A^T B^T,     A: (r, in), B: (out, r), B = 0 at the start,
so training starts from the pruned model exactly. At the end B A is merged into W
(W <- W + (alpha / r) B A) and the model is plain nn.Linear again, same shapes as before.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.env import seed_everything
from ..lm.tokens import random_windows, token_stream
from ..lm.recipe import adamw, autocast, evaluate_loss, warmup_cosine
from .structured import decoder_layers


class LoRALinear(nn.Module):
    """nn.Linear with a frozen base and a trainable rank-r update scaled by alpha / r."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = alpha / rank
        w = base.weight
        a = torch.empty(rank, base.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)  # nn.Linear's own init
        self.lora_a = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with W + scale * B A folded in."""
        self.base.weight += (self.lora_b @ self.lora_a) * self.scale
        return self.base


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model, rank: int, alpha: float | None = None, seed: int = 0) -> list[nn.Parameter]:
    """Freeze the model and wrap every block projection in LoRALinear; returns the trainable parameters."""
    if rank < 1:
        raise ValueError(f"lora_rank must be a positive integer, got {rank}.")
    alpha = float(2 * rank if alpha is None else alpha)
    gen = torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    params = []
    for layer in decoder_layers(model):
        for parent in (layer.self_attn, layer.mlp):
            for name in LORA_TARGETS:
                if isinstance(getattr(parent, name, None), nn.Linear):
                    lora = LoRALinear(getattr(parent, name), rank, alpha, gen)
                    setattr(parent, name, lora)
                    params += [lora.lora_a, lora.lora_b]
    return params


def merge_lora(model) -> None:
    """Replace every LoRALinear by its merged nn.Linear."""
    for layer in decoder_layers(model):
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, LoRALinear):
                    setattr(parent, name, child.merged())


@dataclass
class RecoveryResult:
    losses: list[float]               # training loss at every step
    seconds: float
    trainable_params: int
    lora_rank: int | None = None
    val_loss: dict[str, float] = field(default_factory=dict)  # "before"/"after", if eval_tokens > 0


def recover(model, tokenizer, *, steps: int = 100, lr: float | None = None, batch_size: int = 8, seq_len: int = 128,
            seed: int = 0, lora_rank: int | None = None, lora_alpha: float | None = None, warmup: int | None = None,
            weight_decay: float = 0.0, grad_clip: float = 1.0, eval_tokens: int = 0,
            stream: torch.Tensor | None = None) -> RecoveryResult:
    """Fine-tune `model` in place on the train split; deterministic on CPU for a given seed.

    lora_rank None: all parameters train (lr defaults to 5e-5). Otherwise only LoRA factors train
    (lr defaults to 1e-3, alpha to 2 r), merged back at the end. warmup defaults to steps // 10.
    eval_tokens > 0 also measures the validation loss on that many tokens before and after.
    `stream` (a 1-D LongTensor) replaces the train split as the source of training windows.
    """
    if steps < 1 or batch_size < 1 or seq_len < 2:
        raise ValueError(f"steps and batch_size must be >= 1 and seq_len >= 2; got {steps}, {batch_size}, {seq_len}.")
    if lr is None:
        lr = 5e-5 if lora_rank is None else 1e-3  # measured on the course model, 30% pruned (chapter 07)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}.")
    decoder_layers(model)  # architecture check
    device = next(model.parameters()).device
    seed_everything(seed)  # dropout masks
    train_ids = token_stream("train", tokenizer) if stream is None else stream
    val = {}
    if eval_tokens:
        val_ids = token_stream("validation", tokenizer)
        val["before"] = evaluate_loss(model, val_ids, seq_len, eval_tokens)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    if lora_rank is None:
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
    else:
        params = add_lora(model, lora_rank, lora_alpha, seed)
    opt = adamw(params, lr, weight_decay)
    warmup = max(1, steps // 10) if warmup is None else warmup
    gen = torch.Generator().manual_seed(seed)
    was_training, losses = model.training, []
    model.train()
    start = time.perf_counter()
    try:
        for step in range(steps):
            batch = random_windows(train_ids, batch_size, seq_len, gen).to(device)
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, lr, warmup, steps, min_lr_ratio=0.1)
            with autocast(device):
                loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            losses.append(loss.item())
    finally:
        if lora_rank is not None:
            merge_lora(model)
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, True))
            p.grad = None
        model.train(was_training)
    seconds = time.perf_counter() - start
    if eval_tokens:
        val["after"] = evaluate_loss(model, val_ids, seq_len, eval_tokens)
    return RecoveryResult(losses=losses, seconds=seconds, trainable_params=sum(p.numel() for p in params),
                          lora_rank=lora_rank, val_loss=val)
