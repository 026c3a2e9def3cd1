"""Checks for chapter 00: top-k / top-p filtering of logits, the perplexity protocol; and two warm-up formulas
(weight memory, the decode speed limit).

1. ``check_filter_logits``: what ``generate(..., top_k=50)`` and every serving engine do to the logits before
   sampling. Compared with ``course_lib.serving.sampling.filter_logits`` (chapter 13's sampler), row by row.
2. ``check_windowed_perplexity``: the course's perplexity protocol (``course_lib.lm.perplexity``) with windows that
   don't overlap, on the bundled model: windows, the label shift, the scored tokens, exp of the mean.

Both run on random cases from fixed seeds plus edge cases; after a wrong attempt a diagnosis recomputes the usual
mistakes (exactly k tokens when the k-th value ties, the crossing token left out of the nucleus, top-p before
top-k, no label shift, a mean of window means, ...) and names the one that matches.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from . import _short, check_against, check_cases, check_tensor_cases

GIB = 2**30


def check_weight_memory_gib(fn) -> bool:
    """fn(n_params, bits_per_param) -> GiB of weights."""
    cases = [((7e9, 16), 7e9 * 2 / GIB), ((8.03e9, 4), 8.03e9 * 0.5 / GIB), ((70e9, 8), 70e9 / GIB), ((1, 32), 4 / GIB)]
    return check_cases("weight_memory_gib", fn, cases, hint="bytes = params * bits / 8; 1 GiB = 2**30 bytes.")


def check_decode_tokens_per_s(fn) -> bool:
    """fn(n_params, bits_per_param, bandwidth_gb_s) -> the memory-bound ceiling on tokens/s at batch 1."""
    cases = [((7e9, 16, 3350), 3350e9 / (7e9 * 2)), ((7e9, 4, 3350), 3350e9 / (7e9 * 0.5)), ((70e9, 16, 936), 936e9 / 140e9)]
    return check_cases(
        "decode_tokens_per_s", fn, cases,
        hint="each new token reads every weight once: tokens/s <= bandwidth (bytes/s) / weight bytes; GB = 1e9 bytes.",
    )


# --- 1. top-k and top-p filtering -------------------------------------------------------------------------------------

FILTER_SEEDS = (0, 1, 2)
FILTER_SHAPES = ((1, 50, 5, 1.0), (4, 100, 0, 0.9), (3, 4096, 50, 0.95), (2, 17, 3, 0.5))  # (B, V, top_k, top_p)
FILTER_ATOL = FILTER_RTOL = 0.0  # the kept logits are returned unchanged; the others are exactly -inf


def _random_logits(rows: int, V: int, g: torch.Generator) -> torch.Tensor:
    """float32 logits (rows, V): standard normal times a per-row sharpness 1 .. 5 (flat to peaked distributions)."""
    sharp = 1 + 4 * torch.rand(rows, 1, generator=g)
    return (torch.randn(rows, V, generator=g) * sharp).float()


def filter_logits_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (logits, top_k, top_p)) of check_filter_logits: seeds x shapes, then the edge cases."""
    labels, cases = [], []
    for seed in FILTER_SEEDS:
        for B, V, k, p in FILTER_SHAPES:
            g = torch.Generator().manual_seed(1000 * seed + V)
            labels.append(f"seed {seed}, logits of shape ({B}, {V}), top_k {k}, top_p {p}")
            cases.append((_random_logits(B, V, g), k, p))
    g = torch.Generator().manual_seed(7)
    tie = torch.tensor([[1.0, 5.0, 2.0, 2.0, 0.5, 4.0, 2.0, -1.0, 0.0, 1.5]])
    labels.append("edge case: top_k 3 on [1, 5, 2, 2, 0.5, 4, 2, -1, 0, 1.5] (three logits tie with the 3rd largest, "
                  "2: all of them stay), top_p 1.0")
    cases.append((tie, 3, 1.0))
    x = _random_logits(2, 30, g)
    x[0, :22] = -math.inf
    x[1, ::2] = -math.inf
    labels.append("edge case: logits of shape (2, 30) with -inf already in them (8 and 15 finite), top_k 10, top_p 0.9")
    cases.append((x, 10, 0.9))
    labels.append("edge case: logits of shape (3, 100), top_k 0 and top_p 1.0 (both off: nothing changes)")
    cases.append((_random_logits(3, 100, g), 0, 1.0))
    labels.append("edge case: logits of shape (2, 20), top_k 25 (more than the vocabulary: keeps everything), "
                  "top_p 0.8")
    cases.append((_random_logits(2, 20, g), 25, 0.8))
    x = _random_logits(3, 64, g)
    x[1, 17] = 20.0  # one token holds almost all the mass
    labels.append("edge case: logits of shape (3, 64), top_p 0.01 (only each row's most likely token stays; in row "
                  "1 it holds 99.9% of the mass), top_k 0")
    cases.append((x, 0, 0.01))
    return labels, cases


