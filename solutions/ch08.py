"""Reference solutions for chapter 08's exercises (kept out of the notebooks)."""

import torch
import torch.nn.functional as F


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


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor,
            attention_mask: torch.Tensor, prompt_len: torch.Tensor, T: float, alpha: float) -> torch.Tensor:
    # Label shift: the logits at position i predict token i + 1; the last position has no target.
    s, t = student_logits[:, :-1].float(), teacher_logits[:, :-1].float()
    labels = input_ids[:, 1:]
    # Score position i when its target is a real token (not padding) of the response (not the prompt).
    target = torch.arange(1, input_ids.shape[1], device=input_ids.device)
    scored = attention_mask[:, 1:].bool() & (target[None, :] >= prompt_len[:, None])
    # KL(p_T || p_S) at temperature T, summed over the vocabulary; log_softmax keeps large logits finite.
    log_p_s, log_p_t = F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B, L-1)
    ce = F.cross_entropy(s.transpose(1, 2), labels, reduction="none")  # (B, L-1), hard labels at T = 1
    n = scored.sum()  # a mean over the scored tokens of the whole batch, not over rows
    return alpha * ce[scored].sum() / n + (1 - alpha) * T**2 * kl[scored].sum() / n


def kd_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor,
            attention_mask: torch.Tensor, T: float, alpha: float) -> torch.Tensor:
    # Per scored position: d CE / dz = softmax(z) - onehot(target); d (T^2 KL) / dz = T^2 * (p_S - p_T) / T.
    # The loss is a mean over the N scored positions, so each carries 1/N; the others get nothing.
    B, L, V = student_logits.shape
    s, t = student_logits[:, :-1].double(), teacher_logits[:, :-1].double()
    scored = attention_mask[:, 1:].bool()
    ce = torch.softmax(s, -1) - F.one_hot(input_ids[:, 1:], V).double()
    kd = T * (torch.softmax(s / T, -1) - torch.softmax(t / T, -1))
    grad = torch.zeros(B, L, V, dtype=torch.float64)
    grad[:, :-1] = (alpha * ce + (1 - alpha) * kd) * scored[..., None] / scored.sum()
    return grad
