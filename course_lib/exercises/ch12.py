"""Checks for chapter 12: the numbers an evaluation rests on, written by the learner; and a warm-up formula.

1. ``check_strided_perplexity``: perplexity from overlapping windows, each token counted once (``lm.perplexity``).
2. ``check_paired_interval``: ppl_B / ppl_A - 1 with its paired bootstrap interval (``eval.stats.paired_bootstrap``).
3. ``check_acc_norm``: lm-eval's acc_norm from per-choice log-likelihoods (``eval.stats.mc_accuracies``).

Each runs on random inputs (fixed seeds, several sizes) and edge cases; after a wrong attempt a diagnosis recomputes
the usual mistakes (overlaps counted twice, the last window's losses, draws not paired, bytes for characters, ...).
"""

from __future__ import annotations

import math
import numbers
import random
from typing import Any

import torch

from ..eval.stats import mc_accuracies, paired_bootstrap, resample_indices
from ..lm.perplexity import windows
from . import _short, check_against, check_cases
from .ch04 import _diagnosis  # the same mistake-naming as chapters 04 and 07

# --- warm-ups -------------------------------------------------------------------------------------------------------


def check_bits_per_byte(fn) -> bool:
    """fn(nll_sum, n_bytes) -> bits per byte: a text's summed loss in nats, in bits, per UTF-8 byte of the text."""
    cases = [((100 * math.log(2), 100), 1.0), ((1000.0, 400), 1000 / math.log(2) / 400),
             ((35000.0, 61234), 35000 / math.log(2) / 61234), ((0.0, 7), 0.0)]
    return check_cases("bits_per_byte", fn, cases, rel=1e-9,
                       hint="nats to bits: divide by ln 2 (math.log(2)); then divide by the bytes, not the tokens.")


def _compare_number(what: str, same, tolerance: str):
    """A compare for check_against: got must be one number, `same` as the expected one."""
    def compare(got: Any, expected: float) -> tuple[str, Any]:
        if (value := _as_float(got)) is None:
            if isinstance(got, torch.Tensor) and got.dim() == 1:
                return f"expected one float; got a tensor of shape {tuple(got.shape)} (one value per item?).", None
            return f"expected {what} as one float; got {type(got).__name__} {_short(got)}.", None
        return ("", value) if same(value, expected) else \
            (f"expected {what} {expected:.12g}, got {value:.12g} (tolerance {tolerance}).", value)
    return compare


def _as_float(x: Any) -> float | None:
    """x as a float when it is one number (a Python or NumPy number, a one-element tensor), else None."""
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_complex() and x.dtype != torch.bool:
        return x.item()
    if isinstance(x, numbers.Real) and not isinstance(x, bool) and type(x).__name__ != "bool_":
        return float(x)
    return None


# --- 1. perplexity from overlapping windows ------------------------------------------------------------------------

STRIDED_SEEDS = (0, 1, 2)
# (n_tokens, seq_len, stride): half overlap with a ragged last window, stride == seq_len, stride 1, a ragged last
# window that adds fewer than `stride` tokens, stride == seq_len - 1 (every token scored)
STRIDED_SHAPES = ((100, 16, 8), (64, 16, 16), (50, 8, 1), (90, 24, 10), (60, 12, 11))
STRIDED_EDGES = (((33, 16, 16), "windows() stops after 2 windows: a third, tokens 32..32, would score nothing"),
                 ((41, 16, 4), "the last window, tokens 28..40, adds one new token"),
                 ((10, 32, 8), "one window, shorter than seq_len"), ((2, 4, 2), "2 tokens: one loss"))
STRIDED_RTOL = 1e-9  # float64 sums of at most 100 losses: rounding about 1e-15