def reference_filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """course_lib's sampler filter (one row at a time)."""
    from ..serving.sampling import filter_logits

    return torch.stack([filter_logits(row, top_k, top_p) for row in logits])


def _filter_by_hand(logits: torch.Tensor, top_k: int, top_p: float, *, k_rule: str = "ties", p_rule: str = "before",
                    order: str = "k_first", fill: float = -math.inf, p_on: str = "probs", out: str = "logits",
                    rows: str = "each") -> torch.Tensor:
    """The filter as a learner writes it, with one choice swapped for a usual mistake (float64)."""
    if rows == "batch":  # the whole batch filtered as one distribution
        flat = _filter_by_hand(logits.reshape(1, -1), top_k, top_p)
        return flat.reshape(logits.shape)
    x = logits.double().clone()
    V = x.shape[-1]
    keep = torch.isfinite(x)

    def top_k_mask(z: torch.Tensor) -> torch.Tensor:
        if not top_k or top_k >= V:
            return torch.ones_like(z, dtype=torch.bool)
        values, index = torch.topk(z, top_k, dim=-1)
        if k_rule == "exact":
            return torch.zeros_like(z, dtype=torch.bool).scatter(-1, index, True)
        return z > values[..., -1:] if k_rule == "strict" else z >= values[..., -1:]

    def top_p_mask(z: torch.Tensor) -> torch.Tensor:
        if top_p >= 1.0:
            return torch.ones_like(z, dtype=torch.bool)
        s, order_ = torch.sort(z, dim=-1, descending=True)
        w = {"probs": torch.softmax(s, -1), "exp": torch.exp(s), "logits": s}[p_on]
        c = w.cumsum(-1)
        drop = {"before": c - w >= top_p, "after": c > top_p, "after_eq": c >= top_p}[p_rule]
        drop[..., 0] = False
        return torch.zeros_like(drop).scatter(-1, order_, ~drop)

    if order == "k_first":
        keep &= top_k_mask(x)
        keep &= top_p_mask(x.masked_fill(~keep, -math.inf))
    else:  # top-p on the whole distribution, then top-k
        keep &= top_p_mask(x) & top_k_mask(x)
    y = logits.double().masked_fill(~keep, fill)
    if out == "sorted":
        return torch.sort(y, dim=-1, descending=True).values
    if out == "probs":
        return torch.softmax(y, dim=-1)
    return y


_FILTER_VARIANTS = (
    (dict(k_rule="exact"), ("you kept exactly k tokens; a logit that ties with the k-th largest stays too "
                            "(transformers and the course's sampler keep it): drop only the logits < the k-th largest "
                            "value.")),
    (dict(k_rule="strict"), ("you dropped the k-th largest logit itself: keep logits >= kth = torch.topk(row, "
                             "top_k).values[-1]; drop those < kth.")),
    (dict(p_rule="after"), ("you left out the token that makes the mass reach top_p. The nucleus is the smallest set "
                            "whose probability reaches top_p, so that token is in it: in descending order, drop a "
                            "token only when the mass before it (cumsum - p) is already >= top_p.")),
    (dict(p_rule="after_eq"), ("you left out the token that makes the mass reach top_p: in descending order, drop a "
                               "token only when the mass before it (cumsum - p) is already >= top_p.")),
    (dict(order="p_first"), ("apply top-k first, then top-p on the softmax of what is left (renormalised over the "
                             "top-k tokens); you took the nucleus of the whole distribution.")),
    (dict(p_on="logits"), ("top-p sums probabilities: take the softmax of the (top-k filtered) logits, sorted in "
                           "descending order, then the cumulative sum.")),
    (dict(p_on="exp"), ("top-p sums probabilities: normalise, softmax of the (top-k filtered) logits, sorted in "
                        "descending order, then the cumulative sum.")),
    (dict(fill=0.0), ("you set the dropped logits to 0: that is a logit like any other (probability e^0 / Z). Set "
                      "them to float('-inf'), probability exactly 0.")),
    (dict(fill=-1e9), "set the dropped logits to float('-inf'), not to a large negative number."),
    (dict(fill=-1e4), "set the dropped logits to float('-inf'), not to a large negative number."),
    (dict(fill=torch.finfo(torch.float32).min), "set the dropped logits to float('-inf'), not to the smallest float."),
    (dict(out="sorted"), ("you returned the logits in sorted order: put them back in vocabulary order (scatter with "
                          "the sort's indices, or build a mask and apply it to the original logits).")),
    (dict(out="probs"), "you returned probabilities: return the logits, with -inf where a token is dropped."),
    (dict(rows="batch"), ("you filtered the whole batch as one distribution: each row is one sequence's next-token "
                          "logits; take the top-k and the nucleus of each row on its own (dim=-1).")),
)
_FILTER_HINT = ("per row: if top_k > 0, kth = the k-th largest logit and every logit < kth becomes -inf; then if "
                "top_p < 1, sort the remaining logits in descending order, p = softmax, and drop (-inf) every token "
                "whose preceding mass cumsum(p) - p is >= top_p (the first token always stays). Return the logits in "
                "their original order.")


