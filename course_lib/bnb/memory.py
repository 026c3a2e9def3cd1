"""Memory of fine-tuning: full, LoRA and QLoRA, as a formula and as measured tensor bytes.

Training memory is five terms (bytes):

    weights     = base parameters x bytes each  (QLoRA: the targeted Linear weights at ~4.127 bits)
    adapters    = LoRA parameters x bytes each  (LoRA/QLoRA only)
    gradients   = trainable parameters x gradient bytes
    optimizer   = trainable parameters x (optimizer state bytes + 4 for an fp32 master copy, if any)
    activations = tensors the forward pass saves for the backward pass

"Trainable" is every parameter for full fine-tuning, only the adapters for LoRA and QLoRA: that is
where LoRA's saving comes from. QLoRA then shrinks the frozen weights from 16 to ~4 bits.

    training_memory(linear_params=..., other_params=..., lora_params=..., method="qlora")   # the formula
    qlora_65b_claim()                      # the QLoRA paper's "65B on one 48 GB GPU", reproduced
    measure_training_step(model, batch, lambda ps: torch.optim.AdamW(ps), device="cpu")   # real bytes
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from ..formats.demos import nf4_bits_per_param

GB = 1e9
# NF4 with double quantization: 4 bits + an 8-bit absmax per 64 weights + an fp32 scale per 256 absmaxes.
NF4_DQ_BITS = nf4_bits_per_param(64, double_quant=True, block2=256)
# Optimizer state bytes per trainable parameter. AdamW: two fp32 moments (m, v). bitsandbytes' 8-bit
# AdamW: two 1-byte moments (its per-2048-block fp32 absmax, 8/2048 bytes, is left out). SGD: none.
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2.0, "sgd": 0.0}
METHODS = ("full", "lora", "qlora")
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# LLaMA-65B's published shapes (Touvron et al. 2023): 65.2B parameters.
LLAMA_65B = dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=64, vocab_size=32000)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes of each part of training memory."""

    weights: float
    adapters: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.adapters + self.gradients + self.optimizer + self.activations

    def gb(self) -> dict[str, float]:
        """Every part and the total in GB (1e9 bytes)."""
        return {**{k: v / GB for k, v in asdict(self).items()}, "total": self.total / GB}


def _check_count(**counts: float) -> None:
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, not {value!r}.")


def _check_positive(**sizes: float) -> None:
    for name, value in sizes.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, not {value!r}.")


# ----------------------------------------------------------------------------- the formula

