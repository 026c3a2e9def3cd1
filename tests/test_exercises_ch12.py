"""Chapter 12's exercises (perplexity from overlapping windows, a paired bootstrap interval, lm-eval's acc_norm):
plausible wrong solutions fail with a hint that names their mistake, correct variants pass, garbage never makes a
check raise, the cases cover what they claim, and the references agree with course_lib.eval.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails.)
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from course_lib.eval.perplexity import strided_losses, token_nll
from course_lib.eval.stats import mc_accuracies, paired_bootstrap, resample_indices
from course_lib.exercises import ch12, load_solutions
from course_lib.lm.perplexity import windows
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch12")
NAMES = ("strided_perplexity", "paired_interval", "acc_norm")


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("name, n_cases", [("strided_perplexity", 19), ("paired_interval", 15), ("acc_norm", 14),
                                           ("bits_per_byte", 4)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    check = ch12.EXERCISES[name]
    ok, out = run(check, getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out
    ok, out = run(check, stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


def test_warm_ups_are_declared():
    assert ch12.WARM_UPS == ("bits_per_byte",)
    assert set(ch12.EXERCISES) - set(ch12.WARM_UPS) == set(NAMES)


@pytest.mark.parametrize("name, wrong, named", [
    ("bits_per_byte", lambda nll, n: nll / n, "divide by ln 2"),
    ("bits_per_byte", lambda nll, n: nll / math.log(2), "divide by the bytes"),
])
def test_wrong_warm_ups_fail_with_their_hint(name, wrong, named, capsys):
    ok, out = run(ch12.EXERCISES[name], wrong, capsys)
    assert not ok and named in hint_of(out), out


# --- 1. strided_perplexity: wrong solutions, each as a learner writes it ------------------------------------------

def _kept_losses(rows, skip_of):
    """The losses kept by a loop that skips skip_of(i) losses of window i."""
    return [row[skip_of(i):] for i, row in enumerate(rows)]


def _exp_mean(kept):
    return math.exp(torch.cat(kept).double().mean().item())


def sp_every_loss(rows, seq_len, stride):
    return math.exp(torch.cat(rows).mean().item())


def sp_last_window(rows, seq_len, stride):
    loss_of = {}
    for i, row in enumerate(rows):
        for j, x in enumerate(row.tolist()):
            loss_of[i * stride + j + 1] = x  # a later window overwrites: the least context wins
    return math.exp(sum(loss_of.values()) / len(loss_of))


def sp_window_ppls(rows, seq_len, stride):
    kept = _kept_losses(rows, lambda i: max(seq_len - stride - 1, 0) if i else 0)
    return float(np.mean([math.exp(k.mean().item()) for k in kept]))


def sp_window_ppls_whole_rows(rows, seq_len, stride):
    return sum(math.exp(r.mean().item()) for r in rows) / len(rows)


def sp_window_means(rows, seq_len, stride):
    kept = _kept_losses(rows, lambda i: max(seq_len - stride - 1, 0) if i else 0)
    return math.exp(torch.stack([k.mean() for k in kept]).mean().item())


def sp_skip_one_more(rows, seq_len, stride):
    return _exp_mean(_kept_losses(rows, lambda i: seq_len - stride if i else 0))


def sp_skip_one_fewer(rows, seq_len, stride):
    return _exp_mean(_kept_losses(rows, lambda i: max(seq_len - stride - 2, 0) if i else 0))


def sp_negative_skip(rows, seq_len, stride):
    return _exp_mean(_kept_losses(rows, lambda i: seq_len - stride - 1 if i else 0))


def sp_last_stride_losses(rows, seq_len, stride):
    return _exp_mean([r if i == 0 else r[-stride:] for i, r in enumerate(rows)])


def sp_first_window_cut(rows, seq_len, stride):
    return _exp_mean(_kept_losses(rows, lambda i: max(seq_len - stride - 1, 0)))


def sp_no_exp(rows, seq_len, stride):
    return math.log(SOL.strided_perplexity(rows, seq_len, stride))


def sp_base_two(rows, seq_len, stride):
    return 2.0 ** math.log(SOL.strided_perplexity(rows, seq_len, stride))


def sp_float32(rows, seq_len, stride):
    kept = _kept_losses(rows, lambda i: max(seq_len - stride - 1, 0) if i else 0)
    return torch.exp(torch.cat(kept).float().mean()).item()


STRIDED_MISTAKES = [
    (sp_every_loss, "every loss of every window"),
    (sp_last_window, "from the LAST window"),
    (sp_window_ppls, "take one exp"),
    (sp_window_ppls_whole_rows, "And count each token once"),
    (sp_window_means, "averaged the windows' mean losses"),
    (sp_skip_one_more, "dropped the first new token"),
    (sp_skip_one_fewer, "counted the last token of the window before twice"),
    (sp_negative_skip, "row[-1:] keeps only the last"),
    (sp_last_stride_losses, "last `stride` losses"),
    (sp_first_window_cut, "you cut window 0"),
    (sp_no_exp, "you returned the mean loss"),
    (sp_base_two, "not 2 to its power"),
    (sp_float32, "float32"),
]


# --- 2. paired_interval: wrong solutions -----------------------------------------------------------------------------

def _draws(a, b, c, idx, stat):
    return stat(a.double()[idx], b.double()[idx], c.double()[idx])


def _ratio(A, B, C):
    return torch.exp((B.sum(-1) - A.sum(-1)) / C.sum(-1)) - 1


def _interval(draws, level, q=None):
    tail = (1 - level) / 2
    lo, hi = torch.quantile(draws, torch.tensor(q or [tail, 1 - tail], dtype=torch.float64))
    return lo.item(), hi.item()


def pi_no_minus(a, b, c, idx, level):
    change, lo, hi = SOL.paired_interval(a, b, c, idx, level)
    return change + 1, lo + 1, hi + 1


def pi_inverted(a, b, c, idx, level):
    return SOL.paired_interval(b, a, c, idx, level)


def pi_difference(a, b, c, idx, level):
    def stat(A, B, C):
        return torch.exp(B.sum(-1) / C.sum(-1)) - torch.exp(A.sum(-1) / C.sum(-1))
    everything = torch.arange(len(a))[None]
    return (_draws(a, b, c, everything, stat).item(), *_interval(_draws(a, b, c, idx, stat), level))


def pi_window_ratios(a, b, c, idx, level):
    ratios = torch.exp((b - a) / c)  # each window's ppl_B / ppl_A
    return ratios.mean().item() - 1, *_interval(ratios[idx].mean(1) - 1, level)


def pi_window_means(a, b, c, idx, level):
    per_token = (b - a) / c
    return math.exp(per_token.mean().item()) - 1, *_interval(torch.exp(per_token[idx].mean(1)) - 1, level)


def pi_ninety(a, b, c, idx, level):
    draws = _draws(a, b, c, idx, _ratio)
    change = SOL.paired_interval(a, b, c, idx, level)[0]
    return change, *_interval(draws, level, q=[1 - level, level])


def pi_mean_of_draws(a, b, c, idx, level):
    draws = _draws(a, b, c, idx, _ratio)
    return draws.mean().item(), *_interval(draws, level)


def _ppl_draws(nll, c, idx):
    return torch.exp(nll.double()[idx].sum(1) / c.double()[idx].sum(1))


def pi_crossed_intervals(a, b, c, idx, level):
    lo_a, hi_a = _interval(_ppl_draws(a, c, idx), level)
    lo_b, hi_b = _interval(_ppl_draws(b, c, idx), level)
    change = SOL.paired_interval(a, b, c, idx, level)[0]
    return change, lo_b / hi_a - 1, hi_b / lo_a - 1


def pi_quantile_ratio(a, b, c, idx, level):
    lo_a, hi_a = _interval(_ppl_draws(a, c, idx), level)
    lo_b, hi_b = _interval(_ppl_draws(b, c, idx), level)
    return SOL.paired_interval(a, b, c, idx, level)[0], lo_b / lo_a - 1, hi_b / hi_a - 1


def pi_nearest_rank(a, b, c, idx, level):
    draws = _draws(a, b, c, idx, _ratio).sort().values
    tail = (1 - level) / 2
    n = len(draws)
    return SOL.paired_interval(a, b, c, idx, level)[0], draws[int(tail * n)].item(), draws[int((1 - tail) * n)].item()


def pi_own_draws_for_b(a, b, c, idx, level):
    # B's windows drawn on their own: unpaired (and not reproducible)
    idx_b = torch.randint(0, len(a), idx.shape)
    tokens_a, tokens_b = c[idx].sum(1), c[idx_b].sum(1)
    draws = torch.exp(b[idx_b].sum(1) / tokens_b - a[idx].sum(1) / tokens_a) - 1
    return SOL.paired_interval(a, b, c, idx, level)[0], *_interval(draws, level)


def pi_shuffled_draws_for_b(a, b, c, idx, level):
    idx_b = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))]
    draws = torch.exp(_ppl_draws(b, c, idx_b).log() - _ppl_draws(a, c, idx).log()) - 1
    return SOL.paired_interval(a, b, c, idx, level)[0], *_interval(draws, level)


def pi_order(a, b, c, idx, level):
    change, lo, hi = SOL.paired_interval(a, b, c, idx, level)
    return lo, change, hi


def pi_float32(a, b, c, idx, level):
    a, b, c = a.float(), b.float(), c.float()
    change = (torch.exp((b.sum() - a.sum()) / c.sum()) - 1).item()
    draws = torch.exp((b[idx].sum(1) - a[idx].sum(1)) / c[idx].sum(1)) - 1
    tail = (1 - level) / 2
    lo, hi = torch.quantile(draws, torch.tensor([tail, 1 - tail]))
    return change, lo.item(), hi.item()


PAIRED_MISTAKES = [
    (pi_no_minus, "forgot the - 1"),
    (pi_inverted, "you computed ppl_A / ppl_B - 1"),
    (pi_difference, "you returned ppl_B - ppl_A"),
    (pi_window_ratios, "windows' own perplexity ratios"),
    (pi_window_means, "every window weighted alike"),
    (pi_ninety, "you took 1 - level and level (90%)"),
    (pi_mean_of_draws, "mean of the bootstrap draws"),
    (pi_crossed_intervals, "each model's own interval"),
    (pi_quantile_ratio, "quantile of a ratio is not the ratio"),
    (pi_nearest_rank, "order statistics picked by rank"),
    (pi_own_draws_for_b, "drawn apart from A's"),
    (pi_shuffled_draws_for_b, "drawn apart from A's"),
    (pi_order, "return (change, lo, hi)"),
    (pi_float32, "float32"),
]


# --- 3. acc_norm: wrong solutions ------------------------------------------------------------------------------------

def _acc(lls, choices, gold, length, pick=lambda s: s.argmax(1)):
    lengths = torch.tensor([[float(length(c)) for c in item] for item in choices], dtype=torch.float64)
    return (pick(lls / lengths) == gold).double().mean().item()


def an_raw(lls, choices, gold):
    return (lls.argmax(1) == gold).float().mean().item()


def an_bytes(lls, choices, gold):
    return _acc(lls, choices, gold, lambda c: len(c.encode("utf-8")))


def an_words(lls, choices, gold):
    return _acc(lls, choices, gold, lambda c: len(c.split()))


def an_with_delimiter(lls, choices, gold):
    return _acc(lls, choices, gold, lambda c: len(" " + c))


def an_number_of_choices(lls, choices, gold):
    return _acc(lls, choices, gold, lambda c: len(choices[0]))


def an_ties_to_last(lls, choices, gold):
    right = 0
    for i, item in enumerate(choices):
        best, pick = -math.inf, 0
        for k, choice in enumerate(item):
            score = lls[i, k].item() / len(choice)
            if score >= best:
                best, pick = score, k
        right += pick == gold[i].item()
    return right / len(choices)


def an_argmin(lls, choices, gold):
    return _acc(lls, choices, gold, len, pick=lambda s: s.argmin(1))


def an_raw_argmin(lls, choices, gold):
    return (lls.argmin(1) == gold).double().mean().item()


def an_count(lls, choices, gold):
    return _acc(lls, choices, gold, len) * len(choices)


def an_percent(lls, choices, gold):
    return 100 * _acc(lls, choices, gold, len)


ACC_MISTAKES = [
    (an_raw, "that is lm-eval's acc"),
    (an_bytes, "that is acc_bytes"),
    (an_words, "number of words"),
    (an_with_delimiter, "space before the choice"),
    (an_number_of_choices, "that is lm-eval's acc"),
    (an_ties_to_last, "ties go to the FIRST"),
    (an_argmin, "not the argmin"),
    (an_raw_argmin, "argmin of the raw ll"),
    (an_count, "not the number of right items"),
    (an_percent, "not a percentage"),
]

MISTAKES = [(name, wrong, named) for name, mistakes in (("strided_perplexity", STRIDED_MISTAKES),
                                                          ("paired_interval", PAIRED_MISTAKES),
                                                          ("acc_norm", ACC_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch12.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and out.count("\n") == 1 and "Hint: " in out, out
    assert named in hint_of(out), out


@pytest.mark.parametrize("name, wrong, general", [
    ("strided_perplexity", lambda rows, L, s: math.exp(torch.cat(rows).median().item()), "window i begins"),
    ("paired_interval", lambda a, b, c, idx, level: (0.01, -0.01, 0.03), "change = exp("),
    ("acc_norm", lambda lls, choices, gold: 0.25, "scores[i][k] = lls[i][k]"),
])
def test_an_unrecognised_mistake_gets_the_general_hint(name, wrong, general, capsys):
    ok, out = run(ch12.EXERCISES[name], wrong, capsys)
    assert not ok and hint_of(out).startswith(general), out


# --- correct variants pass ------------------------------------------------------------------------------------------

def _sp_from_windows(rows, seq_len, stride):
    # the protocol's own windows, the stream's length read off the last row
    n_tokens = (len(rows) - 1) * stride + len(rows[-1]) + 1
    kept = [row[max(first, b + 1) - b - 1:] for row, (b, e, first) in zip(rows, windows(n_tokens, seq_len, stride))]
    return float(np.exp(np.concatenate([k.numpy() for k in kept]).mean()))


def _sp_explicit_skip(rows, seq_len, stride):
    skip = max(seq_len - stride - 1, 0)
    kept = [rows[0]] + [row[skip:] for row in rows[1:]]
    return torch.exp(torch.cat(kept).mean())  # a 0-d float64 tensor


def _sp_token_dict(rows, seq_len, stride):
    first_loss = {}
    for i, row in enumerate(rows):
        for j, x in enumerate(row.tolist()):
            first_loss.setdefault(i * stride + j + 1, x)
    return math.exp(math.fsum(first_loss.values()) / len(first_loss))


def _pi_library(a, b, c, idx, level):
    # paired_bootstrap's own arithmetic on the given draws
    draws = torch.exp((b[idx].sum(1) - a[idx].sum(1)) / c[idx].sum(1)) - 1
    tail = (1 - level) / 2
    lo, hi = np.quantile(draws.numpy(), [tail, 1 - tail])  # numpy's default is torch's linear interpolation
    return math.exp((b.sum() - a.sum()).item() / c.sum().item()) - 1, float(lo), float(hi)


def _pi_ratio_of_ppls(a, b, c, idx, level):
    ppl = lambda nll, sel: torch.exp(nll[sel].sum(-1) / c[sel].sum(-1))  # noqa: E731
    draws = ppl(b, idx) / ppl(a, idx) - 1
    tail = (1 - level) / 2
    q = torch.quantile(draws, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    every = torch.arange(len(a))
    return [(ppl(b, every) / ppl(a, every) - 1), q[0], q[1]]  # a list of 0-d tensors


def _an_numpy(lls, choices, gold):
    lengths = np.array([[float(len(c)) for c in item] for item in choices])
    return float(np.mean(np.argmax(lls.numpy() / lengths, axis=1) == gold.numpy()))


def _an_library(lls, choices, gold):
    return mc_accuracies(lls, choices, gold)["acc_norm"]


def _an_float32(lls, choices, gold):
    lengths = torch.tensor([[len(c) for c in item] for item in choices])
    return ((lls.float() / lengths).argmax(1) == gold).float().mean()  # a 0-d float32 tensor


CORRECT = {"strided_perplexity": [SOL.strided_perplexity, _sp_from_windows, _sp_explicit_skip, _sp_token_dict],
           "paired_interval": [SOL.paired_interval, _pi_library, _pi_ratio_of_ppls],
           "acc_norm": [SOL.acc_norm, _an_numpy, _an_library, _an_float32]}


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in CORRECT.items() for v in vs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch12.EXERCISES[name], variant, capsys)
    assert ok is True and out.startswith(f"[ok] {name}: correct"), out


def test_the_learner_cannot_change_the_references_inputs(capsys):
    def rows_mutator(rows, seq_len, stride):
        out = SOL.strided_perplexity(rows, seq_len, stride)
        rows.clear()
        return out

    def tensors_mutator(a, b, c, idx, level):
        out = SOL.paired_interval(a, b, c, idx, level)
        a.zero_(), idx.zero_()
        return out

    assert run(ch12.check_strided_perplexity, rows_mutator, capsys)[0]
    assert run(ch12.check_paired_interval, tensors_mutator, capsys)[0]


# --- the references agree with course_lib.eval --------------------------------------------------------------------

class _ContextLM(torch.nn.Module):
    """A tiny causal LM whose next-token logits are the running mean of the context's embeddings: a token's loss
    depends on where its window begins, as with a real model."""

    def __init__(self, vocab: int = 11):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab, _weight=torch.randn(vocab, vocab,
                                                                        generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids):
        e = self.emb(input_ids)
        return SimpleNamespace(logits=e.cumsum(1) / torch.arange(1, e.shape[1] + 1)[None, :, None])


@pytest.mark.parametrize("n, seq_len, stride", [(100, 16, 8), (64, 16, 16), (50, 8, 1), (33, 16, 16), (41, 16, 4),
                                                (10, 32, 8), (60, 12, 11)])
def test_the_strided_reference_is_course_libs_protocol(n, seq_len, stride):
    model = _ContextLM()
    stream = torch.randint(0, 11, (n,), generator=torch.Generator().manual_seed(n))
    rows = [token_nll(model, stream[b:e][None])[0] for b, e, _ in windows(n, seq_len, stride)]
    expected = strided_losses(model, stream, seq_len, stride).ppl
    for ppl in (ch12.reference_strided_perplexity(rows, seq_len, stride), SOL.strided_perplexity(rows, seq_len,
                                                                                                 stride)):
        assert math.isclose(ppl, expected, rel_tol=1e-12)


def test_the_paired_reference_is_paired_bootstrap():
    """Each case's draws are paired_bootstrap's for one seed, and the reference, the by-hand default (what the
    diagnosis compares mistakes with) and the solution all give paired_bootstrap's numbers."""
    for a, b, c, idx, level in ch12.paired_interval_cases()[1]:
        seeds = [s for s in range(10) if torch.equal(resample_indices(len(a), len(idx), s), idx)]
        assert len(seeds) == 1
        lib = paired_bootstrap(a, b, c, n_boot=len(idx), level=level, seed=seeds[0])
        for ours in (ch12.reference_paired_interval(a, b, c, idx, level), ch12._paired_by_hand(a, b, c, idx, level),
                     SOL.paired_interval(a, b, c, idx, level)):
            assert ours == pytest.approx((lib.change, lib.lo, lib.hi), rel=1e-12, abs=1e-15)