def _rows_for(n_tokens: int, seq_len: int, stride: int, g: torch.Generator) -> list[torch.Tensor]:
    """A float64 row per window of windows(): row[j], the loss of token begin + j + 1 with j + 1 tokens of context,
    is the token's difficulty + 1.5 / sqrt(context) + noise (a token pays less with more context)."""
    difficulty = 0.5 + 4.5 * torch.rand(n_tokens, generator=g, dtype=torch.float64)
    rows = []
    for begin, end, _ in windows(n_tokens, seq_len, stride):
        context = torch.arange(1, end - begin, dtype=torch.float64)
        noise = 0.1 * torch.randn(end - begin - 1, generator=g, dtype=torch.float64)
        rows.append((difficulty[begin + 1:end] + 1.5 / context.sqrt() + noise).clamp(min=0.0))
    return rows


def strided_perplexity_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (window_rows, seq_len, stride)) of check_strided_perplexity."""
    def what(n: int, L: int, s: int) -> str:
        spans = windows(n, L, s)
        b, e, _ = spans[-1]
        return f"{len(spans)} windows" + (f", the last of {e - b} tokens" if e - b < L else "")

    labels, cases = [], []
    for seed in STRIDED_SEEDS:
        for n, L, s in STRIDED_SHAPES:
            labels.append(f"seed {seed}: {n} tokens, seq_len {L}, stride {s} ({what(n, L, s)})")
            cases.append((_rows_for(n, L, s, torch.Generator().manual_seed(100 * seed + n + s)), L, s))
    g = torch.Generator().manual_seed(7)
    for (n, L, s), why in STRIDED_EDGES:
        labels.append(f"edge case: {n} tokens, seq_len {L}, stride {s} ({why})")
        cases.append((_rows_for(n, L, s, g), L, s))
    return labels, cases


def reference_strided_perplexity(window_rows: list[torch.Tensor], seq_len: int, stride: int) -> float:
    """The course protocol: in window (b, e, first) of windows(), the tokens max(first, b + 1) .. e - 1 count."""
    n_tokens = (len(window_rows) - 1) * stride + len(window_rows[-1]) + 1  # the last window's end
    spans = windows(n_tokens, seq_len, stride)
    kept = [row[max(first, b + 1) - b - 1:] for row, (b, _, first) in zip(window_rows, spans, strict=True)]
    return math.exp(torch.cat(kept).double().mean().item())


def _strided_by_hand(rows: list[torch.Tensor], seq_len: int, stride: int, *, keep: str = "first",
                     reduce: str = "tokens", finish: str = "exp") -> float:
    """The loop as a learner writes it, with one choice passed in (the defaults give the reference): which losses
    it keeps (see _STRIDED_VARIANTS), how it averages them (over tokens, or per window) and how it finishes."""
    overlap = seq_len - stride - 1  # losses of window i >= 1 that window i - 1 already scored
    owner = {i * stride + j + 1: i for i, row in enumerate(rows) for j in range(len(row))}  # the last window
    kept = []
    for i, row in enumerate(rows):
        if keep == "last":
            kept.append(row[[owner[i * stride + j + 1] == i for j in range(len(row))]])
            continue
        skip = {"first": max(overlap, 0), "all": 0, "more": max(overlap + 1, 0), "less": max(overlap - 1, 0),
                "negative": overlap, "tail": max(len(row) - stride, 0), "first_too": max(overlap, 0)}[keep]
        kept.append(row[(skip if i or keep == "first_too" else 0):])
    kept = [k.double() for k in kept if k.numel()]
    if reduce == "window_ppls":
        return sum(math.exp(k.mean().item()) for k in kept) / len(kept)
    mean = torch.cat(kept).mean().item() if reduce == "tokens" else sum(k.mean().item() for k in kept) / len(kept)
    return {"exp": math.exp, "mean": lambda x: x, "exp2": lambda x: 2.0 ** x}[finish](mean)


_SKIP = "In window i >= 1, skip the first max(seq_len - stride - 1, 0) losses: window i - 1 scored those tokens"
_WINDOW_PPLS = "you averaged the windows' perplexities: take one exp, of the mean loss over all the tokens counted."
_STRIDED_VARIANTS = (
    (dict(keep="all"), f"you averaged every loss of every window: a token two windows hold counts twice. {_SKIP}."),
    (dict(keep="last"), ("you kept an overlapped token's loss from the LAST window that holds it, near that window's "
                         f"start, with the least context. Keep the first window's (the most context). {_SKIP}.")),
    (dict(reduce="window_ppls"), _WINDOW_PPLS),
    (dict(keep="all", reduce="window_ppls"), _WINDOW_PPLS + " And count each token once."),
    (dict(reduce="window_means"), ("you averaged the windows' mean losses: a window that adds fewer new tokens (the "
                                   "last) weighs as much as the others. Divide the kept losses' sum by their number.")),
    (dict(keep="more"), ("off by one: you dropped the first new token of each window after the first. Row[j] is "
                         f"token i * stride + j + 1, and window i - 1 ends at (i - 1) * stride + seq_len. {_SKIP}.")),
    (dict(keep="less"), ("off by one: you counted the last token of the window before twice. Row[j] is token "
                         f"i * stride + j + 1, and window i - 1 ends at (i - 1) * stride + seq_len. {_SKIP}.")),
    (dict(keep="negative"), ("with stride == seq_len, seq_len - stride - 1 is -1, and row[-1:] keeps only the last "
                             "loss. The windows don't overlap then: skip max(seq_len - stride - 1, 0) losses.")),
    (dict(keep="tail"), ("you kept the last `stride` losses of each window: a shorter last window holds fewer new "
                         f"tokens than that. {_SKIP}.")),
    (dict(keep="first_too"), "you cut window 0 like the others: no window before it scored its tokens."),
    (dict(finish="mean"), "you returned the mean loss: perplexity is exp of it."),
    (dict(finish="exp2"), "perplexity is exp (base e) of the mean natural-log loss, not 2 to its power."),
)
_STRIDED_HINT = (f"window i begins at token i * stride and its row[j] is the loss of token i * stride + j + 1. Keep "
                 f"all of window 0. {_SKIP}. Perplexity = exp(sum of the kept losses / their number), in float64.")


def _same_float(a: Any, b: Any, rel: float = STRIDED_RTOL) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def check_strided_perplexity(fn) -> bool:
    """fn(window_rows, seq_len, stride) -> the perplexity the course protocol reports, a float.

    Window i spans tokens i * stride .. min(i * stride + seq_len, n_tokens) - 1; window_rows[i][j] (float64) is the
    loss of token i * stride + j + 1 given the window's tokens before it. Count each token once, from the FIRST
    window that holds it (the most context), and return exp(mean of those losses), in float64.

    Checked against course_lib.lm.perplexity.windows on random losses that fall with context: 50-100 tokens, seq_len
    8-24, stride 1, seq_len / 2, seq_len - 1 and seq_len, ragged last windows, seeds 0, 1, 2; then windows() stopping
    early, a last window with one new token, one window, 2 tokens. Tolerance: 1e-9 relative.
    """
    labels, cases = strided_perplexity_cases()
    diagnose = _diagnosis(fn, cases, _strided_by_hand, _STRIDED_VARIANTS, _same_float, comparable=_as_float)

    def diagnose_more(args: tuple, got: float) -> str | None:
        if (named := diagnose(args, got)) is None and _same_float(got, reference_strided_perplexity(*args), 1e-5):
            return ("your perplexity is right to about 7 digits only: the sum or the mean was taken in float32. "
                    "Compute in float64 (.double(), or Python floats); the tolerance is 1e-9.")
        return named

    return check_against("strided_perplexity", fn, cases, reference_strided_perplexity,
                         _compare_number("perplexity", _same_float, f"{STRIDED_RTOL:g} relative"), labels=labels,
                         hint=_STRIDED_HINT, diagnose=diagnose_more)


# --- 2. a paired bootstrap interval ------------------------------------------------------------------------------

PAIRED_SEEDS = (0, 1, 2)
# (windows, draws, level, B's loss minus A's per token, counts): "protocol" = 255, 256, ..., 256, a shorter last
# (windows with stride == seq_len); "documents" = 20-400 tokens each (documents scored alone)
PAIRED_SHAPES = ((64, 1000, 0.95, 0.02, "protocol"), (40, 500, 0.95, 0.03, "documents"),
                 (25, 2000, 0.9, -0.01, "documents"), (100, 300, 0.99, 0.005, "protocol"))
PAIRED_ATOL, PAIRED_RTOL = 1e-9, 1e-6


def _paired_inputs(n: int, delta: float, counts: str, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(nll_a, nll_b, counts): windows differ in difficulty (0.4 nats per token), B's loss differs from A's by about
    `delta` per token (0.02 of spread): the models agree on which windows are hard, as real ones do."""
    if counts == "protocol":
        c = torch.full((n,), 256.0, dtype=torch.float64)
        c[0], c[-1] = 255.0, float(torch.randint(20, 256, (1,), generator=g))
    else:
        c = torch.randint(20, 401, (n,), generator=g).double()
    per_token = 3.5 + 0.4 * torch.randn(n, generator=g, dtype=torch.float64)
    return c * per_token, c * (per_token + delta + 0.02 * torch.randn(n, generator=g, dtype=torch.float64)), c