def training_memory(*, linear_params: float, other_params: float = 0, lora_params: float = 0,
                    method: str = "full", weight_bytes: float = 2, bits_per_param: float = NF4_DQ_BITS,
                    optimizer: str = "adamw", master_weights: bool = False, grad_bytes: float | None = None,
                    adapter_bytes: float = 4, activations: float = 0.0) -> MemoryBreakdown:
    """Training memory of one model replica, by the five-term formula in the module docstring.

    linear_params: base parameters in the Linear layers that LoRA/QLoRA target (QLoRA stores these in 4 bits);
    other_params: the rest (embeddings, norms, an untargeted lm_head), kept at weight_bytes by every method.
    lora_params: adapter parameters (ignored by "full"). adapter_bytes: 4 as peft stores them by default.
    grad_bytes: defaults to the bytes of the trainable weights (weight_bytes for full, adapter_bytes else).
    master_weights: an fp32 copy of the trainable weights (mixed precision), counted with the optimizer
    as ZeRO does: 16-bit full fine-tuning with AdamW is then 2 + 2 + 4 + 8 = 16 bytes per parameter.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}.")
    if optimizer not in OPTIMIZER_BYTES:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZER_BYTES)}, not {optimizer!r}.")
    _check_count(linear_params=linear_params, other_params=other_params, lora_params=lora_params,
                 activations=activations)
    _check_positive(weight_bytes=weight_bytes, bits_per_param=bits_per_param, adapter_bytes=adapter_bytes,
                    **({} if grad_bytes is None else {"grad_bytes": grad_bytes}))

    if method == "qlora":  # 4-bit targeted Linears, the rest at 16 bits
        weights = linear_params * bits_per_param / 8 + other_params * weight_bytes
    else:
        weights = (linear_params + other_params) * weight_bytes
    if method == "full":
        trainable, trainable_bytes, adapters = linear_params + other_params, weight_bytes, 0.0
    else:
        trainable, trainable_bytes = lora_params, adapter_bytes
        adapters = lora_params * adapter_bytes
    gradients = trainable * (trainable_bytes if grad_bytes is None else grad_bytes)
    state = trainable * (OPTIMIZER_BYTES[optimizer] + (4 if master_weights else 0))
    return MemoryBreakdown(weights=float(weights), adapters=float(adapters), gradients=float(gradients),
                           optimizer=float(state), activations=float(activations))


def rmsnorm_saved_bytes_per_token(hidden: int, dtype_bytes: float) -> float:
    """transformers' RMSNorm computes in fp32: it saves its input upcast to fp32 (4h), the per-token
    rsqrt (4), and the normalised x and the weighted output in the compute dtype (2 x h x dtype_bytes)."""
    return 4 * hidden + 4 + 2 * hidden * dtype_bytes


def layer_activation_bytes(tokens: int, hidden: int, intermediate: int, heads: int, kv_heads: int,
                           head_dim: int, dtype_bytes: float) -> float:
    """Bytes one Llama decoder layer saves for backward, for `tokens` = batch x seq tokens.

    Per token, counted from what autograd really keeps (SDPA attention, no padding mask):
      2 RMSNorms                      2 x (4h + 4 + 2 h b)
      attention (SDPA/flash)          q, k, v, output: (2 heads + 2 kv_heads) x head_dim x b; logsumexp 4 x heads
                                      (the output doubles as o_proj's input; no seq x seq matrix is kept)
      MLP (SwiGLU)                    gate, silu(gate), up, silu(gate)*up: 4 x intermediate x b
    The q/k/v/gate/up inputs are the norms' outputs, already counted. Eager attention would add the
    heads x seq x seq softmax probabilities.
    """
    per_token = (2 * rmsnorm_saved_bytes_per_token(hidden, dtype_bytes)
                 + (2 * heads + 2 * kv_heads) * head_dim * dtype_bytes + 4 * heads
                 + 4 * intermediate * dtype_bytes)
    return tokens * per_token


def activation_bytes(batch: int, seq: int, hidden: int, layers: int, intermediate: int, heads: int, vocab: int,
                     checkpointing: bool = False, dtype_bytes: float = 2, *, kv_heads: int | None = None,
                     head_dim: int | None = None) -> float:
    """Activation memory of a Llama-shaped causal LM's training step (bytes).

    Without checkpointing:  layers x layer_activation_bytes + final RMSNorm + logits.
    With checkpointing:     layers x (one hidden state, T x h x b, at each layer's input) + final RMSNorm
                            + logits + one layer's full activations (recomputed during backward).
    The logits term is T x vocab x 4: the loss upcasts logits to fp32 and log_softmax saves its output.
    Small terms: token ids and shifted labels (int64, 16 bytes per token) and RoPE's cos/sin (2 x seq x head_dim x b).
    This is full fine-tuning's count, exact for fp32 on CPU and bf16 on CUDA (tiny Llamas, SDPA). LoRA differs:
    frozen norms, embedding and lm_head save less (15% less on a tiny fp32 Llama), but peft's fp32 adapters
    on a 16-bit base save an fp32 copy of every adapted Linear's input (26% more on a bf16 Llama, h=1024).
    """
    kv_heads = heads if kv_heads is None else kv_heads
    _check_positive(batch=batch, seq=seq, hidden=hidden, heads=heads, kv_heads=kv_heads, vocab=vocab,
                    dtype_bytes=dtype_bytes)
    _check_count(layers=layers, intermediate=intermediate)
    head_dim = hidden // heads if head_dim is None else head_dim
    tokens = batch * seq
    layer = layer_activation_bytes(tokens, hidden, intermediate, heads, kv_heads, head_dim, dtype_bytes)
    final = tokens * rmsnorm_saved_bytes_per_token(hidden, dtype_bytes) + tokens * vocab * 4
    small = tokens * 16 + 2 * seq * head_dim * dtype_bytes
    if checkpointing:
        return layers * tokens * hidden * dtype_bytes + layer + final + small
    return layers * layer + final + small


# ----------------------------------------------------------------------------- counting parameters

def _cfg(config: object, name: str, default=None):
    value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
    return default if value is None else value


def llama_linear_shapes(config: object) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of one Llama decoder layer's Linears, from a config or dict.
    GQA: k_proj and v_proj output kv_heads x head_dim."""
    h, inter = _cfg(config, "hidden_size"), _cfg(config, "intermediate_size")
    heads = _cfg(config, "num_attention_heads")
    kv_heads = _cfg(config, "num_key_value_heads", heads)
    head_dim = _cfg(config, "head_dim", h // heads)
    return [("q_proj", h, heads * head_dim), ("k_proj", h, kv_heads * head_dim), ("v_proj", h, kv_heads * head_dim),
            ("o_proj", heads * head_dim, h), ("gate_proj", h, inter), ("up_proj", h, inter), ("down_proj", inter, h)]


def _in_out(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a Linear (bitsandbytes' Linear4bit/8bitLt included) or a transformers Conv1D (GPT-2)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return module.nx, module.nf
    return None


def _target_names(target: str | Iterable[str]) -> set[str] | None:
    """None for "all-linear", else the set of module names (a single name may be given as a string)."""
    if target == "all-linear":
        return None
    return {target} if isinstance(target, str) else set(target)


def _targeted_linears(model: nn.Module, target: str | Iterable[str]):
    """(name, module, in, out) of each Linear LoRA would wrap: all but the output layer (lm_head)."""
    if any("lora_" in name for name, _ in model.named_modules()):
        raise ValueError("This model already has LoRA adapters; pass the base model, before get_peft_model.")
    names = _target_names(target)
    get_out = getattr(model, "get_output_embeddings", None)
    output_layer = get_out() if callable(get_out) else None
    for name, module in model.named_modules():
        shape = _in_out(module)
        short = name.rsplit(".", 1)[-1]
        if shape is None or module is output_layer or short == "lm_head":
            continue
        if names is None or short in names:
            yield name, module, *shape


def lora_param_count(model_or_config: object, r: int, target: str | Iterable[str] = "all-linear") -> int:
    """Adapter parameters of LoRA rank r: r x (in + out) per targeted Linear (A is r x in, B is out x r).

    target: "all-linear" (every Linear but lm_head, as peft means it) or module names like ["q_proj", "v_proj"].
    Given an nn.Module (the base model), its Linears are read; given a Llama config (or dict), the shapes are
    computed from hidden/intermediate/heads/kv heads/head_dim.
    """
    _check_positive(r=r)
    if isinstance(model_or_config, nn.Module):
        count = sum(r * (n_in + n_out) for _, _, n_in, n_out in _targeted_linears(model_or_config, target))
    else:
        names = _target_names(target) or set(LLAMA_LINEARS)
        shapes = llama_linear_shapes(model_or_config)
        count = sum(r * (n_in + n_out) for name, n_in, n_out in shapes if name in names)
        count *= _cfg(model_or_config, "num_hidden_layers")
    if count == 0:
        raise ValueError(f"No Linear layer matches target={target!r}.")
    return count


def param_split(model: nn.Module) -> tuple[int, int]:
    """(linear_params, other_params): LoRA-targetable Linears (all but lm_head) vs the rest.

    Linear counts come from in x out (+ bias), so a 4-bit model, whose packed weights hide their true
    size, counts right. model.parameters() yields a tied embedding/lm_head weight once.
    """
    linear, seen = 0, set()
    for _, module, n_in, n_out in _targeted_linears(model, "all-linear"):
        bias = getattr(module, "bias", None)
        linear += n_in * n_out + (bias.numel() if bias is not None else 0)
        seen.update(id(p) for p in module.parameters(recurse=False))
    other = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    return linear, other


def qlora_65b_claim() -> dict[str, MemoryBreakdown]:
    """The QLoRA paper's "65B model fine-tuned on a single 48 GB GPU", by the formula.

    Assumptions: LLaMA-65B (80 layers, hidden 8192, intermediate 22016, 64 heads, vocab 32000; per layer
    4 h^2 + 3 h x inter Linear parameters; other = embeddings + lm_head + norms); LoRA r=64 on every
    Linear; adapters and their gradients in bf16 (the paper's code casts them), AdamW with fp32 states on
    the adapters only (the paper pages these to CPU under spikes); bf16 compute, gradient checkpointing,
    batch 1, seq 512. Full fine-tuning: bf16 weights and gradients, fp32 master weights, AdamW.
    Returns {"full": ..., "lora": ..., "qlora": ...}.
    """
    c = LLAMA_65B
    h, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    linear = layers * (4 * h * h + 3 * h * inter)
    other = 2 * vocab * h + (2 * layers + 1) * h  # embeddings + lm_head + RMSNorm weights
    lora = lora_param_count(c, r=64)
    acts = activation_bytes(1, 512, h, layers, inter, c["num_attention_heads"], vocab, checkpointing=True,
                            dtype_bytes=2)
    common = dict(linear_params=linear, other_params=other, lora_params=lora, weight_bytes=2, adapter_bytes=2,
                  optimizer="adamw", activations=acts)
    return {"full": training_memory(method="full", master_weights=True, **common),
            "lora": training_memory(method="lora", **common),
            "qlora": training_memory(method="qlora", **common)}


# ----------------------------------------------------------------------------- measured

def _quant_state_tensors(state: object) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes QuantState (absmax, code, offset), and of its nested state2."""
    if state is None:
        return []
    out = []
    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif type(value).__name__ == "QuantState":
            out.extend(_quant_state_tensors(value))
    return out


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    """Where a tensor's memory lives: views, tied weights and aliases share the key."""
    return str(t.device), t.untyped_storage().data_ptr()


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (a view or a tied weight counts once)."""
    return sum({_storage_key(t): t.untyped_storage().nbytes() for t in tensors}.values())


def measure_training_step(model: nn.Module, batch: Mapping[str, torch.Tensor],
                          optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer], *,
                          device: str | torch.device) -> dict[str, float | int | None]:
    """One forward + backward + optimizer step of a causal LM on `batch` (input_ids, labels); real bytes.

    weights: parameters (adapters included) and buffers (+ bitsandbytes quant states), by distinct storage.
    trainable, gradients, optimizer: bytes of the trainable parameters, their .grad and optimizer.state's tensors.
    activations: storages saved for backward during the forward (saved_tensors_hooks), parameters excluded.
    With gradient checkpointing that is what the forward keeps (the layer inputs); the recomputed layer
    lives only during its backward, so the peak adds one layer's activations. peak_allocated: the CUDA
    allocator's peak over the step (None on CPU). The model must already be on `device`; it is put in
    train mode and updated by one step.
    """
    device = torch.device(device)
    if any(p.device.type != device.type for p in model.parameters()):
        raise ValueError(f"Move the model to {device} first (bitsandbytes quantizes on that move).")
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    model.train()
    model.zero_grad(set_to_none=True)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("The model has no trainable parameters.")
    weight_tensors = params + list(model.buffers())
    weight_tensors += [t for p in params for t in _quant_state_tensors(getattr(p, "quant_state", None))]
    weight_keys = {_storage_key(t) for t in weight_tensors}
    optimizer = optimizer_factory(trainable)

    saved: dict[tuple[str, int], int] = {}  # storage -> bytes, each storage once, weights left out

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in weight_keys:
            saved.setdefault(key, t.untyped_storage().nbytes())
        return t  # keep the tensor itself: the hook only looks

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    gradients = _storage_bytes(p.grad for p in trainable if p.grad is not None)
    optimizer.step()
    if cuda:
        torch.cuda.synchronize(device)
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    result = {
        "weights": _storage_bytes(weight_tensors),
        "trainable": _storage_bytes(trainable),
        "trainable_params": sum(p.numel() for p in trainable),
        "gradients": gradients,
        "optimizer": _storage_bytes(state),
        "activations": sum(saved.values()),
        "peak_allocated": torch.cuda.max_memory_allocated(device) if cuda else None,
        "loss": float(loss.detach()),
    }
    optimizer.zero_grad(set_to_none=True)  # free the gradients; the optimizer state goes with `optimizer`
    return result
