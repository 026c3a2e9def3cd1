"""Chapter 00's tensor exercises: plausible wrong solutions fail with a hint that names their mistake, correct
variants pass, garbage never makes a check raise, and the cases cover what they claim (no case sits on a top-p
boundary that float rounding could flip).

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails.)
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import torch

from course_lib.exercises import ch00, load_solutions
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch00")
NEG = float("-inf")


# --- the solutions and the stub ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n_cases", [("filter_logits", 17), ("windowed_perplexity", 14)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    ok, out = run(ch00.EXERCISES[name], getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out

    def stub(*args):
        raise NotImplementedError

    ok, out = run(ch00.EXERCISES[name], stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


def test_warm_ups_are_listed():
    assert set(ch00.WARM_UPS) == {"weight_memory_gib", "decode_tokens_per_s"}
    assert set(ch00.EXERCISES) - set(ch00.WARM_UPS) == {"filter_logits", "windowed_perplexity"}


# --- filter_logits: plausible wrong solutions -------------------------------------------------------------------------

def _top_k(logits, k, *, rule="ties"):
    logits = logits.clone()
    if 0 < k < logits.shape[-1]:
        values, index = torch.topk(logits, k, dim=-1)
        if rule == "exact":
            keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, True)
        else:
            keep = logits > values[..., -1:] if rule == "strict" else logits >= values[..., -1:]
        logits[~keep] = NEG
    return logits


def _top_p(logits, p, *, drop_rule="before", on="probs"):
    logits = logits.clone()
    if p < 1.0:
        s, order = torch.sort(logits, dim=-1, descending=True)
        w = torch.softmax(s, -1) if on == "probs" else s
        c = w.cumsum(-1)
        drop = {"before": c - w >= p, "after": c > p}[drop_rule]
        drop[..., 0] = False
        logits[torch.zeros_like(drop).scatter(-1, order, drop)] = NEG
    return logits


def fl_exactly_k(logits, k, p):
    return _top_p(_top_k(logits, k, rule="exact"), p)


def fl_k_minus_one(logits, k, p):
    return _top_p(_top_k(logits, k, rule="strict"), p)


def fl_crossing_token_dropped(logits, k, p):
    return _top_p(_top_k(logits, k), p, drop_rule="after")


def fl_top_p_first(logits, k, p):
    return _top_k(_top_p(logits, p), k)


def fl_top_p_on_logits(logits, k, p):
    return _top_p(_top_k(logits, k), p, on="logits")


def fl_zero_fill(logits, k, p):
    y = SOL.filter_logits(logits, k, p)
    return torch.where(torch.isinf(y) & torch.isfinite(logits), torch.zeros_like(y), y)


def fl_minus_1e9(logits, k, p):
    return SOL.filter_logits(logits, k, p).nan_to_num(neginf=-1e9)


def fl_float_min(logits, k, p):
    return SOL.filter_logits(logits, k, p).nan_to_num(neginf=torch.finfo(torch.float32).min)


def fl_sorted(logits, k, p):
    return torch.sort(SOL.filter_logits(logits, k, p), dim=-1, descending=True).values


def fl_probabilities(logits, k, p):
    return torch.softmax(SOL.filter_logits(logits, k, p), dim=-1)


def fl_whole_batch(logits, k, p):
    return SOL.filter_logits(logits.reshape(1, -1), k, p).reshape(logits.shape)


def fl_topk_without_clamp(logits, k, p):
    logits = logits.clone()
    if k > 0:
        logits[logits < torch.topk(logits, k)[0][..., -1, None]] = NEG  # k > V raises
    return _top_p(logits, p)


FILTER_MISTAKES = [
    (fl_exactly_k, "you kept exactly k tokens"),
    (fl_k_minus_one, "you dropped the k-th largest logit itself"),
    (fl_crossing_token_dropped, "the token that makes the mass reach top_p"),
    (fl_top_p_first, "apply top-k first"),
    (fl_top_p_on_logits, "top-p sums probabilities"),
    (fl_zero_fill, "you set the dropped logits to 0"),
    (fl_minus_1e9, "not to a large negative number"),
    (fl_float_min, "not to the smallest float"),
    (fl_sorted, "sorted order"),
    (fl_probabilities, "you returned probabilities"),
    (fl_whole_batch, "the whole batch as one distribution"),
    (fl_topk_without_clamp, "min(top_k, V)"),
]


# --- windowed_perplexity: plausible wrong solutions -------------------------------------------------------------------

@torch.no_grad()
def _ppl(model, ids, L, *, shift="right", reduce="tokens", count="scored", last=True, whole=False, finish="exp",
         dtype=torch.float32):
    """The protocol as a learner writes it, with one choice passed in."""
    if whole:
        L = len(ids)
    total, n, means = 0.0, 0, []
    for b in range(0, len(ids), L):
        w = ids[b:b + L]
        if not last and len(w) < L:
            continue
        lp = torch.log_softmax(model(input_ids=w[None]).logits[0].to(dtype), -1).float()
        nll = {"right": lambda: -lp[:-1].gather(-1, w[1:, None]), "none": lambda: -lp.gather(-1, w[:, None]),
               "left": lambda: -lp[1:].gather(-1, w[:-1, None])}[shift]().squeeze(-1)
        total += nll.double().sum().item()
        n += len(w) if count == "all" else nll.numel()
        if nll.numel():
            means.append(nll.double().mean().item())
    mean = sum(means) / len(means) if reduce == "windows" else total / n
    return {"exp": lambda: math.exp(mean), "mean": lambda: mean, "exp2": lambda: 2**mean,
            "sum": lambda: math.exp(total)}[finish]()


def pp_no_shift(model, ids, L):
    return _ppl(model, ids, L, shift="none")


def pp_shift_left(model, ids, L):
    return _ppl(model, ids, L, shift="left")


def pp_mean_of_window_means(model, ids, L):
    return _ppl(model, ids, L, reduce="windows")


def pp_counts_first_tokens(model, ids, L):
    return _ppl(model, ids, L, count="all")


def pp_drops_last_window(model, ids, L):
    return _ppl(model, ids, L, last=False)


def pp_one_long_sequence(model, ids, L):
    return _ppl(model, ids, L, whole=True)


def pp_mean_loss(model, ids, L):
    return _ppl(model, ids, L, finish="mean")


def pp_base_two(model, ids, L):
    return _ppl(model, ids, L, finish="exp2")


def pp_exp_of_sum(model, ids, L):
    try:
        return _ppl(model, ids, L, finish="sum")
    except OverflowError:  # math.exp overflows: a learner sees an error or inf
        return math.inf


def pp_bfloat16_logits(model, ids, L):
    return _ppl(model, ids, L, dtype=torch.bfloat16)


def pp_loss_tensor(model, ids, L):
    return torch.ones(3)


PPL_MISTAKES = [
    (pp_no_shift, "no label shift"),
    (pp_shift_left, "the shift goes the other way"),
    (pp_mean_of_window_means, "averaged the windows' mean losses"),
    (pp_counts_first_tokens, "a window of n tokens scores n - 1"),
    (pp_drops_last_window, "score the last, shorter window too"),
    (pp_one_long_sequence, "restarts the context every seq_len tokens"),
    (pp_mean_loss, "perplexity is exp of it"),
    (pp_base_two, "not 2 to its power"),
    (pp_exp_of_sum, "not of the total"),
    (pp_bfloat16_logits, "right to about 3 digits only"),
    (pp_loss_tensor, "for b in range(0, len(ids), seq_len)"),
]

MISTAKES = [(name, wrong, named) for name, mistakes in (("filter_logits", FILTER_MISTAKES),
                                                          ("windowed_perplexity", PPL_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch00.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and "Hint: " in out
    assert named in hint_of(out), out


# --- correct variants pass --------------------------------------------------------------------------------------------

def fl_transformers_warpers(logits, k, p):
    """transformers' TopKLogitsWarper then TopPLogitsWarper, written out: ascending sort, remove cumsum <= 1 - p."""
    logits = logits.clone()
    if k > 0:
        logits[logits < torch.topk(logits, min(k, logits.shape[-1]))[0][..., -1, None]] = NEG
    if p < 1:
        s, order = torch.sort(logits, descending=False)
        remove = s.softmax(-1).cumsum(-1) <= (1 - p)
        remove[..., -1:] = False
        logits = logits.masked_fill(remove.scatter(1, order, remove), NEG)
    return logits


