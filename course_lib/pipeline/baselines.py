"""Unigram and bigram baselines: what counting alone scores on the tokens the model is scored on.

    result = ngram_perplexity(2, FULL, tokenizer)   # a perplexity.Result, like the model's
    lm = fit(2, tokenizer); lm.next_token_probs(prev=42)

Counts come from the train split's token stream (the course tokenizer, documents joined by
<|endoftext|>, see ``course_lib.lm.tokens``). Smoothing, with V the vocabulary size:

* unigram, add-k (Lidstone) with k = 1 (Laplace):  P(w) = (c(w) + k) / (N + k V)
* bigram, Jelinek-Mercer interpolation:  P(w | u) = λ c(u, w) / c(u) + (1 - λ) P(w)
  with P(w) the add-one unigram; a context u never seen in train (c(u) = 0) uses P(w) alone.

λ is chosen on a grid (0.05 .. 0.95) to minimise the negative log-likelihood at the validation
split's FULL_VALIDATION positions, so validation numbers are tuned on (one number; the test split
is not). k is not tuned: no validation token is unseen in train, so validation would only push
k towards 0; k = 1 gives the few test tokens unseen in train a probability of about 1 / N.
Scoring uses exactly the positions ``perplexity.perplexity`` scores: the protocol's
windows (``perplexity.windows``), without each window's first token. So the token before every
scored token lies in the same window, and the bigram, like the model, never looks across a window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import torch

from ..lm.perplexity import FAST, FULL_VALIDATION, Protocol, Result, windows
from ..lm.tokens import token_stream

LAMBDA_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


@dataclass(frozen=True, eq=False)
class NgramLM:
    """A smoothed unigram (order 1) or bigram (order 2) model over a vocabulary of V tokens."""

    order: int
    unigram: torch.Tensor  # (V,) float64, the add-k unigram P(w)
    bigram_counts: torch.Tensor | None  # (V, V) int32, c(u, w) = times w follows u in train
    context_counts: torch.Tensor | None  # (V,) float64, c(u) = sum over w of c(u, w)
    k: float
    lam: float  # λ, the bigram's weight (0.0 for a unigram model)

    @property
    def vocab_size(self) -> int:
        return self.unigram.numel()

    def next_token_probs(self, prev: int | None = None) -> torch.Tensor:
        """P(. | prev) over the whole vocabulary (float64, sums to 1); a unigram ignores prev."""
        if self.order == 1:
            return self.unigram.clone()
        if prev is None:
            raise ValueError("A bigram model needs the previous token.")
        if self.context_counts[prev] == 0:  # unseen context: the unigram alone
            return self.unigram.clone()
        ml = self.bigram_counts[prev].double() / self.context_counts[prev]
        return self.lam * ml + (1 - self.lam) * self.unigram

    def token_nll(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """-log P(nxt | prev) for each pair (1-D LongTensors of equal length), float64."""
        p = self.unigram[nxt]
        if self.order == 2:
            context = self.context_counts[prev]  # c(u)
            pair = self.bigram_counts[prev, nxt].double()  # c(u, w), 0 wherever c(u) is 0
            ml = pair / context.clamp(min=1)  # maximum likelihood c(u, w) / c(u)
            lam = self.lam * (context > 0).double()  # λ, or 0 for a context unseen in train
            p = lam * ml + (1 - lam) * p
        return -torch.log(p)


# --------------------------------------------------------------------------------------------
# Counting and smoothing
# --------------------------------------------------------------------------------------------


def unigram_probs(ids: torch.Tensor, vocab_size: int, k: float) -> torch.Tensor:
    """Add-k unigram: P(w) = (c(w) + k) / (N + k V), float64."""
    counts = torch.bincount(ids, minlength=vocab_size).double()
    return (counts + k) / (counts.sum() + k * vocab_size)


def bigram_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """c(u, w) for every consecutive pair of the stream, as a dense (V, V) int32 matrix."""
    pairs = ids[:-1] * vocab_size + ids[1:]  # one integer per (u, w)
    counts = torch.bincount(pairs, minlength=vocab_size * vocab_size)
    return counts.to(torch.int32).view(vocab_size, vocab_size)


def scored_positions(n_tokens: int, protocol: Protocol) -> torch.Tensor:
    """Stream positions the perplexity protocol scores: each window but its first token."""
    if protocol.max_tokens is not None:
        n_tokens = min(n_tokens, protocol.max_tokens)
    spans = windows(n_tokens, protocol.seq_len, protocol.stride)
    return torch.cat([torch.arange(max(first, begin + 1), end) for begin, end, first in spans])


def evaluate(lm: NgramLM, ids: torch.Tensor, protocol: Protocol) -> Result:
    """Perplexity of `lm` on stream `ids` at the protocol's positions: exp(mean NLL), float64."""
    if int(ids.max()) >= lm.vocab_size:
        raise ValueError(f"Token id {int(ids.max())} is outside the model's vocabulary of {lm.vocab_size}.")
    pos = scored_positions(len(ids), protocol)
    nll = lm.token_nll(ids[pos - 1], ids[pos]).mean().item()
    return Result(ppl=math.exp(nll), nll=nll, tokens=pos.numel(), protocol=protocol)


# --------------------------------------------------------------------------------------------
# Fitting, with λ chosen on validation
# --------------------------------------------------------------------------------------------


def fit_stream(order: int, train_ids: torch.Tensor, vocab_size: int, k: float, lam: float = 0.0) -> NgramLM:
    """An n-gram model of `order` (1 or 2) from a train token stream, with given k and λ."""
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (unigram) or 2 (bigram), got {order}.")
    if k <= 0 or not 0 <= lam < 1:
        raise ValueError(f"Need k > 0 and 0 <= λ < 1, got k={k}, λ={lam}.")
    if int(train_ids.max()) >= vocab_size:
        raise ValueError(f"Token id {int(train_ids.max())} is outside the vocabulary of {vocab_size}.")
    unigram = unigram_probs(train_ids, vocab_size, k)
    if order == 1:
        return NgramLM(1, unigram, None, None, k, 0.0)
    counts = bigram_counts(train_ids, vocab_size)
    return NgramLM(2, unigram, counts, counts.sum(dim=1, dtype=torch.float64), k, lam)


def _best(candidates, score) -> float:
    """The candidate with the lowest score (the first one on ties)."""
    return min(candidates, key=score)


@lru_cache(maxsize=4)
def fit(order: int, tokenizer, k: float = 1.0, lam: float | None = None) -> NgramLM:
    """Fit on the train split; a bigram's λ, if None, is chosen on the validation split."""
    lm = fit_stream(order, token_stream("train", tokenizer), len(tokenizer), k, lam or 0.0)
    if order == 2 and lam is None:
        val_ids = token_stream(FULL_VALIDATION.split, tokenizer)
        pos = scored_positions(len(val_ids), FULL_VALIDATION)
        prev, nxt = val_ids[pos - 1], val_ids[pos]
        lam = _best(LAMBDA_GRID, lambda ll: replace(lm, lam=ll).token_nll(prev, nxt).mean().item())
        lm = replace(lm, lam=lam)
    return lm


def ngram_perplexity(order: int, protocol: Protocol = FAST, tokenizer=None, *,
                     k: float = 1.0, lam: float | None = None) -> Result:
    """Perplexity of the unigram (order 1) or bigram (order 2) baseline under `protocol`."""
    if tokenizer is None:
        from ..lm.models import load_tokenizer

        tokenizer = load_tokenizer()
    lm = fit(order, tokenizer, k, lam)
    return evaluate(lm, token_stream(protocol.split, tokenizer), protocol)
