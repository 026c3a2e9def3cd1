"""QLoRA, full fine-tuning and 16-bit LoRA on one work of the corpus, and merging adapters back.

    QLoRA  = base weights NF4 + double quantization (bitsandbytes, frozen)
           + LoRA adapters B·A on every linear layer (peft, 16/32-bit, trained)
           + an 8-bit AdamW (paged on CUDA: its states move to host memory under memory pressure)
           + gradient checkpointing (activations recomputed in the backward pass).

The task is the held-out work of the corpus (default: *The Winter's Tale*, in the validation split, never
trained on): the first 85% of its tokens to train on, the last 15% to evaluate.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..lm.perplexity import Protocol, perplexity
from ..lm.tokens import random_windows
from .cpu_kernels import undo_cpu_packing

METHODS = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")


@dataclass(frozen=True)
class FinetuneConfig:
    method: str = "qlora"
    steps: int = 40
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 1e-3
    r: int = 8
    alpha: int = 16
    target: str = "all-linear"  # peft: every nn.Linear (and bnb Linear4bit) except the output layer
    optimizer: str = "adamw8bit"  # bitsandbytes' 8-bit AdamW; "paged_adamw8bit" on CUDA, "adamw" (fp32 states)
    gradient_checkpointing: bool = True
    double_quant: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}.")
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 2 or self.r < 1:
            raise ValueError("steps, batch_size and r must be positive and seq_len at least 2.")


@dataclass
class FinetuneRun:
    config: FinetuneConfig
    model: nn.Module
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainable: int = 0
    total: int = 0


def work_split(tokenizer, title: str = "The Winter's Tale", split: str = "validation",
               train_fraction: float = 0.85) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of one work: (first train_fraction to train on, the rest to evaluate on)."""
    from ..lm.corpus import list_documents

    docs = dict(list_documents(split))
    if title not in docs:
        raise ValueError(f"No work titled {title!r} in the {split!r} split; it has: {', '.join(docs)}.")
    ids = torch.tensor(tokenizer(docs[title])["input_ids"], dtype=torch.long)
    cut = int(len(ids) * train_fraction)
    return ids[:cut], ids[cut:]


def heldout_ppl(model: nn.Module, tokenizer, stream: torch.Tensor, seq_len: int = 256) -> float:
    """Perplexity on a token stream with the course's protocol (non-overlapping windows)."""
    protocol = Protocol(split="held-out", seq_len=seq_len, stride=seq_len, max_tokens=None)
    return perplexity(model, tokenizer, protocol, stream=stream).ppl


def prepare(name: str | None, config: FinetuneConfig, *, device="cpu", dtype: torch.dtype = torch.float32):
    """The model to train: bitsandbytes NF4 base + peft LoRA (qlora), float base + LoRA (lora), or all of it (full)."""
    from ..lm import models

    torch.manual_seed(config.seed)  # LoRA's A matrices start random
    if config.method == "qlora":
        from .library import load_quantized

        model = load_quantized(name, "nf4", device=device, dtype=dtype, double_quant=config.double_quant)
    else:
        model, _ = models.load_model(name, device=device, dtype=dtype)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        from ..core.optional import install_hint

        raise ModuleNotFoundError(f"LoRA and QLoRA need peft: {install_hint(['peft'])}.") from err
    if config.method == "qlora":
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    lora = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=config.target,
                      task_type="CAUSAL_LM")
    # peft checks whether each layer is one of GPTQModel's, importing GPTQModel when it is installed: its banner
    # and log lines go to stdout. Keep them out of the notebook.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return get_peft_model(model, lora)