def fl_row_loop_course_lib(logits, k, p):
    from course_lib.serving.sampling import filter_logits
    return torch.stack([filter_logits(row, k, p) for row in logits])


def fl_float64(logits, k, p):
    return SOL.filter_logits(logits.double(), k, p)


def pp_batched(model, ids, L):
    """Full windows in one batch, then the last; losses by cross_entropy summed."""
    n_full = len(ids) // L
    total, count = 0.0, 0
    with torch.no_grad():
        parts = [ids[:n_full * L].reshape(n_full, L)] if n_full else []
        if len(ids) % L:
            parts.append(ids[n_full * L:][None])
        for x in parts:
            logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                     reduction="sum")
            total += loss.item()
            count += x[:, 1:].numel()
    return math.exp(total / count)


def pp_numpy_float(model, ids, L):
    return np.float32(SOL.windowed_perplexity(model, ids, L))


CORRECT = {"filter_logits": [SOL.filter_logits, fl_transformers_warpers, fl_row_loop_course_lib, fl_float64],
           "windowed_perplexity": [SOL.windowed_perplexity, pp_batched, pp_numpy_float]}


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in CORRECT.items() for v in vs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch00.EXERCISES[name], variant, capsys)
    n = {"filter_logits": 17, "windowed_perplexity": 14}[name]
    assert ok is True and out == f"[ok] {name}: correct ({n} cases).\n", out


# --- the cases cover what they claim ----------------------------------------------------------------------------------