def _diagnose_filter(args: tuple, got: torch.Tensor) -> str | None:
    got = got.detach().to("cpu", torch.float64)
    expected = reference_filter_logits(*args).double()
    for kwargs, message in _FILTER_VARIANTS:
        mistake = _filter_by_hand(*args, **kwargs)
        if mistake.shape != got.shape or torch.equal(mistake, expected):
            continue
        if torch.allclose(got, mistake, rtol=1e-6, atol=1e-6, equal_nan=True):
            return message
    kept_got, kept = torch.isfinite(got), torch.isfinite(expected)
    if torch.equal(kept_got, kept):
        return "you keep the right tokens, but change their logits: return the kept logits unchanged."
    if bool((got[kept_got & kept] == expected[kept_got & kept]).all()):
        extra, missing = int((kept_got & ~kept).sum()), int((kept & ~kept_got).sum())
        return (f"the kept logits are right, but you keep {extra} token(s) too many and {missing} too few. "
                + _FILTER_HINT[0].upper() + _FILTER_HINT[1:])
    return None


def check_filter_logits(fn) -> bool:
    """fn(logits, top_k, top_p) -> the logits with every token outside the top-k and the nucleus set to -inf.

    logits: float32 (B, V), one row per sequence; each row is filtered on its own:
    * top-k (top_k > 0; 0 turns it off): every logit smaller than the row's k-th largest becomes -inf (a logit that
      ties with the k-th largest stays; top_k >= V keeps everything);
    * then top-p (top_p < 1; 1.0 turns it off), on the softmax of the logits left: in descending order of
      probability keep the smallest set of tokens whose mass reaches top_p, i.e. drop a token when the mass before
      it is already >= top_p (the most likely token always stays).
    Return a float tensor of shape (B, V): the kept logits unchanged, the others float('-inf'). This is transformers'
    TopKLogitsWarper then TopPLogitsWarper, and what serving engines apply before sampling.

    Checked against course_lib.serving.sampling.filter_logits (chapter 13's sampler), row by row, on random logits
    of several sharpnesses, shapes (1, 50), (4, 100), (3, 4096), (2, 17) with top-k only, top-p only and both, seeds
    0, 1, 2; then ties at the k-th value, rows with -inf already, both filters off, top_k larger than V, and a tiny
    top_p. The result must be equal (-inf where the reference has -inf).
    """
    labels, cases = filter_logits_cases()
    errors: list = []

    def noting(*args):
        try:
            return fn(*args)
        except NotImplementedError:
            raise
        except Exception as exc:
            errors.append(exc)
            raise

    ok = check_tensor_cases("filter_logits", noting, cases, reference_filter_logits, atol=FILTER_ATOL,
                            rtol=FILTER_RTOL, labels=labels, hint=_FILTER_HINT, diagnose=_diagnose_filter)
    if not ok and errors and "out of range" in str(errors[-1]):
        print("    Hint: torch.topk(row, k) needs k <= V: with top_k >= V every token stays (use min(top_k, V)).")
    return ok


# --- 2. the perplexity protocol ---------------------------------------------------------------------------------------

PPL_SEEDS = (0, 1, 2)
PPL_SHAPES = ((200, 64), (256, 64), (300, 128))  # (stream length, seq_len)
PPL_RTOL = 1e-4  # windows run one at a time or batched differ by float32 rounding (about 1e-6 here)


