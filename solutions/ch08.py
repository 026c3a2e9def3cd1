"""Reference solutions for chapter 08's exercises (kept out of the notebooks)."""

import torch


def soften(logits: torch.Tensor, T: float) -> torch.Tensor:
    # p_i = exp(z_i / T) / sum_j exp(z_j / T): the temperature divides the logits before the softmax.
    return torch.softmax(logits / T, dim=-1)


def kd_gradient(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    # KL(p_T || p_S) = sum p_T log p_T - sum p_T log p_S, and d log p_S,i / d z_j = (delta_ij - p_S,j) / T,
    # so d KL / d z_S = (p_S - p_T) / T; times T^2 that is T * (p_S - p_T).
    p_s = torch.softmax(student_logits / T, dim=-1)
    p_t = torch.softmax(teacher_logits / T, dim=-1)
    return T * (p_s - p_t)


def student_params(hidden: int, layers: int, intermediate: int, vocab: int, heads: int, kv_heads: int) -> int:
    head_dim = hidden // heads
    attention = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim  # q, o  +  k, v
    mlp = 3 * hidden * intermediate  # gate, up, down
    norms = 2 * hidden  # input and post-attention RMSNorm weights
    return layers * (attention + mlp + norms) + 2 * vocab * hidden + hidden  # + embedding, lm_head, final norm
