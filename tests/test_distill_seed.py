"""The seed's distillation loss (course_lib.distill.seed): right on (N, V) logits, wrong on a language model's (B, L, V)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.distill.loss import IGNORE_INDEX, distillation_loss, next_token_labels, soft_kl
from course_lib.distill.seed import (flatten_positions, seed_cross_entropy_on_lm, seed_distillation_loss,
                                     seed_scale_error, seed_soft_term)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lm_logits(batch: int, positions: int, vocab: int, seed: int = 0):
    """Student and teacher logits (B, L, V) and valid labels (B, L)."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, positions, vocab, generator=g) * 2
    teacher = torch.randn(batch, positions, vocab, generator=g) * 3
    labels = torch.randint(0, vocab, (batch, positions), generator=g)
    return student, teacher, labels


@pytest.mark.parametrize("batch, positions, temperature", [(2, 5, 2.0), (3, 16, 1.0), (1, 33, 4.0)])
def test_batchmean_on_lm_logits_is_positions_times_too_big(batch, positions, temperature):
    student, teacher, _ = lm_logits(batch, positions, 37)
    r = seed_scale_error(student, teacher, temperature)
    assert (r.batch, r.positions) == (batch, positions)
    assert r.ratio == pytest.approx(positions, rel=1e-4)
    assert r.seed_soft == pytest.approx(positions * r.per_token_soft, rel=1e-4)


def test_flattened_seed_soft_term_is_the_per_token_kl():
    student, teacher, _ = lm_logits(3, 8, 50, seed=1)
    for temperature in (0.5, 1.0, 2.0, 8.0):
        flat = seed_soft_term(flatten_positions(student), flatten_positions(teacher), temperature)
        ours = soft_kl(student, teacher, temperature) * temperature**2
        assert float(flat) == pytest.approx(float(ours), rel=1e-5)
    assert seed_scale_error(student, teacher, 3.0).flat_seed_soft == pytest.approx(
        seed_scale_error(student, teacher, 3.0).per_token_soft, rel=1e-5)


def test_seed_cross_entropy_needs_the_reshape():
    student, teacher, labels = lm_logits(2, 5, 11)
    with pytest.raises(RuntimeError):  # dim 1 (5 positions) is read as the classes
        seed_distillation_loss(student, teacher, labels)
    assert "Expected target size" in seed_cross_entropy_on_lm(student, labels)
    # L == V: no error, but the wrong dimension is scored.
    square, _, square_labels = lm_logits(2, 7, 7, seed=2)
    assert "ran without error" in seed_cross_entropy_on_lm(square, square_labels)
    wrong = F.cross_entropy(square, square_labels)
    right = F.cross_entropy(*flatten_positions(square, square_labels))
    assert not torch.isclose(wrong, right, rtol=1e-3)


@pytest.mark.parametrize("temperature, alpha", [(2.0, 0.5), (1.0, 0.0), (4.0, 0.9), (3.0, 1.0)])
def test_course_loss_equals_seed_on_flattened_aligned_labels(temperature, alpha):
    student, teacher, labels = lm_logits(2, 9, 23, seed=3)
    flat_s, flat_y = flatten_positions(student, labels)
    seed = seed_distillation_loss(flat_s, flatten_positions(teacher), flat_y, temperature=temperature, alpha=alpha)
    ours = distillation_loss(student, teacher, labels, temperature=temperature, alpha=alpha).loss
    assert float(ours) == pytest.approx(float(seed), rel=1e-5)


def test_seed_counts_padding_in_the_soft_term():
    """With ignored labels (padding, the last position), the seed's CE skips them but its KL still averages them in."""
    student, teacher, ids = lm_logits(2, 6, 19, seed=4)
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0  # right padding in the second sequence
    labels = next_token_labels(ids, mask)
    scored = labels != IGNORE_INDEX
    flat_s, flat_y = flatten_positions(student, labels)
    seed = seed_distillation_loss(flat_s, flatten_positions(teacher), flat_y, temperature=2.0, alpha=0.0)
    ours = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.0)
    assert ours.tokens == int(scored.sum()) < labels.numel()
    assert float(seed) == pytest.approx(4.0 * float(soft_kl(student, teacher, 2.0)), rel=1e-5)  # every position
    assert float(ours.loss) == pytest.approx(4.0 * float(soft_kl(student, teacher, 2.0, scored)), rel=1e-5)
    assert abs(float(seed) - float(ours.loss)) > 1e-3


def test_seed_scale_error_wants_lm_logits():
    with pytest.raises(ValueError, match="batch, positions, vocab"):
        seed_scale_error(torch.zeros(4, 10), torch.zeros(4, 10))
