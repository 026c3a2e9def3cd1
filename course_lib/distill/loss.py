"""The distillation loss, written out.

Hinton et al. (2015) train a student on a mix of the true labels and the teacher's "soft labels",
the teacher's distribution softened by a temperature T:

    L = alpha * CE(y, p_S) + (1 - alpha) * T^2 * KL(p_T^T || p_S^T),   p^T = softmax(z / T)

* The CE term uses the student's logits at T = 1, against the hard labels.
* The KL term compares the two softened distributions, summed over the vocabulary and averaged
  over the scored positions (tokens for a language model, examples for a classifier).
* The T^2 factor: d KL(p_T^T || p_S^T) / d z_S = (p_S^T - p_T^T) / T, and p_S^T - p_T^T itself
  shrinks like 1/T when T is large, so without T^2 the soft term's gradient fades as 1/T^2.
  With it, d(T^2 KL)/d z_S = T (p_S^T - p_T^T), which stays of the same size as T changes.

Logits are (..., V) and labels (...) align position by position: position i's logits score
labels[i]. For a causal LM, `next_token_labels` builds such labels from the input ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class LossParts:
    """The distillation loss and its two terms (tensors; `loss` carries the gradient)."""

    loss: torch.Tensor
    ce: torch.Tensor | None  # hard-label cross-entropy (None when alpha == 0 and no labels)
    kl: torch.Tensor  # KL(p_T || p_S) at temperature T, per position, WITHOUT the T^2 factor
    tokens: int  # positions scored


def check_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Raise a clear error unless the two logit tensors score the same vocabulary at the same positions."""
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"The student's vocabulary ({student_logits.shape[-1]} logits) differs from the teacher's "
            f"({teacher_logits.shape[-1]}). Logit (white-box) distillation needs one shared tokenizer: "
            "give both models the same one, or distil black-box (train the student on the teacher's "
            "text, re-tokenized with the student's tokenizer).")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"Student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (the same positions).")


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels aligned with a causal LM's logits: labels[:, i] = input_ids[:, i + 1].

    The last position has no next token, and positions whose next token is padding are ignored.
    """
    labels = torch.full_like(input_ids, ignore_index)
    labels[:, :-1] = input_ids[:, 1:]
    if attention_mask is not None:
        labels[:, :-1][attention_mask[:, 1:] == 0] = ignore_index
    return labels


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_T || p_S) of the softened distributions, summed over the vocabulary, mean over positions.

    mask: bool (...) of the positions to score (default: all). Computed in float32.
    """
    check_vocab(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_position = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # sum_v p_T (log p_T - log p_S)
    if mask is None:
        return per_position.mean()
    if mask.shape != per_position.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match the logits' positions {tuple(per_position.shape)}.")
    n = int(mask.sum())
    if n == 0:
        raise ValueError("The mask scores no position (every label is padding or ignored).")
    return per_position[mask].sum() / n  # "batchmean" over the scored tokens, not over the batch


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor | None = None, *, temperature: float = 2.0, alpha: float = 0.5,
                      mask: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> LossParts:
    """alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(p_T^T || p_S^T), averaged over scored positions.

    labels: (...) aligned with the logits (see next_token_labels); positions equal to ignore_index
      (padding, prompts) are left out of both terms. Without labels, alpha must be 0 and `mask`
      (bool, default all) says which positions to score.
    """
    check_vocab(student_logits, teacher_logits)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha weighs the hard-label term and must be in [0, 1], got {alpha}.")
    if labels is None:
        if alpha > 0:
            raise ValueError("alpha > 0 needs hard labels; pass labels, or alpha=0 for pure distillation.")
        scored = mask if mask is not None else torch.ones(student_logits.shape[:-1], dtype=torch.bool,
                                                          device=student_logits.device)
    else:
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(f"labels {tuple(labels.shape)} must match the logits' positions "
                             f"{tuple(student_logits.shape[:-1])}; for a causal LM use next_token_labels(input_ids).")
        scored = labels != ignore_index
        if mask is not None:
            scored = scored & mask
    kl = soft_kl(student_logits, teacher_logits, temperature, scored)
    ce = None
    if labels is not None:
        ce = F.cross_entropy(student_logits[scored].float(), labels[scored])
    loss = (1 - alpha) * temperature**2 * kl
    if ce is not None and alpha > 0:
        loss = loss + alpha * ce
    return LossParts(loss=loss, ce=ce, kl=kl, tokens=int(scored.sum()))


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T): the teacher's soft labels at temperature T."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    return F.softmax(logits.float() / temperature, dim=-1)