def make_optimizer(params, name: str, lr: float, device) -> torch.optim.Optimizer:
    """AdamW with fp32 states, or bitsandbytes' 8-bit AdamW (paged only on CUDA: bitsandbytes has no paging on CPU)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    from .library import check_device, import_bnb

    check_device(device)
    bnb = import_bnb()
    if name == "paged_adamw8bit":
        if torch.device(device).type != "cuda":
            raise ValueError("Paged optimizers page their states between GPU and host memory; on CPU bitsandbytes "
                             "falls back to a plain one. Use optimizer='adamw8bit' here.")
        return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=0.0)
    return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=0.0)


def parameter_count(p: torch.Tensor) -> int:
    """Values a parameter stands for: a bitsandbytes 4-bit weight stores two per byte (its numel is the bytes)."""
    state = getattr(p, "quant_state", None)
    return math.prod(state.shape) if state is not None else p.numel()


def train(model: nn.Module, stream: torch.Tensor, config: FinetuneConfig, *, progress: bool = True) -> FinetuneRun:
    """config.steps steps of next-token cross-entropy on random windows of `stream`, constant learning rate."""
    from tqdm.auto import tqdm

    device = next(p.device for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config.optimizer, config.lr, device)
    generator = torch.Generator().manual_seed(config.seed)
    run = FinetuneRun(config, model, trainable=sum(p.numel() for p in params),
                      total=sum(parameter_count(p) for p in model.parameters()))
    undo_cpu_packing(model)  # an earlier evaluation may have repacked 4-bit weights for bitsandbytes' CPU kernel
    model.train()
    start = time.perf_counter()
    for _ in tqdm(range(config.steps), desc=f"{config.method} fine-tune", disable=not progress):
        x = random_windows(stream, config.batch_size, config.seq_len, generator).to(device)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        run.losses.append(loss.item())
    run.seconds = time.perf_counter() - start
    model.eval()
    return run


def _lora_layers(peft_model: nn.Module) -> dict[str, nn.Module]:
    """peft's LoRA-wrapped layers by the name of the linear layer they wrap in the base model."""
    out = {}
    for name, m in peft_model.named_modules():
        if hasattr(m, "lora_A") and hasattr(m, "base_layer") and "default" in m.lora_A:
            out[name.replace("base_model.model.", "", 1)] = m
    return out


def base_weight(layer: nn.Module) -> torch.Tensor:
    """The float32 weight a (possibly 4-bit) base layer computes with."""
    w = layer.weight
    if getattr(w, "quant_state", None) is not None:
        import bitsandbytes.functional as F

        data, state = w.data, w.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            # on a CPU with AVX-512 BF16, Linear4bit's first forward in eval mode repacks its weight for its own
            # matmul kernel; de-quantize from the standard layout
            data, state = F._convert_weight_packed_for_cpu_inverse(data, copy.deepcopy(state))  # it edits the state
        return F.dequantize_4bit(data, state).float()
    return w.detach().float()


def merge_report(peft_model: nn.Module, name: str | None, tokenizer, heldout: torch.Tensor, *,
                 device="cpu") -> list[dict]:
    """Merging the adapters back, three ways, each scored on the held-out stream:

    * into a 16-bit (here float32) copy of the de-quantized base: W' = deq(W_4bit) + (α/r)·B·A;
    * into the original float weights (the adapters were trained against the 4-bit base: a mismatch);
    * back into 4 bits: W' = Q(deq(W_4bit) + (α/r)·B·A), with its rounding error relative to the update.
    """
    from ..lm import models
    from .nf4 import dequantize_4bit, quantize_4bit

    layers = _lora_layers(peft_model)
    rows = [{"model": "QLoRA, adapters unmerged", "held-out ppl": heldout_ppl(peft_model, tokenizer, heldout)}]
    variants = {"merged into 16-bit copy of the 4-bit base": "dequantized",
                "merged into the original float weights": "original", "merged back into NF4": "nf4"}
    for label, how in variants.items():
        model, _ = models.load_model(name, device=device, dtype=torch.float32)
        err_num = err_den = 0.0
        with torch.no_grad():
            for lname, layer in layers.items():
                target = model.get_submodule(lname)
                delta = layer.get_delta_weight("default").float()
                w = (base_weight(layer.base_layer) if how != "original" else target.weight.float()) + delta
                if how == "nf4":
                    wq = dequantize_4bit(quantize_4bit(w, "nf4", 64, double_quant=True))
                    err_num += float((wq - w).pow(2).sum())
                    err_den += float(delta.pow(2).sum())
                    w = wq
                target.weight.copy_(w.to(target.weight.dtype))
        row = {"model": label, "held-out ppl": heldout_ppl(model.eval(), tokenizer, heldout)}
        if how == "nf4":
            row["rounding / update"] = math.sqrt(err_num / max(err_den, 1e-30))
        rows.append(row)
    return rows
