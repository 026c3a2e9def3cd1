"""course_lib.distill: the loss, the training loop, teacher samples and context distillation."""

import pytest
import torch

from course_lib.distill.loss import (IGNORE_INDEX, distillation_loss, next_token_labels, soft_kl, soft_targets)
from course_lib.distill.sequence import TeacherSamples, repeated_ngrams, sample_from_teacher
from course_lib.distill.trainer import CorpusWindows, DistillConfig, evaluate, make_eval_set, train_student
from course_lib.lm.models import tiny_model


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kl_zero_when_student_is_teacher_plus_constant_per_position(temperature):
    t = _logits(2, 5, 11)
    shift = _logits(2, 5, 1, seed=1) * 10  # a different constant at every position
    assert soft_kl(t + shift, t, temperature).item() == pytest.approx(0.0, abs=1e-6)
    # ...and not zero when the shift varies along the vocabulary
    assert soft_kl(t + _logits(2, 5, 11, seed=2), t, temperature).item() > 1e-3


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kl_gradient_is_t_times_prob_difference_over_n(temperature):
    s = _logits(3, 4, 7, seed=3).requires_grad_()
    t = _logits(3, 4, 7, seed=4)
    parts = distillation_loss(s, t, None, temperature=temperature, alpha=0.0)
    parts.loss.backward()
    n = 3 * 4
    expected = temperature * (soft_targets(s.detach(), temperature) - soft_targets(t, temperature)) / n
    torch.testing.assert_close(s.grad, expected, atol=1e-6, rtol=1e-4)


def test_kl_is_a_mean_over_scored_tokens_not_the_vocabulary():
    s, t = _logits(2, 3, 50, seed=5), _logits(2, 3, 50, seed=6)
    per_position = (torch.softmax(t, -1) * (torch.log_softmax(t, -1) - torch.log_softmax(s, -1))).sum(-1)
    assert soft_kl(s, t).item() == pytest.approx(per_position.mean().item(), rel=1e-5)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert soft_kl(s, t, mask=mask).item() == pytest.approx(per_position[mask].mean().item(), rel=1e-5)


def test_padding_and_prompt_positions_are_left_out():
    ids = torch.tensor([[5, 6, 7, 0, 0], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    labels = next_token_labels(ids, mask)
    assert labels.tolist() == [[6, 7, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX], [2, 3, 4, 5, IGNORE_INDEX]]
    s, t = _logits(2, 5, 9, seed=7), _logits(2, 5, 9, seed=8)
    parts = distillation_loss(s, t, labels, temperature=2.0, alpha=0.3)
    assert parts.tokens == 6
    # garbage at ignored positions changes nothing
    s2 = s.clone()
    s2[0, 2:] = 100.0
    s2[1, 4] = -50.0
    assert distillation_loss(s2, t, labels, temperature=2.0, alpha=0.3).loss.item() == pytest.approx(parts.loss.item())
    ce = torch.nn.functional.cross_entropy(s[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
    expected = 0.3 * ce + 0.7 * 4.0 * parts.kl
    assert parts.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_vocabulary_mismatch_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="vocabulary"):
        distillation_loss(_logits(2, 3, 10), _logits(2, 3, 12), None, alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(_logits(2, 3, 10), _logits(2, 3, 10), None, alpha=0.5)
    with pytest.raises(ValueError, match="next_token_labels"):
        distillation_loss(_logits(2, 3, 10), _logits(2, 3, 10), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        soft_kl(_logits(2, 10), _logits(2, 10), temperature=0)
    with pytest.raises(ValueError, match="no position"):
        soft_kl(_logits(2, 10), _logits(2, 10), mask=torch.zeros(2, dtype=torch.bool))
    teacher, student = tiny_model("llama", vocab_size=64), tiny_model("llama", vocab_size=48)
    with pytest.raises(ValueError, match="shared tokenizer"):
        train_student(student, CorpusWindows(torch.arange(500) % 48, 2, 8), DistillConfig(steps=1), teacher=teacher,
                      progress=False)
    with pytest.raises(ValueError, match="steps"):
        DistillConfig(steps=0)


def _stream(n=4000, vocab=64, seed=0):
    # a learnable stream: mostly the previous token + 1, sometimes random
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, dtype=torch.long)
    for i in range(1, n):
        x[i] = (x[i - 1] + 1) % vocab if torch.rand(1, generator=g) < 0.8 else torch.randint(vocab, (1,), generator=g)
    return x


def test_a_few_distillation_steps_lower_the_held_out_kl_and_runs_are_deterministic():
    teacher = tiny_model("llama", vocab_size=64, seed=1)
    stream = _stream()
    teacher_cfg = DistillConfig(steps=60, batch_size=8, seq_len=32, lr=3e-3, warmup=5, eval_every=60)
    train_student(teacher, CorpusWindows(stream, 8, 32), teacher_cfg, progress=False)  # give the teacher some skill
    held_out = _stream(seed=9)
    evalset = make_eval_set(held_out, 32, 512, teacher)
    cfg = DistillConfig(steps=20, batch_size=8, seq_len=32, lr=3e-3, warmup=2, eval_every=10, alpha=0.0)
    runs = []
    for _ in range(2):
        student = tiny_model("llama", vocab_size=64, seed=2)
        runs.append(train_student(student, CorpusWindows(stream, 8, 32), cfg, teacher=teacher, evalset=evalset,
                                  progress=False))
    log = runs[0].log
    assert [r["step"] for r in log] == [0, 10, 20]
    assert log[-1]["val_kl"] < 0.7 * log[0]["val_kl"]
    assert [r["val_kl"] for r in runs[0].log] == [r["val_kl"] for r in runs[1].log]
    # the evaluation's KL is KL(teacher || student) on the held-out windows
    assert evaluate(teacher, evalset)["val_kl"] == pytest.approx(0.0, abs=2e-3)


def test_teacher_samples_are_seeded_and_score_only_generated_tokens():
    teacher = tiny_model("llama", vocab_size=64, seed=1)
    prompts = torch.randint(0, 64, (6, 4), generator=torch.Generator().manual_seed(0))
    a = sample_from_teacher(teacher, prompts, 5, seed=3, batch_size=4)
    b = sample_from_teacher(teacher, prompts, 5, seed=3, batch_size=4)
    c = sample_from_teacher(teacher, prompts, 5, seed=4, batch_size=4)
    assert a.shape == (6, 9) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :4], prompts)
    greedy = sample_from_teacher(teacher, prompts[:1], 3, greedy=True)
    with torch.no_grad():
        first = teacher(input_ids=prompts[:1]).logits[0, -1].argmax()
    assert greedy[0, 4] == first
    ids, labels = TeacherSamples(a, prompt_len=4, batch_size=3)(torch.Generator().manual_seed(0))
    assert (labels[:, :3] == IGNORE_INDEX).all() and (labels[:, -1] == IGNORE_INDEX).all()
    assert torch.equal(labels[:, 3:-1], ids[:, 4:])
    with pytest.raises(ValueError, match="positions"):
        sample_from_teacher(teacher, prompts, 300)


def test_repeated_ngrams():
    assert repeated_ngrams(torch.tensor([[1, 2, 1, 2, 1, 2]]), n=2) == pytest.approx(3 / 5)
    assert repeated_ngrams(torch.tensor([[1, 2, 3, 4, 5, 6]]), n=2) == 0.0