def paired_interval_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (nll_a, nll_b, counts, idx, level)) of check_paired_interval; idx are the draws
    of paired_bootstrap(..., seed=seed): resample_indices(n_windows, n_boot, seed)."""
    labels, cases = [], []
    for seed in PAIRED_SEEDS:
        for n, n_boot, level, delta, kind in PAIRED_SHAPES:
            a, b, c = _paired_inputs(n, delta, kind, torch.Generator().manual_seed(10 * seed + n))
            labels.append(f"seed {seed}: {n} windows ({kind}), {n_boot} draws, level {level}, B's loss about "
                          f"{delta:+g} nats per token from A's")
            cases.append((a, b, c, resample_indices(n, n_boot, seed), level))
    g = torch.Generator().manual_seed(5)
    a, b, c = _paired_inputs(30, 0.0, "documents", g)
    labels.append("edge case: B identical to A (the change and both ends are 0), 30 windows, 500 draws")
    cases.append((a, a.clone(), c, resample_indices(30, 500, 5), 0.95))
    a, b, c = _paired_inputs(20, 0.02, "documents", g)
    c[3], a[3], b[3] = 5000.0, 5000 * 4.5, 5000 * 4.4  # one long document where B is better
    labels.append("edge case: one document of 5000 tokens among 19 of 20-400, where B is better, 1000 draws")
    cases.append((a, b, c, resample_indices(20, 1000, 6), 0.95))
    a, b, c = _paired_inputs(2, 0.05, "protocol", g)
    labels.append("edge case: 2 windows, 100 draws, level 0.5")
    cases.append((a, b, c, resample_indices(2, 100, 7), 0.5))
    return labels, cases


def _paired_by_hand(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, idx: torch.Tensor, level: float, *,
                    stat: str = "ratio", tails: str = "central", point: str = "all", combine: str = "draws",
                    quantile: str = "linear") -> tuple[float, float, float]:
    """(change, lo, hi) as a learner computes them, with one choice passed in (see _PAIRED_VARIANTS); the defaults
    give the reference: paired_bootstrap on the draws passed in."""
    a, b, c = a.double(), b.double(), c.double()

    def value(sel: torch.Tensor) -> torch.Tensor:
        A, B, C = a[sel], b[sel], c[sel]
        mean_a, mean_b = A.sum(-1) / C.sum(-1), B.sum(-1) / C.sum(-1)
        return {"ratio": lambda: torch.exp(mean_b - mean_a) - 1, "no_minus": lambda: torch.exp(mean_b - mean_a),
                "inverted": lambda: torch.exp(mean_a - mean_b) - 1,
                "difference": lambda: torch.exp(mean_b) - torch.exp(mean_a),
                "window_ratios": lambda: torch.exp((B - A) / C).mean(-1) - 1,
                "window_means": lambda: torch.exp(((B - A) / C).mean(-1)) - 1}[stat]()

    tail = (1 - level) / 2 if tails == "central" else 1 - level
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64)

    def quantiles(x: torch.Tensor) -> torch.Tensor:
        return torch.quantile(x, q) if quantile == "linear" else x.sort().values[(q * len(x)).long()]

    draws = value(idx)
    if combine == "draws":
        lo, hi = quantiles(draws).tolist()
    else:
        ppl_a, ppl_b = (quantiles(torch.exp(x[idx].sum(1) / c[idx].sum(1))) for x in (a, b))
        lo, hi = (ppl_b / (ppl_a.flip(0) if combine == "crossed" else ppl_a) - 1).tolist()
    return (value(torch.arange(len(a))).item() if point == "all" else draws.mean().item()), lo, hi


def reference_paired_interval(nll_a: torch.Tensor, nll_b: torch.Tensor, counts: torch.Tensor, idx: torch.Tensor,
                              level: float) -> tuple[float, float, float]:
    """course_lib.eval.stats.paired_bootstrap with the seed whose draws are idx (the cases draw them so)."""
    seed = next(s for s in range(10) if torch.equal(resample_indices(idx.shape[1], idx.shape[0], s), idx))
    d = paired_bootstrap(nll_a, nll_b, counts, n_boot=idx.shape[0], level=level, seed=seed)
    return d.change, d.lo, d.hi

_PER_DRAW = ("compute ppl_B / ppl_A - 1 inside each draw (one row of idx, the same windows for both models), then "
             "take the quantiles of those values.")
_PAIRED_VARIANTS = (
    (dict(stat="no_minus"), "the change is ppl_B / ppl_A - 1: you returned the ratio itself (forgot the - 1)."),
    (dict(stat="inverted"), "the change is B relative to A, ppl_B / ppl_A - 1: you computed ppl_A / ppl_B - 1."),
    (dict(stat="difference"), "the change is relative, ppl_B / ppl_A - 1: you returned ppl_B - ppl_A."),
    (dict(stat="window_ratios"), ("you averaged the windows' own perplexity ratios. A perplexity weighs every token "
                                  "alike: ppl = exp(sum of nll / sum of counts) per model, then the ratio, on all "
                                  "the windows and in each draw.")),
    (dict(stat="window_means"), ("you averaged the windows' per-token differences with every window weighted alike: "
                                 "a long window or document must count for more than a short one. Use "
                                 "exp((sum nll_b - sum nll_a) / sum counts) - 1 over the windows of the draw.")),
    (dict(tails="one_sided"), ("your interval is too narrow: a 95% interval runs from the 2.5% quantile to the "
                               "97.5% one, tails of (1 - level) / 2 each; you took 1 - level and level (90%).")),
    (dict(point="mean"), ("the change is the statistic on all the windows, ppl_B / ppl_A - 1; you returned the mean "
                          "of the bootstrap draws (only lo and hi come from the draws).")),
    (dict(combine="crossed"), ("you combined each model's own interval (B's ends over A's opposite ends): that "
                               f"ignores the pairing and is far too wide. Instead {_PER_DRAW}")),
    (dict(combine="matched"), ("you divided B's quantiles by A's: the quantile of a ratio is not the ratio of the "
                               f"quantiles. Instead {_PER_DRAW}")),
    (dict(quantile="rank"), ("your ends are order statistics picked by rank: use torch.quantile(draws, "
                             "torch.tensor([tail, 1 - tail], dtype=torch.float64)), which interpolates between them.")),
)
_PAIRED_HINT = ("change = exp((nll_b.sum() - nll_a.sum()) / counts.sum()) - 1. Each row of idx is one draw of "
                "windows, the same for both models: draws = exp((nll_b[idx].sum(1) - nll_a[idx].sum(1)) / "
                "counts[idx].sum(1)) - 1; tail = (1 - level) / 2; lo, hi = torch.quantile(draws, tensor([tail, "
                "1 - tail])), in float64.")


def _as_three(got: Any) -> tuple[float, float, float] | None:
    values = tuple(_as_float(x) for x in got) if isinstance(got, (tuple, list)) and len(got) == 3 else (None,)
    return None if None in values else values


def _same_three(a: Any, b: Any, atol: float = PAIRED_ATOL, rtol: float = PAIRED_RTOL) -> bool:
    return a is not None and b is not None and all(abs(x - y) <= atol + rtol * abs(y) for x, y in zip(a, b))


def _compare_three(got: Any, expected: tuple[float, float, float]) -> tuple[str, Any]:
    if (values := _as_three(got)) is None:
        return f"expected a tuple (change, lo, hi) of three floats, got {type(got).__name__} {_short(got)}.", None
    wrong = [f"{name} expected {e:.9g}, got {v:.9g}" for name, v, e in zip(("change", "lo", "hi"), values, expected)
             if not _same_three((v,), (e,))]
    return ("; ".join(wrong) + f" (tolerance {PAIRED_ATOL:g} + {PAIRED_RTOL:g} * |expected|)." if wrong else ""), values


def check_paired_interval(fn) -> bool:
    """fn(nll_a, nll_b, counts, idx, level) -> (change, lo, hi): ppl_B / ppl_A - 1 with its paired interval.

    nll_a, nll_b, counts (n_windows,) float64: each window's summed loss under A and B and its tokens; idx (n_boot,
    n_windows): one bootstrap draw of windows per row. change = ppl_B / ppl_A - 1 on all the windows (ppl =
    exp(sum nll / sum counts)); lo, hi = the (1 - level) / 2 and 1 - (1 - level) / 2 quantiles (torch.quantile) of
    the same quantity on each draw, the SAME windows for both models.

    Checked against course_lib.eval.stats.paired_bootstrap (the cases pass its draws, resample_indices(n, n_boot,
    seed)) on correlated random losses: 25-100 windows of 256 tokens or documents of 20-400, 300-2000 draws, levels
    0.9-0.99, B worse and better, seeds 0, 1, 2; then B identical to A, one long document, 2 windows. Tolerance:
    1e-9 + 1e-6 * |expected| for each number.
    """
    labels, cases = paired_interval_cases()
    diagnose = _diagnosis(fn, cases, _paired_by_hand, _PAIRED_VARIANTS, _same_three, comparable=_as_three)

    def diagnose_more(args: tuple, got: tuple[float, float, float]) -> str | None:
        if (named := diagnose(args, got)) is not None:
            return named
        expected = reference_paired_interval(*args)
        if _same_three(sorted(got), sorted(expected)):
            return "your three numbers are right but in another order: return (change, lo, hi)."
        if _same_three(got[:1], expected[:1]) and got[2] - got[1] > 1.5 * (expected[2] - expected[1]) + 1e-12:
            return ("your change is right but your interval is much wider than the paired one: B's windows were "
                    "drawn apart from A's. Use the same row of idx for both models in each draw: a window hard for "
                    "one model is hard for the other, and pairing cancels that.")
        if _same_three(got, expected, atol=1e-5, rtol=1e-3):
            return "your numbers are right to 4-6 digits only: the sums were taken in float32. Use float64."
        return None

    return check_against("paired_interval", fn, cases, reference_paired_interval, _compare_three, labels=labels,
                         hint=_PAIRED_HINT, diagnose=diagnose_more)


# --- 3. lm-eval's acc_norm ---------------------------------------------------------------------------------------

ACC_SEEDS = (0, 1, 2)
ACC_SHAPES = ((40, 4), (60, 2), (30, 5))  # (items, choices per item)
ACC_ATOL = 1e-6  # accuracies are k / items; a mean in float32 is within 1e-7
_WORDS = ("the", "king", "crown", "sword", "river", "of", "a", "and", "castle", "quietly", "night", "Paris",
          "café", "naïve", "Zürich", "東京", "日本語", "Москва", "señor", "über", "Ελλάδα", "π", "€5", "🙂")
# (what, choices, lls, gold)
ACC_EDGES = (
    ("non-ASCII choices, where characters and UTF-8 bytes pick differently",
     [["東京", "Tokyo", "Kyoto"], ["naïve", "naive", "knave"], ["Zürich", "Zurich", "Bern"], ["π", "pi", "3"],
      ["🙂 yes", "no", "maybe"]],
     [[-4.0, -7.0, -9.0], [-6.3, -6.0, -8.0], [-7.6, -7.5, -8.0], [-1.5, -2.0, -3.5], [-9.0, -3.0, -7.0]],
     [1, 1, 1, 1, 2]),
    ("exact ties per character (the first tied choice counts), and ties in the raw log-likelihoods",
     [["ab", "abcd", "x"], ["yes", "yes", "no"], ["abc", "a", "abcdef"], ["one", "three", "fifteen"]],
     [[-3.0, -6.0, -2.0], [-2.0, -2.0, -5.0], [-3.0, -3.0, -9.0], [-6.0, -10.0, -14.0]], [0, 0, 0, 0]),
    ("choices of very different lengths (1 to 60 characters)",
     [["a", "a considerably longer answer that goes on for many words more", "no"],
      ["I", "it", "the whole of the second act, scene two, in the old castle"]],
     [[-4.0, -70.0, -5.0], [-3.0, -5.0, -62.0]], [1, 2]),
    ("one item", [["to be", "not to be"]], [[-5.0, -8.0]], [1]),
    ("every item wrong (acc_norm = 0)", [["ab", "b"], ["xyz", "x"]], [[-1.0, -5.0], [-2.0, -9.0]], [1, 1]),
)


def _acc_inputs(items: int, n_choices: int, seed: int) -> tuple[torch.Tensor, list[list[str]], torch.Tensor]:
    """Choices of 1-6 words (some non-ASCII), log-likelihoods that fall with length (0.5-2.5 nats per character
    plus noise), and gold the best per character for about 60% of the items, a random choice otherwise."""
    rnd, g = random.Random(seed), torch.Generator().manual_seed(seed)
    choices = [[" ".join(rnd.choices(_WORDS, k=rnd.randint(1, 6))) for _ in range(n_choices)] for _ in range(items)]
    chars = torch.tensor([[len(c) for c in item] for item in choices], dtype=torch.float64)
    rate = 0.5 + 2 * torch.rand(items, n_choices, generator=g, dtype=torch.float64)
    lls = -(rate * chars + 0.5 * torch.rand(items, n_choices, generator=g, dtype=torch.float64))
    gold = torch.where(torch.rand(items, generator=g) < 0.6, (lls / chars).argmax(1),
                       torch.randint(0, n_choices, (items,), generator=g))
    return lls, choices, gold


def acc_norm_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (lls, choices, gold)) of check_acc_norm."""
    labels, cases = [], []
    for seed in ACC_SEEDS:
        for items, n_choices in ACC_SHAPES:
            labels.append(f"seed {seed}: {items} items of {n_choices} choices (1-6 words, some non-ASCII)")
            cases.append(_acc_inputs(items, n_choices, 10 * seed + items))
    for what, choices, lls, gold in ACC_EDGES:
        labels.append(f"edge case: {what}, {len(choices)} item{'s' * (len(choices) > 1)}")
        cases.append((torch.tensor(lls, dtype=torch.float64), choices, torch.tensor(gold)))
    return labels, cases