def test_the_acc_reference_is_lm_evals_rule():
    # lm-eval 0.4.13 (ConfigurableTask.process_results): np.argmax(lls / [len(choice) for choice in choices])
    for lls, choices, gold in ch12.acc_norm_cases()[1]:
        picks = [int(np.argmax(np.array(row) / np.array([float(len(c)) for c in item])))
                 for row, item in zip(lls.tolist(), choices)]
        assert ch12.reference_acc_norm(lls, choices, gold) == pytest.approx(np.mean(np.array(picks) == gold.numpy()))


# --- the cases cover what they claim ---------------------------------------------------------------------------------

def test_strided_cases_match_windows_and_cover_the_edges():
    labels, cases = ch12.strided_perplexity_cases()
    shapes = []
    for rows, seq_len, stride in cases:
        n = (len(rows) - 1) * stride + len(rows[-1]) + 1
        spans = windows(n, seq_len, stride)
        assert [len(r) for r in rows] == [e - b - 1 for b, e, _ in spans] and all(r.dtype == torch.float64
                                                                                  for r in rows)
        shapes.append((n, seq_len, stride, spans))
    assert {s for _, _, s, _ in shapes} >= {1} and any(L == s for _, L, s, _ in shapes)
    assert any(L - 1 == s for _, L, s, _ in shapes) and any(e - b < L for n, L, s, sp in shapes for b, e, _ in sp)
    assert any(len(sp) == 1 for *_, sp in shapes)
    # windows() stops early on 33 tokens: token 32 is never scored, though a window could begin there
    assert len(windows(33, 16, 16)) == 2 and "stops after 2 windows" in labels[15]
    assert windows(41, 16, 4)[-1] == (28, 41, 40) and "adds one new token" in labels[16]
    # a token's loss falls with context, so keeping the last window's loss reads high
    rows, L, s = cases[0]
    assert ch12._strided_by_hand(rows, L, s, keep="last") > ch12.reference_strided_perplexity(rows, L, s)