@lru_cache(maxsize=1)
def _bundled() -> tuple[Any, Any]:
    """The bundled model in float32 on the CPU (whatever COURSE_MODEL says), and its tokenizer."""
    from ..lm import models

    return models.load_model(models.BUNDLED_NAME, device="cpu", dtype=torch.float32)


def _test_stream() -> torch.Tensor:
    from ..lm.tokens import token_stream

    return token_stream("test", _bundled()[1])


def _windows_text(n: int, L: int) -> str:
    sizes = [min(L, n - b) for b in range(0, n, L)]
    return ", ".join(map(str, sizes))


def windowed_perplexity_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (model, ids, seq_len)) of check_windowed_perplexity."""
    model, _ = _bundled()
    stream = _test_stream()
    labels, cases = [], []
    for seed in PPL_SEEDS:
        rng = np.random.default_rng(seed)
        for n, L in PPL_SHAPES:
            start = int(rng.integers(0, len(stream) - n))
            labels.append(f"seed {seed}: {n} tokens of the test split from token {start}, seq_len {L} (windows of "
                          f"{_windows_text(n, L)} tokens)")
            cases.append((model, stream[start:start + n].clone(), L))
    g = torch.Generator().manual_seed(3)
    labels.append("random token ids (seed 3): 100 tokens, seq_len 32 (windows of 32, 32, 32, 4 tokens)")
    cases.append((model, torch.randint(0, model.config.vocab_size, (100,), generator=g), 32))
    for n, L, what in ((50, 64, "shorter than one window"), (129, 64, "the last window has 1 token: nothing to score"),
                       (130, 64, "the last window has 2 tokens: 1 scored"), (2, 64, "2 tokens: 1 scored")):
        labels.append(f"edge case: {n} tokens of the test split from token 1000, seq_len {L} ({what})")
        cases.append((model, stream[1000:1000 + n].clone(), L))
    return labels, cases


def reference_windowed_perplexity(model, ids: torch.Tensor, seq_len: int) -> float:
    """course_lib's protocol with stride = seq_len on the whole stream."""
    from ..lm.perplexity import Protocol, perplexity

    return perplexity(model, None, Protocol(seq_len=seq_len, stride=seq_len, max_tokens=None), stream=ids).ppl


