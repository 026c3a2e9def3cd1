"""Training a model with the course's attention: plugged into transformers, and compared with SDPA step by step.

    use_course_attention(model)             # every attention layer now calls course_attention
    run = compare_training(steps=20)        # the bundled model twice from one init, SDPA vs course, same batches

``course_attention`` runs the Triton kernels of ``triton_train`` where they can (a CUDA tensor in fp16/bf16, head dim
64 or 128) and otherwise the same algorithm in PyTorch (``tiled.flash_attention_tiled`` forward, keeping the
logsumexp, and ``tiled.flash_backward_tiled`` backward, joined by ``tiled.LseAttention`` as the kernels are), so a CPU can check the plumbing
and the gradients that the GPU then runs fast. Causal self-attention only, without dropout or padding masks: what
the course trains with; anything else gets a clear error.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from .tiled import TILED, LseAttention

COURSE = "course_attention"  # a name with "flash" in it would send transformers to the hub


def triton_path(q: torch.Tensor) -> bool:
    """Whether course_attention runs the Triton kernels for q (else the PyTorch version)."""
    from .triton_flash import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, triton

    return triton is not None and q.is_cuda and q.dtype in SUPPORTED_DTYPES and q.shape[-1] in SUPPORTED_HEAD_DIMS


def course_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                     scale: float | None = None) -> torch.Tensor:
    """Differentiable attention of q (B, H, Tq, d) over k, v (B, H_kv, Tk, d): Triton where it can, else PyTorch.

    Under autocast the inputs are cast to its dtype first, as autocast does for SDPA: in a Llama layer q and k come
    out of the rotary embedding in float32 (bf16 projections times float32 cos/sin), which the kernels do not take.
    ``course_attention.last_path`` says which version ran last ("triton" or "pytorch (tiled)")."""
    kind = q.device.type
    if torch.is_autocast_enabled(kind):
        low = torch.get_autocast_dtype(kind)
        q, k, v = q.to(low), k.to(low), v.to(low)
    if triton_path(q):
        from .triton_train import flash_attention_train

        course_attention.last_path = "triton"
        return flash_attention_train(q, k, v, causal=causal, scale=scale)
    course_attention.last_path = "pytorch (tiled)"
    return LseAttention.apply(q, k, v, causal, scale, *TILED)


course_attention.last_path = None


def _course_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention interface: (B, H, T, d) in, (B, T, H, d) out, no attention weights."""
    if dropout:
        raise ValueError(f"The course's attention has no dropout (the layer asks for {dropout}): set the model's "
                         "attention dropout to 0 (compare_training does) or train with attn_implementation='sdpa'.")
    if is_causal is False or not getattr(module, "is_causal", True):
        raise ValueError("The course's attention is causal self-attention only; this layer is not causal.")
    if attention_mask is not None:   # transformers may pass the causal mask explicitly: accept exactly that
        t_q, t_k = query.shape[2], key.shape[2]
        causal = torch.ones(t_q, t_k, dtype=torch.bool, device=query.device).tril(t_k - t_q)
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        if mask.shape[-2:] != causal.shape or not bool((mask == causal).all()):
            raise ValueError("The course's attention takes no padding mask: batch sequences of equal length "
                             "(as the course's training windows are), or use attn_implementation='sdpa'.")
    out = course_attention(query, key, value, causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the course's attention with transformers under COURSE (and SDPA's mask for it); returns COURSE."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(COURSE, _course_attention_forward)
    AttentionMaskInterface.register(COURSE, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return COURSE


def use_course_attention(model) -> None:
    """Make every attention layer of a transformers model call course_attention."""
    model.set_attn_implementation(register())


def _no_attention_dropout(model) -> None:
    model.config.attention_dropout = 0.0
    for m in model.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.0


def compare_training(steps: int = 20, *, batch: int = 8, seq_len: int = 256, lr: float = 1e-5, seed: int = 0,
                     device: str | torch.device | None = None, model_name: str = "course-model") -> dict:
    """Train two copies of `model_name` (float32 weights, the same initial weights) for `steps` AdamW steps on the
    same random training windows, one with SDPA's attention and one with the course's; on CUDA under bf16 autocast
    (the course's training precision; the course attention then runs the Triton kernels), on a CPU in float32 (the
    PyTorch version). Returns {"sdpa": losses, "course": losses, "max_rel_diff": the largest |Δloss| / loss,
    "ms_per_step": {name: median ms}, "device", "attention": which course path ran}; attention dropout is off in both."""
    from ..core.env import choose_device
    from ..lm.models import load_model
    from ..lm.tokens import calibration_batches

    device = choose_device(device) if not isinstance(device, torch.device) else device
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be positive, got {steps} and {batch}.")
    models = {}
    for name in ("sdpa", "course"):
        model, tok = load_model(model_name, device=str(device), dtype=torch.float32)
        _no_attention_dropout(model)
        if name == "course":
            use_course_attention(model)
        else:
            model.set_attn_implementation("sdpa")
        models[name] = model.train()
    data = calibration_batches(tok, steps * batch, seq_len, seed=seed, split="train").to(device)
    cuda = device.type == "cuda"
    losses, times = {n: [] for n in models}, {n: [] for n in models}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=lr) for n, m in models.items()}
    for step in range(steps):
        ids = data[step * batch:(step + 1) * batch]
        for name, model in models.items():   # alternate, so that both see the machine in the same state
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            losses[name].append(loss.item())
    return {"sdpa": losses["sdpa"], "course": losses["course"],
            "max_rel_diff": max(abs(a - b) / abs(a) for a, b in zip(losses["sdpa"], losses["course"])),
            "ms_per_step": {n: 1e3 * statistics.median(t[1:] or t) for n, t in times.items()},
            "device": str(device), "attention": course_attention.last_path}
