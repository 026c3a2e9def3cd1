"""Perplexity taken apart: per-token losses under the course protocol, and what moves the number.

    wl = window_losses(model, tok)                 # the course protocol (FAST), one loss per scored token
    wl.ppl == course_lib.lm.perplexity.perplexity(model, tok).ppl      # the same number, kept per window
    wl.nll_sums, wl.counts                         # per window: what the bootstrap resamples (stats.py)
    grid = position_losses(model, stream, 256)     # loss by position in the window: the first tokens pay
    bpb = document_bits_per_byte(model, tok)       # bits per byte, comparable across tokenizers

Every function scores in ``torch.no_grad`` and returns float64 numbers; the model's own dtype is
used, so casting the model (``model.to(torch.bfloat16)``) is how the dtype's effect is measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..lm.perplexity import FAST, Protocol, windows
from ..lm.tokens import token_stream

LN2 = math.log(2)


@dataclass(frozen=True)
class WindowLosses:
    """The scored tokens' negative log-likelihoods (nats), one float64 tensor per window."""

    losses: tuple[torch.Tensor, ...]
    spans: tuple[tuple[int, int, int], ...]  # (begin, end, first scored token) per window
    protocol: Protocol

    @property
    def nll_sums(self) -> torch.Tensor:
        return torch.stack([w.sum() for w in self.losses])

    @property
    def counts(self) -> torch.Tensor:
        return torch.tensor([w.numel() for w in self.losses], dtype=torch.float64)

    @property
    def tokens(self) -> int:
        return int(self.counts.sum().item())

    @property
    def nll(self) -> float:
        return (self.nll_sums.sum() / self.counts.sum()).item()

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def token_nll(model, x: torch.Tensor) -> torch.Tensor:
    """(batch, length) ids -> (batch, length - 1) float64 losses: entry t scores token t + 1 given tokens 0..t."""
    logits = model(input_ids=x.to(_device(model))).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    return -logp.gather(-1, x[:, 1:, None].to(logp.device)).squeeze(-1).double().cpu()


def window_losses(model, tokenizer=None, protocol: Protocol = FAST, *, stream: torch.Tensor | None = None,
                  batch_size: int = 8) -> WindowLosses:
    """The course protocol (course_lib.lm.perplexity) with every scored token's loss kept, window by window.

    Each token is scored once, by the first window that holds it (the one with the most context); a window's
    first token has no context inside it and is scored only if no earlier window holds it (never, for token 0).
    """
    if stream is None:
        if tokenizer is None:
            raise ValueError("Pass a tokenizer (to read the protocol's split) or a token stream.")
        stream = token_stream(protocol.split, tokenizer)
    ids = stream if protocol.max_tokens is None else stream[: protocol.max_tokens]
    spans = windows(len(ids), protocol.seq_len, protocol.stride)
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        i = 0
        while i < len(spans):  # batch windows of equal length together
            group = [spans[i]]
            while (i + len(group) < len(spans) and len(group) < batch_size
                   and spans[i + len(group)][1] - spans[i + len(group)][0] == spans[i][1] - spans[i][0]):
                group.append(spans[i + len(group)])
            nll = token_nll(model, torch.stack([ids[b:e] for b, e, _ in group]))
            for row, (b, e, first) in enumerate(group):
                out.append(nll[row, max(first, b + 1) - b - 1:].clone())
            i += len(group)
    finally:
        model.train(was_training)
    return WindowLosses(tuple(out), tuple(spans), protocol)


def position_losses(model, stream: torch.Tensor, seq_len: int, *, n_windows: int | None = None,
                    batch_size: int = 8) -> torch.Tensor:
    """Losses of non-overlapping windows of `seq_len` tokens, unfiltered: (n_windows, seq_len - 1) float64.

    Column j is the loss of the window's token j + 1 given j + 1 tokens of context. The mean over rows by
    column shows what context is worth, and which tokens a short window or a large stride leaves poorly
    predicted. (For the exercise: these rows are also what a strided protocol picks from.)"""
    n = (len(stream) // seq_len) if n_windows is None else min(n_windows, len(stream) // seq_len)
    if n < 1:
        raise ValueError(f"The stream has {len(stream)} tokens: fewer than one window of {seq_len}.")
    x = stream[: n * seq_len].reshape(n, seq_len)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([token_nll(model, x[i:i + batch_size]) for i in range(0, n, batch_size)])
    finally:
        model.train(was_training)


def strided_losses(model, stream: torch.Tensor, seq_len: int, stride: int, *, batch_size: int = 8) -> WindowLosses:
    """window_losses with windows of `seq_len` every `stride` tokens, over the whole `stream`."""
    return window_losses(model, None, Protocol(seq_len=seq_len, stride=stride, max_tokens=None), stream=stream,
                         batch_size=batch_size)


def document_losses(model, tokenizer, split: str = "test", *, seq_len: int = 256, max_docs: int | None = None,
                    max_chars: int | None = None) -> list[dict]:
    """Score each document on its own, starting from the eos token as context (as lm-eval's rolling
    log-likelihood does), so that no window crosses a document boundary and every token of the text is scored.

    `max_chars` keeps each document's first lines up to that many characters: the same text for every
    tokenizer, so that two models' bits per byte compare. Returns per document: its name, tokens scored, summed
    loss (nats) and UTF-8 bytes of the text scored.
    """
    from ..lm.corpus import list_documents

    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer needs an eos token to start each document with.")
    rows = []
    for name, text in list_documents(split)[:max_docs]:
        if max_chars is not None and len(text) > max_chars:
            text = text[: text.rfind("\n", 0, max_chars) + 1 or max_chars]  # whole lines
        ids = tokenizer(text)["input_ids"]
        stream = torch.tensor([tokenizer.eos_token_id] + ids, dtype=torch.long)
        # stride seq_len - 1: each window after the first starts one token back, so no token goes unscored
        wl = window_losses(model, None, Protocol(seq_len=seq_len, stride=seq_len - 1, max_tokens=None), stream=stream)
        rows.append({"document": name, "tokens": wl.tokens, "nll_sum": wl.nll_sums.sum().item(),
                     "bytes": len(text.encode("utf-8"))})
    return rows


def bits_per_byte(nll_sum: float, n_bytes: int) -> float:
    """Summed loss in nats over a text -> bits per UTF-8 byte of that text: nll / (ln 2 * bytes)."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}.")
    return nll_sum / (LN2 * n_bytes)


def document_bits_per_byte(model, tokenizer, split: str = "test", **kw) -> dict:
    """Bits per byte, per token and the token perplexity over `split`'s documents scored one by one."""
    rows = document_losses(model, tokenizer, split, **kw)
    nll = sum(r["nll_sum"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    n_bytes = sum(r["bytes"] for r in rows)
    return {"bits_per_byte": bits_per_byte(nll, n_bytes), "ppl": math.exp(nll / tokens), "tokens": tokens,
            "bytes": n_bytes, "bytes_per_token": n_bytes / tokens, "documents": len(rows)}