def test_paired_cases_cover_the_edges():
    labels, cases = ch12.paired_interval_cases()
    changes = [ch12.reference_paired_interval(*args) for args in cases]
    assert any(lo > 0 for _, lo, _ in changes) and any(hi < 0 for _, _, hi in changes)
    assert changes[12] == (0.0, 0.0, 0.0)
    assert {level for *_, level in cases} >= {0.5, 0.9, 0.95, 0.99}
    counts = [c for _, _, c, _, _ in cases]
    assert any(bool((c[1:-1] == 256).all()) for c in counts) and any(float(c.max()) >= 5000 for c in counts)
    # B better on the long document flips the sign of an unweighted mean of per-window differences
    a, b, c, idx, level = cases[13]
    assert changes[13][0] < 0 < ch12._paired_by_hand(a, b, c, idx, level, stat="window_means")[0]


def test_unpaired_draws_give_a_much_wider_interval():
    for a, b, c, idx, level in ch12.paired_interval_cases()[1][:12]:
        change, lo, hi = ch12.reference_paired_interval(a, b, c, idx, level)
        wide = pi_own_draws_for_b(a, b, c, idx, level)
        assert wide[2] - wide[1] > 3 * (hi - lo)


def test_acc_edge_cases_separate_the_rules():
    labels, cases = ch12.acc_norm_cases()
    lls, choices, gold = cases[9]
    scores = mc_accuracies(lls, choices, gold)
    assert "bytes" in labels[9] and scores["acc_norm"] == 1.0 and scores["acc_bytes"] == 0.0
    assert any(len(c) != len(c.encode("utf-8")) for item in choices for c in item)
    lls, choices, gold = cases[10]
    norm = lls / torch.tensor([[float(len(c)) for c in item] for item in choices])
    tied = lambda x: int((x == x.max()).sum()) > 1  # noqa: E731
    assert all(tied(n) or tied(r) for n, r in zip(norm, lls)) and sum(map(tied, norm)) == 3
    assert mc_accuracies(lls, choices, gold)["acc_norm"] == 1
    assert mc_accuracies(*cases[-1])["acc_norm"] == 0.0 and len(cases[-2][1]) == 1
    assert any(max(map(len, item)) > 50 * min(map(len, item)) for item in cases[11][1])
    for lls, choices, gold in cases[:9]:
        assert 0.2 < ch12.reference_acc_norm(lls, choices, gold) < 1
        assert any(len(c) != len(c.encode("utf-8")) for item in choices for c in item)