def test_filter_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch00.filter_logits_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2}
    settings = {(x.shape[0], x.shape[1], k, p) for x, k, p in cases}
    assert set(ch00.FILTER_SHAPES) <= settings
    assert any(k > x.shape[1] for x, k, _ in cases) and any(k == 0 and p == 1.0 for _, k, p in cases)
    assert any(bool(torch.isinf(x).any()) for x, _, _ in cases)
    # ties with the k-th largest value: more than k kept
    assert any(int(torch.isfinite(ch00.reference_filter_logits(x, k, p)).sum(-1).max()) > k > 0 for x, k, p in cases)
    # the first random case of each seed differs
    firsts = [x for (x, _, _), label in zip(cases, labels) if label.startswith("seed") and "(1, 50)" in label]
    assert len(firsts) == 3 and not torch.equal(firsts[0], firsts[1])


def test_no_filter_case_sits_on_a_top_p_boundary():
    """In every row, the mass before each token is at least 1e-5 away from top_p: float rounding cannot flip it."""
    for x, k, p in ch00.filter_logits_cases()[1]:
        if p >= 1.0:
            continue
        kept = fl_row_loop_course_lib(x, k, 1.0).double()
        s = torch.sort(kept, dim=-1, descending=True).values
        probs = torch.softmax(s, -1)
        before = probs.cumsum(-1) - probs
        assert float((before - p).abs().min()) > 1e-5, (x.shape, k, p)


def test_perplexity_cases_cover_lengths_seeds_and_edges():
    labels, cases = ch00.windowed_perplexity_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+):", label))}
    assert seeds == {0, 1, 2}
    shapes = {(len(ids), L) for _, ids, L in cases}
    assert set(ch00.PPL_SHAPES) <= shapes
    tails = {len(ids) % L for _, ids, L in cases if len(ids) > L}
    assert {0, 1, 2} <= tails and any(len(ids) < L for _, ids, L in cases) and (2, 64) in shapes
    assert all(ids.dtype == torch.long and ids.dim() == 1 for _, ids, _ in cases)
    starts = {int(m.group(1)) for label in labels if (m := re.search(r"from token (\d+)", label))}
    assert len(starts) >= 7  # different places in the test split


def test_the_reference_is_the_course_protocol_on_the_first_tokens():
    """On the test split's first 1024 tokens with windows of 256, the reference gives perplexity()'s FAST number."""
    from course_lib.lm.perplexity import Protocol, perplexity

    model, tokenizer = ch00._bundled()
    fast = perplexity(model, tokenizer, Protocol(max_tokens=1024))
    assert math.isclose(ch00.reference_windowed_perplexity(model, ch00._test_stream()[:1024], 256), fast.ppl,
                        rel_tol=1e-12)
    assert math.isclose(SOL.windowed_perplexity(model, ch00._test_stream()[:1024], 256), fast.ppl, rel_tol=1e-5)


@pytest.mark.parametrize("kwargs, _", ch00._FILTER_VARIANTS, ids=[str(k) for k, _ in ch00._FILTER_VARIANTS])
def test_every_diagnosed_filter_mistake_is_visible_in_some_case(kwargs, _):
    cases = ch00.filter_logits_cases()[1]
    assert all(torch.equal(ch00._filter_by_hand(*a), ch00.reference_filter_logits(*a).double()) for a in cases)
    assert any(not torch.equal(ch00._filter_by_hand(*a, **kwargs), ch00.reference_filter_logits(*a).double())
               for a in cases)


# --- garbage never makes a check raise --------------------------------------------------------------------------------

def _garbage(kind):
    def fn(first, *rest):
        shape = tuple(first.shape) if isinstance(first, torch.Tensor) else (3,)
        return {
            "list": lambda: torch.zeros(shape).tolist(),
            "none": lambda: None,
            "numpy": lambda: np.zeros(shape, dtype=np.float32),
            "string": lambda: "12.5",
            "bool tensor": lambda: torch.zeros(shape, dtype=torch.bool),
            "complex tensor": lambda: torch.zeros(shape, dtype=torch.complex64),
            "nan": lambda: torch.full(shape, float("nan")) if isinstance(first, torch.Tensor) else float("nan"),
            "inf": lambda: float("inf"),
            "0-d tensor": lambda: torch.tensor(1.0),
        }[kind]()
    return fn


GARBAGE = ["list", "none", "numpy", "string", "bool tensor", "complex tensor", "nan", "inf", "0-d tensor"]


@pytest.mark.parametrize("name", ["filter_logits", "windowed_perplexity"])
@pytest.mark.parametrize("kind", GARBAGE)
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch00.EXERCISES[name], _garbage(kind), capsys)
    assert ok is False and out.startswith(f"[x] {name}: for seed 0"), out


def test_checks_are_fast(capsys):
    ch00._bundled()  # loading the model once is not the check's time
    for name, limit in (("filter_logits", 2.0), ("windowed_perplexity", 6.0)):
        check, solution = ch00.EXERCISES[name], getattr(SOL, name)
        start = time.perf_counter()
        check(solution)
        check(lambda *a, solution=solution: solution(*a) * 1.01)  # a wrong answer runs the diagnosis too
        assert time.perf_counter() - start < limit, name
    capsys.readouterr()