@torch.no_grad()
def _window_log_probs(model, ids: torch.Tensor, L: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(log-softmax of the logits (n, V) float64, the window's ids (n,)) for each window."""
    out = []
    for b in range(0, len(ids), L):
        w = ids[b:b + L]
        logits = model(input_ids=w[None].to(next(model.parameters()).device)).logits[0].float().cpu()
        out.append((torch.log_softmax(logits.double(), -1), w))
    return out


def _ppl_by_hand(model, ids: torch.Tensor, L: int, *, shift: str = "right", reduce: str = "tokens",
                 count: str = "scored", last: bool = True, whole: bool = False, finish: str = "exp",
                 windows: list | None = None) -> float:
    """The protocol as a learner writes it, with one choice swapped for a usual mistake."""
    if whole:
        windows = _window_log_probs(model, ids, max(len(ids), 1))
    windows = windows if windows is not None else _window_log_probs(model, ids, L)
    total, n_scored, means = 0.0, 0, []
    for logp, w in windows:
        if not last and len(w) < L:
            continue
        if shift == "right":
            nll = -logp[:-1].gather(-1, w[1:, None]).squeeze(-1)
        elif shift == "none":
            nll = -logp.gather(-1, w[:, None]).squeeze(-1)
        else:  # "left": logits of position t + 1 scored against token t
            nll = -logp[1:].gather(-1, w[:-1, None]).squeeze(-1)
        total += float(nll.sum())
        n_scored += len(w) if count == "all" else nll.numel()
        if nll.numel():
            means.append(float(nll.mean()))
    mean = sum(means) / len(means) if reduce == "windows" else total / n_scored
    if finish == "exp":
        return math.exp(mean)
    if finish == "mean":
        return mean
    if finish == "exp2":
        return 2.0**mean
    return math.exp(total) if total < 700 else math.inf  # "sum": exp of the total


_PPL_VARIANTS = (
    (dict(shift="none"), ("no label shift: the logits at position t predict token t + 1, so score "
                          "log_softmax(logits[:-1]) against ids[1:] (you scored each token by its own position).")),
    (dict(shift="left"), ("the shift goes the other way: the logits at position t predict token t + 1, so score "
                          "log_softmax(logits[:-1]) against ids[1:].")),
    (dict(reduce="windows"), ("you averaged the windows' mean losses: a short last window then weighs as much as a "
                              "full one. Sum the losses of every scored token, divide by the number of scored tokens, "
                              "then exp.")),
    (dict(count="all"), ("you counted every token, but a window's first token has no context in it and is not "
                         "scored: a window of n tokens scores n - 1.")),
    (dict(last=False), "score the last, shorter window too (its tokens after the first)."),
    (dict(whole=True), ("you ran the whole stream as one sequence. The protocol restarts the context every seq_len "
                        "tokens: cut ids into windows ids[0:L], ids[L:2L], ... and run each one separately.")),
    (dict(finish="mean"), "you returned the mean negative log-likelihood: perplexity is exp of it."),
    (dict(finish="exp2"), "perplexity is exp (base e) of the mean natural-log loss, not 2 to its power."),
    (dict(finish="sum"), "exp of the mean loss per scored token, not of the total."),
)
_PPL_HINT = ("for b in range(0, len(ids), seq_len): w = ids[b:b + seq_len]; logits = model(input_ids=w[None])"
             ".logits[0].float(); nll = -torch.log_softmax(logits[:-1], -1).gather(-1, w[1:, None]); add nll.sum() "
             "to the total and len(w) - 1 to the count. Perplexity = exp(total / count), a float.")


def _same_ppl(a: float, b: float, rel: float) -> bool:
    return (math.isinf(a) and math.isinf(b)) or math.isclose(a, b, rel_tol=rel)


def _diagnose_ppl(args: tuple, got: float) -> str | None:
    model, ids, L = args
    windows = _window_log_probs(model, ids, L)
    expected = reference_windowed_perplexity(*args)
    for kwargs, message in _PPL_VARIANTS:
        try:
            mistake = _ppl_by_hand(model, ids, L, windows=None if kwargs.get("whole") else windows, **kwargs)
        except ZeroDivisionError:  # e.g. no full window to score
            continue
        if not _same_ppl(mistake, expected, PPL_RTOL) and _same_ppl(got, mistake, 10 * PPL_RTOL):
            return message
    if math.isclose(got, expected, rel_tol=3e-3):
        return ("your perplexity is right to about 3 digits only: compute the log-softmax in float32 (logits.float()) "
                "and sum the losses in float32 or float64.")
    return None


def _compare_ppl(got: Any, expected: float) -> tuple[str, Any]:
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_complex():
        got = got.item()
    if isinstance(got, (bool, np.bool_)) or not isinstance(got, numbers.Real):
        return f"expected a float, got {type(got).__name__} {_short(got)}.", None
    got = float(got)
    if math.isclose(got, expected, rel_tol=PPL_RTOL):
        return "", got
    return (f"expected a perplexity of {expected:.6g}, got {got:.6g} (tolerance: {PPL_RTOL:g} relative).", got)


def check_windowed_perplexity(fn) -> bool:
    """fn(model, ids, seq_len) -> the perplexity of `model` on the token stream `ids` (a 1-D LongTensor), a float.

    The course's protocol with windows that don't overlap (course_lib.lm.perplexity with stride = seq_len):
    * cut ids into windows ids[0:L], ids[L:2L], ... of L = seq_len tokens (the last may be shorter) and run the model
      on each window separately: no context carries over from the window before;
    * inside a window the logits at position t predict token t + 1, so a window of n tokens scores its last n - 1
      tokens, with the loss -log_softmax(logits[t])[ids[t + 1]];
    * perplexity = exp(sum of the losses of every scored token / the number of scored tokens).

    Checked against course_lib.lm.perplexity.perplexity on the bundled model (float32, CPU): passages of 200, 256
    and 300 tokens of the test split at random places (seeds 0, 1, 2) with seq_len 64 or 128, random token ids;
    then a stream shorter than one window, last windows of 1 and 2 tokens, and a stream of 2 tokens. Tolerance:
    1e-4 relative.
    """
    labels, cases = windowed_perplexity_cases()
    return check_against("windowed_perplexity", fn, cases, reference_windowed_perplexity, _compare_ppl,
                         labels=labels, hint=_PPL_HINT, diagnose=_diagnose_ppl)


EXERCISES = {
    "filter_logits": check_filter_logits,
    "windowed_perplexity": check_windowed_perplexity,
    "weight_memory_gib": check_weight_memory_gib,
    "decode_tokens_per_s": check_decode_tokens_per_s,
}
WARM_UPS = ("weight_memory_gib", "decode_tokens_per_s")
