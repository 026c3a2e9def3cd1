"""The source document's distillation loss (section 6.4.2), and what goes wrong on a language model.

`seed_distillation_loss` is our transcription of the seed's function, kept as written so that the
notebook can run it: hard CE plus T^2 * KL(p_T^T || p_S^T) with `reduction='batchmean'`.
It is correct for a classifier, whose logits are (N, V). The seed's training loop then feeds it a
causal LM's `.logits`, which are (B, L, V), and three things break:

1. `F.cross_entropy(logits, labels)` reads dimension 1 as the classes. On (B, L, V) logits that is
   L, not V: PyTorch wants (B, V, L). With (B, L) labels it raises a shape error (or, if L == V,
   runs and scores the wrong thing). The logits need a reshape to (B*L, V), the labels to (B*L,).
2. `reduction='batchmean'` means "sum, then divide by input.size(0)". On (B, L, V) that divides by
   B, not by the B*L tokens, so the soft term is L times the per-token KL and swamps the hard term.
   On flattened (B*L, V) logits it is the per-token mean, as intended.
3. It has no next-token shift (labels[i] must be the token AFTER position i; a Hugging Face batch's
   `labels` are the input ids, which the model shifts internally) and no padding mask: padded
   positions count in the KL term. `course_lib.distill.loss` handles both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .loss import soft_kl


def seed_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                           temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """The seed's loss, transcribed as it computes it (section 6.4.2): no reshape, no shift, no mask."""
    # Hard-label term: cross-entropy against the true labels (class dimension = dim 1).
    hard_loss = F.cross_entropy(student_logits, labels)
    # Soft-label term: KL(p_T^T || p_S^T), "batchmean" = summed, divided by the size of dim 0,
    # then scaled by T^2 so that its gradient keeps its size as T changes.
    soft_loss = seed_soft_term(student_logits, teacher_logits, temperature)
    return alpha * hard_loss + (1 - alpha) * soft_loss


def seed_soft_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The seed's soft term alone: F.kl_div(log p_S^T, p_T^T, reduction='batchmean') * T^2."""
    student_soft = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_soft = F.softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(student_soft, teacher_soft, reduction="batchmean") * temperature**2


def flatten_positions(logits: torch.Tensor, labels: torch.Tensor | None = None):
    """(B, L, V) -> (B*L, V) (and (B, L) labels -> (B*L,)): the reshape the seed's loss needs on an LM."""
    flat = logits.reshape(-1, logits.shape[-1])
    return flat if labels is None else (flat, labels.reshape(-1))


@dataclass
class SeedScale:
    """The seed's soft term on a language model's logits, next to the per-token one."""

    batch: int  # B
    positions: int  # L
    seed_soft: float  # seed's T^2 * KL on (B, L, V): divided by B
    flat_seed_soft: float  # seed's T^2 * KL on (B*L, V): divided by B*L
    per_token_soft: float  # T^2 * soft_kl from course_lib.distill.loss: mean over the B*L positions
    ratio: float  # seed_soft / per_token_soft; batchmean on (B, L, V) makes it L


def seed_scale_error(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0) -> SeedScale:
    """Measure how much the seed's `batchmean` KL over-counts on (B, L, V) logits (it comes out L times)."""
    if student_logits.dim() != 3:
        raise ValueError(f"Pass a language model's (batch, positions, vocab) logits, got shape {tuple(student_logits.shape)}.")
    batch, positions, _ = student_logits.shape
    with torch.no_grad():
        seed = float(seed_soft_term(student_logits, teacher_logits, temperature))
        flat = float(seed_soft_term(flatten_positions(student_logits), flatten_positions(teacher_logits), temperature))
        ours = float(soft_kl(student_logits, teacher_logits, temperature)) * temperature**2
    return SeedScale(batch=batch, positions=positions, seed_soft=seed, flat_seed_soft=flat, per_token_soft=ours,
                     ratio=seed / ours)


def seed_cross_entropy_on_lm(student_logits: torch.Tensor, labels: torch.Tensor) -> str:
    """What the seed's `F.cross_entropy(student_logits, labels)` does with (B, L, V) logits and (B, L) labels.

    Returns PyTorch's error message, or, when it runs (only if L == V), a note that it scored the
    wrong dimension: dim 1 (positions) was taken as the classes.
    """
    try:
        with torch.no_grad():
            F.cross_entropy(student_logits, labels)
    except (RuntimeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return (f"ran without error, but read dim 1 (the {student_logits.shape[1]} positions) as the classes: "
            "the value is meaningless")