def reference_acc_norm(lls: torch.Tensor, choices: list[list[str]], gold: torch.Tensor) -> float:
    """course_lib.eval.stats.mc_accuracies' acc_norm (lm-eval 0.4.13: argmax of ll / len(choice) in characters)."""
    return mc_accuracies(lls, choices, gold)["acc_norm"]


def _acc_by_hand(lls: torch.Tensor, choices: list[list[str]], gold: torch.Tensor, *, norm: str = "chars",
                 pick: str = "first", result: str = "mean") -> float:
    """acc_norm as a learner computes it, with one choice passed in; the defaults give the reference."""
    length = {"chars": len, "bytes": lambda c: len(c.encode("utf-8")), "words": lambda c: len(c.split()),
              "none": lambda c: 1, "delimiter": lambda c: len(" " + c)}[norm]
    scores = lls.double() / torch.tensor([[float(length(c)) for c in item] for item in choices], dtype=torch.float64)
    pred = {"first": lambda: scores.argmax(1), "min": lambda: scores.argmin(1),
            "last": lambda: scores.shape[1] - 1 - scores.flip(1).argmax(1)}[pick]()
    correct = (pred == gold).double()
    return {"mean": correct.mean(), "count": correct.sum(), "percent": 100 * correct.mean()}[result].item()


