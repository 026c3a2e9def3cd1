"""Chapter 08's exercises: plausible wrong solutions of the loss and of its gradient fail with a hint that names
their mistake, correct variants pass, garbage never makes a check raise, the cases cover what they claim, and the
diagnosis' own arithmetic (``_kd_by_hand``, ``_grad_by_hand``) is the reference's when no mistake is passed in.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails.)
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.exercises import ch08, load_solutions
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch08")


@pytest.mark.parametrize("name, n_cases", [("kd_loss", 20), ("kd_grad", 15)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    check = ch08.EXERCISES[name]
    ok, out = run(check, getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out

    def stub(*args):
        raise NotImplementedError

    ok, out = run(check, stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


def test_the_formula_exercises_are_warm_ups():
    assert set(ch08.WARM_UPS) == {"soften", "kd_gradient", "student_params"}
    assert set(ch08.EXERCISES) - set(ch08.WARM_UPS) == {"kd_loss", "kd_grad"}


# --- 1. kd_loss: wrong solutions, written as a learner would ----------------------------------------------------------

def _loss(s, t, labels, scored, T, alpha, *, divide=None, t_factor=None, reverse=False, ce_T=False,
          teacher_only=False, swap=False):
    """The loss on already aligned (B, P, V) logits, (B, P) labels and scored mask, with one choice swapped."""
    s, t = s.float(), t.float()
    log_p_s = F.log_softmax(s if teacher_only else s / T, -1)
    log_p_t = F.log_softmax(t / T, -1)
    kl = ((log_p_s.exp() * (log_p_s - log_p_t)) if reverse else (log_p_t.exp() * (log_p_t - log_p_s))).sum(-1)
    ce = F.cross_entropy((s / T if ce_T else s).transpose(1, 2), labels, reduction="none")
    n = scored.sum() if divide is None else divide
    a = 1 - alpha if swap else alpha
    factor = T**2 if t_factor is None else t_factor(T)
    return a * (ce * scored).sum() / n + (1 - a) * factor * (kl * scored).sum() / n


def _aligned(s, t, ids, mask, prompt):
    target = torch.arange(1, ids.shape[1])
    return s[:, :-1], t[:, :-1], ids[:, 1:], mask[:, 1:].bool() & (target[None] >= prompt[:, None])


def loss_no_shift(s, t, ids, mask, prompt, T, alpha):
    scored = mask.bool() & (torch.arange(ids.shape[1])[None] >= prompt[:, None])
    return _loss(s, t, ids, scored, T, alpha)


def loss_pad_mask_unshifted(s, t, ids, mask, prompt, T, alpha):
    s_, t_, labels, _ = _aligned(s, t, ids, mask, prompt)
    target = torch.arange(1, ids.shape[1])
    scored = mask[:, :-1].bool() & (target[None] >= prompt[:, None])
    return _loss(s_, t_, labels, scored, T, alpha)


def loss_no_padding_mask(s, t, ids, mask, prompt, T, alpha):
    s_, t_, labels, _ = _aligned(s, t, ids, mask, prompt)
    scored = (torch.arange(1, ids.shape[1])[None] >= prompt[:, None]).expand_as(labels)
    return _loss(s_, t_, labels, scored, T, alpha)


def loss_prompt_off_by_one(s, t, ids, mask, prompt, T, alpha):
    s_, t_, labels, _ = _aligned(s, t, ids, mask, prompt)
    scored = mask[:, 1:].bool() & (torch.arange(ids.shape[1] - 1)[None] >= prompt[:, None])
    return _loss(s_, t_, labels, scored, T, alpha)


def loss_prompt_scored(s, t, ids, mask, prompt, T, alpha):
    s_, t_, labels, _ = _aligned(s, t, ids, mask, prompt)
    return _loss(s_, t_, labels, mask[:, 1:].bool(), T, alpha)


def loss_batchmean(s, t, ids, mask, prompt, T, alpha):
    return _loss(*_aligned(s, t, ids, mask, prompt), T, alpha, divide=s.shape[0])


def loss_summed(s, t, ids, mask, prompt, T, alpha):
    return _loss(*_aligned(s, t, ids, mask, prompt), T, alpha, divide=1)


def loss_mean_of_row_means(s, t, ids, mask, prompt, T, alpha):
    s_, t_, labels, scored = _aligned(s, t, ids, mask, prompt)
    rows = [_loss(s_[b:b + 1], t_[b:b + 1], labels[b:b + 1], scored[b:b + 1], T, alpha)
            for b in range(s.shape[0]) if scored[b].any()]
    return torch.stack(rows).mean()


def loss_mean_over_all_positions(s, t, ids, mask, prompt, T, alpha):
    s_, t_, labels, scored = _aligned(s, t, ids, mask, prompt)
    return _loss(s_, t_, labels, scored, T, alpha, divide=scored.numel())


def loss_times_T(s, t, ids, mask, prompt, T, alpha):
    return _loss(*_aligned(s, t, ids, mask, prompt), T, alpha, t_factor=lambda T: T)


def loss_without_T2(s, t, ids, mask, prompt, T, alpha):
    return _loss(*_aligned(s, t, ids, mask, prompt), T, alpha, t_factor=lambda T: 1.0)


def loss_reverse_kl(s, t, ids, mask, prompt, T, alpha):
    return _loss(*_aligned(s, t, ids, mask, prompt), T, alpha, reverse=True)


def loss_ce_softened(s, t, ids, mask, prompt, T, alpha):
    return _loss(*_aligned(s, t, ids, mask, prompt), T, alpha, ce_T=True)


def loss_student_not_softened(s, t, ids, mask, prompt, T, alpha):
    return _loss(*_aligned(s, t, ids, mask, prompt), T, alpha, teacher_only=True)


def loss_alpha_swapped(s, t, ids, mask, prompt, T, alpha):
    return _loss(*_aligned(s, t, ids, mask, prompt), T, alpha, swap=True)


def loss_kl_div_batchmean(s, t, ids, mask, prompt, T, alpha):
    # the seed's F.kl_div(..., reduction="batchmean") on the masked (B, L-1, V) logits: divides by B
    s_, t_, labels, scored = _aligned(s, t, ids, mask, prompt)
    m = scored[..., None].float()
    kl = F.kl_div(F.log_softmax(s_ / T, -1) * m, F.softmax(t_ / T, -1) * m, reduction="batchmean")
    ce = F.cross_entropy(s_[scored], labels[scored])
    return alpha * ce + (1 - alpha) * T**2 * kl


def loss_naive_softmax(s, t, ids, mask, prompt, T, alpha):
    # exp() without subtracting the max: overflows on the large-logit case only
    s_, t_, labels, scored = _aligned(s, t, ids, mask, prompt)
    p_s = (s_ / T).exp() / (s_ / T).exp().sum(-1, keepdim=True)
    p_t = (t_ / T).exp() / (t_ / T).exp().sum(-1, keepdim=True)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1)
    q = s_.exp() / s_.exp().sum(-1, keepdim=True)
    ce = -q.gather(-1, labels[..., None]).squeeze(-1).log()
    n = scored.sum()
    return alpha * (ce * scored).sum() / n + (1 - alpha) * T**2 * (kl * scored).sum() / n


def loss_float16(s, t, ids, mask, prompt, T, alpha):
    return SOL.kd_loss(s.half(), t.half(), ids, mask, prompt, T, alpha).half().float()


LOSS_MISTAKES = [
    (loss_no_shift, "didn't shift the labels"),
    (loss_pad_mask_unshifted, "padding mask is one position off"),
    (loss_no_padding_mask, "target is padding"),
    (loss_prompt_off_by_one, "prompt mask is one position off"),
    (loss_prompt_scored, "scored the prompt too"),
    (loss_batchmean, "divided by the batch size"),
    (loss_kl_div_batchmean, "divided by the batch size"),
    (loss_summed, "without averaging"),
    (loss_mean_of_row_means, "averaged each row, then the rows"),
    (loss_mean_over_all_positions, "divided by every position"),
    (loss_times_T, "multiplied by T, not T^2"),
    (loss_without_T2, "left out the T^2 factor"),
    (loss_reverse_kl, "KL is reversed"),
    (loss_ce_softened, "cross-entropy uses the softened student"),
    (loss_student_not_softened, "softened only the teacher"),
    (loss_alpha_swapped, "swapped"),
    (loss_naive_softmax, "overflows float32"),
    (loss_float16, "3 significant digits"),
]


# --- 2. kd_grad: wrong solutions --------------------------------------------------------------------------------------

def _grad(s, t, ids, mask, T, alpha, *, labels=None, scored=None, shift=True, divide=None, kd_factor=None, sign=1,
          onehot=True, ce_T=False, swap=False):
    B, L, V = s.shape
    P = L - 1 if shift else L
    labels = (ids[:, 1:] if shift else ids) if labels is None else labels
    scored = (mask[:, 1:] if shift else mask).bool() if scored is None else scored
    s_, t_ = s[:, :P].float(), t[:, :P].float()
    a = 1 - alpha if swap else alpha
    ce = torch.softmax(s_ / T if ce_T else s_, -1) - (F.one_hot(labels, V).float() if onehot else 0)
    kd = (T if kd_factor is None else kd_factor(T)) * (torch.softmax(s_ / T, -1) - torch.softmax(t_ / T, -1))
    n = scored.sum() if divide is None else divide
    grad = torch.zeros(B, L, V)
    grad[:, :P] = sign * (a * ce + (1 - a) * kd) * scored[..., None] / n
    return grad


def grad_no_shift(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, shift=False)


def grad_pad_mask_unshifted(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, scored=mask[:, :-1].bool())


def grad_everywhere(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, scored=torch.ones_like(mask[:, 1:]).bool(), divide=mask[:, 1:].sum())


def grad_not_averaged(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, divide=1)


def grad_over_batch(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, divide=s.shape[0])


def grad_over_positions(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, divide=s.shape[0] * (s.shape[1] - 1))


def grad_T_squared(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, kd_factor=lambda T: T**2)


def grad_no_T(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, kd_factor=lambda T: 1.0)


def grad_over_T(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, kd_factor=lambda T: 1 / T)


def grad_teacher_minus_student(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, sign=-1)


def grad_no_one_hot(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, onehot=False)


def grad_ce_softened(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, ce_T=True)


def grad_alpha_swapped(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, alpha, swap=True)


def grad_of_the_kl_only(s, t, ids, mask, T, alpha):
    return _grad(s, t, ids, mask, T, 0.0)


GRAD_MISTAKES = [
    (grad_no_shift, "no label shift"),
    (grad_pad_mask_unshifted, "padding mask is one position off"),
    (grad_everywhere, "target is padding get a gradient"),
    (grad_not_averaged, "not divided by N"),
    (grad_over_batch, "divided by the batch size"),
    (grad_over_positions, "divided by every position"),
    (grad_T_squared, "T^2 where the gradient has T"),
    (grad_no_T, "lacks the factor T"),
    (grad_over_T, "left out the T^2 factor"),
    (grad_teacher_minus_student, "wrong sign"),
    (grad_no_one_hot, "lacks the one-hot"),
    (grad_ce_softened, "CE part uses softmax(s / T)"),
    (grad_alpha_swapped, "swapped"),
    (grad_of_the_kl_only, None),
]


MISTAKES = [(name, wrong, named) for name, mistakes in (("kd_loss", LOSS_MISTAKES), ("kd_grad", GRAD_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch08.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and "Hint: " in out
    if named is not None:
        assert named in hint_of(out), out


def test_the_overflow_is_caught_only_by_the_large_logit_case(capsys):
    ok, out = run(ch08.check_kd_loss, loss_naive_softmax, capsys)
    assert not ok and "edge case: logits up to about +-150" in out and "values are NaN" in out


def test_the_swap_of_alpha_is_caught_where_alpha_is_not_a_half(capsys):
    ok, out = run(ch08.check_kd_loss, loss_alpha_swapped, capsys)
    assert not ok and "alpha 0.3" in out.split("Hint")[0]


# --- correct variants -------------------------------------------------------------------------------------------------

def _loss_flattened(s, t, ids, mask, prompt, T, alpha):
    # a correct variant: labels with -100 and flattened (N, V) rows, F.kl_div(reduction="batchmean") on them, float64
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[:, :-1] = mask[:, 1:].bool() & (torch.arange(1, ids.shape[1])[None] >= prompt[:, None])
    s_, t_ = s[keep].double(), t[keep].double()
    kl = F.kl_div(F.log_softmax(s_ / T, -1), F.log_softmax(t_ / T, -1), reduction="batchmean", log_target=True)
    return alpha * F.cross_entropy(s_, labels[keep]) + (1 - alpha) * T * T * kl


def _loss_loops(s, t, ids, mask, prompt, T, alpha):
    # a correct variant: Python loops over rows and positions
    ce_sum, kl_sum, n = 0.0, 0.0, 0
    for b in range(ids.shape[0]):
        for i in range(ids.shape[1] - 1):
            if mask[b, i + 1] and i + 1 >= prompt[b]:
                ls, lt = torch.log_softmax(s[b, i] / T, -1), torch.log_softmax(t[b, i] / T, -1)
                kl_sum = kl_sum + (lt.exp() * (lt - ls)).sum()
                ce_sum = ce_sum - torch.log_softmax(s[b, i], -1)[ids[b, i + 1]]
                n += 1
    return (alpha * ce_sum + (1 - alpha) * T**2 * kl_sum) / n


def _grad_autograd(s, t, ids, mask, T, alpha):
    # a correct variant: autograd through the solution's loss, with a prompt of one token
    x = s.clone().requires_grad_(True)
    loss = SOL.kd_loss(x, t, ids, mask, torch.ones(ids.shape[0], dtype=torch.long), T, alpha)
    return torch.autograd.grad(loss, x)[0]


def _grad_float32(s, t, ids, mask, T, alpha):
    # a correct variant in float32, with the mask applied through torch.where
    return _grad(s, t, ids, mask, T, alpha)


CORRECT = {"kd_loss": [SOL.kd_loss, _loss_flattened, _loss_loops],
           "kd_grad": [SOL.kd_grad, _grad_autograd, _grad_float32]}


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in CORRECT.items() for v in vs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch08.EXERCISES[name], variant, capsys)
    assert ok is True, out


# --- the cases and the diagnosis' arithmetic --------------------------------------------------------------------------

def test_loss_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch08.kd_loss_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2} and len(cases) == 20
    assert {tuple(c[0].shape) for c in cases} >= {(3, 8, 50), (1, 6, 11), (4, 16, 257), (2, 12, 1000)}
    for s, t, ids, mask, prompt, T, alpha in cases:
        assert s.dtype == t.dtype == torch.float32 and s.shape == t.shape and ids.shape == mask.shape == s.shape[:2]
        n = mask.sum(1)
        assert bool((mask == (torch.arange(mask.shape[1])[None] < n[:, None]).long()).all())  # right-padded
        assert bool((ids[mask == 0] == 0).all()) and bool((1 <= prompt).all()) and bool((prompt <= n).all())
        assert bool((ch08.response_labels(ids, mask, prompt) != -100).any())  # something to score
    assert {T for *_, T, _ in cases} >= {1.0, 2.0, 4.0} and {a for *_, a in cases} >= {0.0, 0.5, 1.0}
    scored_rows = [(ch08.response_labels(ids, mask, p) != -100).any(1) for _, _, ids, mask, p, _, _ in cases]
    assert sum(int((~r).sum()) for r in scored_rows) >= 2  # rows with nothing to score
    assert any(float(c[0].abs().max()) > 100 for c in cases)  # the overflow case
    assert any(float(ch08.reference_kd_loss(*c[:5], 2.0, 0.0)) < 1e-5 for c in cases)  # the KL = 0 case


def test_grad_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch08.kd_grad_cases()
    assert len(cases) == 15 and {tuple(c[0].shape) for c in cases} >= {(3, 8, 50), (1, 6, 11), (4, 16, 257)}
    assert any(int(m.sum(1).min()) == 1 for _, _, _, m, _, _ in cases)
    for c in cases:
        g = ch08.reference_kd_grad(*c)
        assert bool((g[:, -1] == 0).all())  # the last position has no target
        assert bool((g[:, :-1][c[3][:, 1:] == 0] == 0).all())  # padding targets get nothing


def test_the_diagnosis_arithmetic_is_the_reference_without_a_mistake():
    for args in ch08.kd_loss_cases()[1]:
        assert torch.allclose(ch08._kd_by_hand(*args), ch08.reference_kd_loss(*args).double(), rtol=1e-5, atol=1e-6)
    for args in ch08.kd_grad_cases()[1]:
        assert torch.allclose(ch08._grad_by_hand(*args), ch08.reference_kd_grad(*args).double(), rtol=1e-5,
                              atol=5e-8)


def test_the_reference_is_within_the_tolerance_of_float64():
    for args in ch08.kd_loss_cases()[1]:
        s, t, *rest = args
        exact = ch08._kd_by_hand(s.double(), t.double(), *rest)
        assert abs(float(ch08.reference_kd_loss(*args)) - float(exact)) < (ch08.KD_ATOL + ch08.KD_RTOL * abs(
            float(exact))) / 5


@pytest.mark.parametrize("kwargs, key", ch08._KD_VARIANTS, ids=[k for _, k in ch08._KD_VARIANTS])
def test_every_diagnosed_loss_mistake_is_visible_in_some_of_the_first_cases(kwargs, key):
    first = ch08.kd_loss_cases()[1][:4]
    assert any(not torch.allclose(ch08._kd_by_hand(*a, **kwargs), ch08.reference_kd_loss(*a).double(), rtol=1e-3)
               for a in first)


@pytest.mark.parametrize("kwargs, key", ch08._GRAD_VARIANTS, ids=[k for _, k in ch08._GRAD_VARIANTS])
def test_every_diagnosed_grad_mistake_is_visible_in_some_of_the_first_cases(kwargs, key):
    first = ch08.kd_grad_cases()[1][:3]
    assert any(not torch.allclose(ch08._grad_by_hand(*a, **kwargs), ch08.reference_kd_grad(*a).double(),
                                  rtol=1e-3, atol=1e-6) for a in first)


# --- garbage never makes a check raise --------------------------------------------------------------------------------

def _garbage(kind, shape_of):
    def fn(*args):
        shape = shape_of(args)
        return {
            "none": lambda: None,
            "float": lambda: 0.5,
            "list": lambda: torch.zeros(shape).tolist(),
            "numpy": lambda: np.zeros(shape, dtype=np.float32),
            "int tensor": lambda: torch.zeros(shape, dtype=torch.int32),
            "bool tensor": lambda: torch.zeros(shape, dtype=torch.bool),
            "complex tensor": lambda: torch.zeros(shape, dtype=torch.complex64),
            "nan": lambda: torch.full(shape, float("nan")),
            "wrong shape": lambda: torch.zeros(3, 3),
        }[kind]()
    return fn


GARBAGE = ["none", "float", "list", "numpy", "int tensor", "bool tensor", "complex tensor", "nan", "wrong shape"]
SHAPES = {"kd_loss": lambda args: (), "kd_grad": lambda args: tuple(args[0].shape)}


@pytest.mark.parametrize("name", ["kd_loss", "kd_grad"])
@pytest.mark.parametrize("kind", GARBAGE)
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch08.EXERCISES[name], _garbage(kind, SHAPES[name]), capsys)
    assert ok is False and out.startswith(f"[x] {name}: for seed 0,"), out


def test_a_python_float_loss_is_told_to_return_a_tensor(capsys):
    ok, out = run(ch08.check_kd_loss, lambda *a: float(SOL.kd_loss(*a)), capsys)
    assert not ok and "expected a torch.Tensor of shape ()" in out


def test_checks_are_fast(capsys):
    for name in ("kd_loss", "kd_grad"):
        check = ch08.EXERCISES[name]
        start = time.perf_counter()
        check(getattr(SOL, name))
        check(lambda *a, name=name: getattr(SOL, name)(*a) * 1.01)  # a wrong answer runs the diagnosis too
        assert time.perf_counter() - start < 2.0, name
    capsys.readouterr()