VARIANTS = [(name, kwargs) for name, variants in (("strided_perplexity", ch12._STRIDED_VARIANTS),
                                                  ("paired_interval", ch12._PAIRED_VARIANTS),
                                                  ("acc_norm", ch12._ACC_VARIANTS)) for kwargs, _ in variants]
BY_HAND = {"strided_perplexity": (ch12._strided_by_hand, ch12.strided_perplexity_cases, ch12._same_float),
           "paired_interval": (ch12._paired_by_hand, ch12.paired_interval_cases, ch12._same_three),
           "acc_norm": (ch12._acc_by_hand, ch12.acc_norm_cases, ch12._same_acc)}


@pytest.mark.parametrize("name", NAMES)
def test_the_by_hand_defaults_are_the_reference(name):
    by_hand, cases_of, same = BY_HAND[name]
    reference = {"strided_perplexity": ch12.reference_strided_perplexity,
                 "paired_interval": ch12.reference_paired_interval, "acc_norm": ch12.reference_acc_norm}[name]
    for args in cases_of()[1]:
        assert same(by_hand(*args), reference(*args))


@pytest.mark.parametrize("name, kwargs", VARIANTS, ids=[f"{n}-{k}" for n, k in VARIANTS])
def test_every_diagnosed_mistake_is_visible_in_some_case(name, kwargs):
    by_hand, cases_of, same = BY_HAND[name]
    cases = cases_of()[1]
    assert not same(by_hand(*cases[0], **kwargs), by_hand(*cases[0])) or \
        any(not same(by_hand(*args, **kwargs), by_hand(*args)) for args in cases)