_ACC_VARIANTS = (
    (dict(norm="none"), ("you took the argmax of the raw log-likelihoods: that is lm-eval's acc. acc_norm divides "
                         "each choice's log-likelihood by its length in characters first.")),
    (dict(norm="bytes"), ("you divided by the UTF-8 bytes: that is acc_bytes. lm-eval's acc_norm divides by "
                          "len(choice), in characters (東京 is 2 characters and 6 bytes).")),
    (dict(norm="words"), ("you divided by the number of words: lm-eval's acc_norm divides by len(choice), the "
                          "characters (it has no tokens or words at that point).")),
    (dict(norm="delimiter"), ("you counted the space before the choice: lm-eval adds its target delimiter when it "
                              "builds the request, but divides by len(choice) of the choice alone.")),
    (dict(pick="last"), ("ties go to the FIRST choice (np.argmax and torch.argmax do that): with exactly equal "
                         "scores you picked the last.")),
    (dict(pick="min"), ("log-likelihoods are negative and the best is the largest (closest to 0): take the argmax "
                        "of ll / len(choice), not the argmin.")),
    (dict(norm="none", pick="min"), "take the argmax of ll / len(choice): you took the argmin of the raw ll."),
    (dict(result="count"), "return the mean of the per-item correctness (a fraction), not the number of right items."),
    (dict(result="percent"), "return a fraction between 0 and 1, not a percentage."),
)
_ACC_HINT = ("scores[i][k] = lls[i][k] / len(choices[i][k]) (characters); pred[i] = argmax over k (ties: the "
             "first); return (pred == gold) as floats, averaged over the items.")


