"""A short quantization-aware fine-tune (QAT / QAF): train through fake quantization, then bake.

    result = qat_finetune(model, token_stream("train", tok), QATConfig(bits=3, steps=60))
    result.model       # a plain float model whose linear weights lie exactly on the 3-bit grid
    result.log         # [{"step", "loss"}, ...]: the training loss through the fake-quantized weights

How it works (see ``course_lib.quant.fake``):

1. ``attach_fake_quant`` swaps every nn.Linear (except lm_head) for a ``FakeQuantLinear``. The float
   weights stay the trained parameters; each forward pass computes with w_hat = s * (round(w / s) - z).
2. The loss is the usual next-token cross-entropy. Its gradient reaches the float weights through the
   straight-through estimator (d round(x) / dx := 1), so the float weights drift to places where
   their *rounded* values give a low loss.
3. ``detach_fake_quant(bake=True)`` writes w_hat into ordinary nn.Linear layers: the result computes
   exactly what training saw, and each group's weights take at most 2^bits distinct values.

``QATConfig(fake_quant=False)`` runs the same fine-tune without fake quantization: the control that
shows whether the gain comes from quantization-awareness or just from more training.
``finetune(model, stream, steps=..., lr=...)`` is that plain fine-tune under its own name, e.g. to
recover a model after pooling its KV heads (chapter 09's uptraining).

Training details: random windows of the token stream (a seeded generator), AdamW, linear warm-up then
cosine decay, gradient clipping. Dropout is switched off (the model is kept in eval mode while the
gradients flow): a short fine-tune should see only the quantization noise, and the run is then fully
deterministic for a given seed on CPU.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..lm.models import linear_layers
from ..lm.tokens import random_windows
from ..lm.recipe import warmup_cosine
from .fake import attach_fake_quant, detach_fake_quant


@dataclass(frozen=True)
class QATConfig:
    """What to quantize (bits, symmetric, granularity, group_size) and how to fine-tune."""

    bits: int = 3
    symmetric: bool = True
    granularity: str = "group"
    group_size: int | None = 128
    skip: tuple[str, ...] = ("lm_head",)
    steps: int = 60
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    fake_quant: bool = True  # False: plain fine-tuning (the control)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"QATConfig.{name} must be a positive int, got {value!r}.")
        if not self.lr > 0:
            raise ValueError(f"QATConfig.lr must be positive, got {self.lr!r}.")
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"QATConfig.warmup must be in 0..steps-1 ({self.steps - 1}), got {self.warmup}.")

    def lr_at(self, step: int) -> float:
        """Linear warm-up to lr over `warmup` steps, then cosine decay to lr * min_lr_ratio."""
        return warmup_cosine(step, self.lr, self.warmup, self.steps - 1, self.min_lr_ratio)  # decayed at the last step


@dataclass
class QATResult:
    """The fine-tuned model (fake quantization baked in when config.fake_quant) and its training log."""

    model: nn.Module
    config: QATConfig
    log: list[dict] = field(default_factory=list)  # {"step", "loss"} per step
    seconds: float = 0.0
    layers: list[str] = field(default_factory=list)  # the layers that were fake-quantized

    @property
    def tokens(self) -> int:
        """Tokens the fine-tune trained on."""
        return self.config.steps * self.config.batch_size * self.config.seq_len

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(1, self.config.steps)

    def losses(self) -> list[float]:
        return [row["loss"] for row in self.log]

    def summary(self) -> dict:
        """One row for print_table."""
        first, last = self.losses()[: 5], self.losses()[-5:]
        return {"fake quant": self.config.fake_quant, "bits": self.config.bits, "steps": self.config.steps,
                "tokens": self.tokens, "loss first 5": sum(first) / len(first), "loss last 5": sum(last) / len(last)}


def qat_finetune(model: nn.Module, stream: torch.Tensor, config: QATConfig = QATConfig(), *,
                 inplace: bool = False) -> QATResult:
    """Fine-tune `model` on random windows of `stream` through fake quantization (config.fake_quant),
    then bake the quantized weights. With inplace=False (default) the model is deep-copied first.

    Deterministic for a given config.seed on CPU: the windows come from a seeded generator and
    nothing random happens in the forward pass (dropout is off)."""
    if not inplace:
        model = copy.deepcopy(model)
    device = next(model.parameters()).device
    layers: list[str] = []
    if config.fake_quant:
        layers = attach_fake_quant(model, config.bits, symmetric=config.symmetric, granularity=config.granularity,
                                   group_size=config.group_size, skip=config.skip)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    model.eval()  # dropout off; gradients still flow
    log = []
    start = time.perf_counter()
    try:
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            x = random_windows(stream, config.batch_size, config.seq_len, generator).to(device)
            loss = model(input_ids=x, labels=x).loss  # next-token cross-entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            log.append({"step": step, "loss": loss.item()})
    finally:
        if config.fake_quant:
            detach_fake_quant(model, bake=True)  # the model now holds w_hat in plain nn.Linear layers
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return QATResult(model=model, config=config, log=log, seconds=seconds, layers=layers)


# Settings of a plain fine-tune: QATConfig's training fields (its quantization fields mean nothing there).
FINETUNE_SETTINGS = ("steps", "batch_size", "seq_len", "lr", "min_lr_ratio", "warmup", "weight_decay", "grad_clip",
                     "seed")


def finetune(model: nn.Module, stream: torch.Tensor, *, inplace: bool = False, **settings) -> QATResult:
    """A plain fine-tune, no quantization: next-token cross-entropy on random windows of `stream`.

    The same loop as ``qat_finetune`` (AdamW, warm-up then cosine decay, clipping, dropout off,
    deterministic for a seed on CPU) with fake quantization off: for recovering a model after a
    change to its architecture ("uptraining" after pooling KV heads, chapter 09) or the control of
    a QAT run. settings: any of FINETUNE_SETTINGS, e.g. finetune(model, stream, steps=30, lr=1e-4).
    """
    unknown = sorted(set(settings) - set(FINETUNE_SETTINGS))
    if unknown:
        raise ValueError(f"finetune() takes the training settings {', '.join(FINETUNE_SETTINGS)}; got {unknown}. "
                         "For quantization-aware training use qat_finetune(model, stream, QATConfig(...)).")
    return qat_finetune(model, stream, QATConfig(fake_quant=False, **settings), inplace=inplace)


def distinct_values_per_group(model: nn.Module, group_size: int | None, *, skip: tuple[str, ...] = ("lm_head",)
                              ) -> dict[str, int]:
    """Largest number of distinct weight values in any group (or row, if group_size is None) of each
    linear layer: at most 2^bits after baking a b-bit quantizer."""
    out = {}
    for name, m in linear_layers(model, skip=skip).items():
        w = m.weight.detach()
        g = group_size or w.shape[1]
        ordered = w.reshape(-1, g).sort(dim=1).values
        distinct = (ordered[:, 1:] != ordered[:, :-1]).sum(dim=1) + 1  # value changes in each sorted group, + 1
        out[name] = int(distinct.max())
    return out


def training_cost(result: QATResult, reference: dict) -> dict:
    """Tokens and seconds of this fine-tune next to a reference training run ({"tokens_seen", "seconds", ...},
    e.g. data/course-model/training.json): the fraction of the original training each represents."""
    return {"fine-tune tokens": result.tokens, "fine-tune s": result.seconds,
            "s per step": result.seconds_per_step, "tokens per s": result.tokens / max(result.seconds, 1e-9),
            "training tokens": reference["tokens_seen"], "training s": reference["seconds"],
            "token fraction": result.tokens / reference["tokens_seen"]}