# --- garbage never makes a check raise -------------------------------------------------------------------------------

GARBAGE = {"none": lambda: None, "string": lambda: "12.5", "list": lambda: [1.0, 2.0], "nan": lambda: math.nan,
           "inf": lambda: math.inf, "bool": lambda: True, "tensor": lambda: torch.zeros(3),
           "complex": lambda: 1 + 2j, "tuple of 2": lambda: (0.1, 0.2), "tuple of strings": lambda: ("a", "b", "c"),
           "nan tuple": lambda: (math.nan,) * 3, "numpy bool": lambda: np.bool_(True)}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", list(GARBAGE))
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch12.EXERCISES[name], lambda *args: GARBAGE[kind](), capsys)
    assert ok is False and out.startswith(f"[x] {name}: for seed 0") and out.count("\n") == 1, out


def test_a_tensor_per_item_is_refused_with_a_reason(capsys):
    ok, out = run(ch12.check_acc_norm, lambda lls, choices, gold: (lls.argmax(1) == gold).double(), capsys)
    assert not ok and "one value per item?" in out, out


@pytest.mark.parametrize("name, wrong", [("strided_perplexity", sp_window_means), ("paired_interval", pi_quantile_ratio),
                                         ("acc_norm", an_ties_to_last)])
def test_checks_are_fast(name, wrong, capsys):
    start = time.perf_counter()
    ch12.EXERCISES[name](getattr(SOL, name))
    ch12.EXERCISES[name](wrong)  # a wrong answer runs the diagnosis too (and the learner's function on every case)
    assert time.perf_counter() - start < 2.0
    capsys.readouterr()