def _same_acc(a: Any, b: Any) -> bool:
    return a is not None and b is not None and abs(a - b) <= ACC_ATOL


def check_acc_norm(fn) -> bool:
    """fn(lls, choices, gold) -> lm-eval's acc_norm, a float.

    lls (items, n_choices) float64: each choice's log-likelihood; choices: one list of strings per item; gold
    (items,): the right choices. Per item, divide each log-likelihood by len(choice) (characters, as lm-eval 0.4.13
    does), pick the argmax (ties: the first, as np.argmax); return the mean of (pick == gold).

    Checked against course_lib.eval.stats.mc_accuracies on 30-60 random items of 2-5 choices (1-6 words, some
    non-ASCII), seeds 0, 1, 2; then characters and bytes disagreeing, exact ties, lengths of 1 to 60 characters, one
    item, every item wrong. Tolerance: 1e-6.
    """
    labels, cases = acc_norm_cases()
    diagnose = _diagnosis(fn, cases, _acc_by_hand, _ACC_VARIANTS, _same_acc, comparable=_as_float)
    return check_against("acc_norm", fn, cases, reference_acc_norm, _compare_number("acc_norm", _same_acc,
                                                                                  f"{ACC_ATOL:g}"),
                         labels=labels, hint=_ACC_HINT, diagnose=diagnose)


WARM_UPS = ("bits_per_byte",)
EXERCISES = {"bits_per_byte": check_bits_per_byte, "strided_perplexity": check_strided_perplexity,
             "paired_interval": check_paired_interval, "acc_norm": check_acc_norm}
