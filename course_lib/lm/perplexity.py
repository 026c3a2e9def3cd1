"""The course's perplexity protocol: one fixed way to score a model, used by every chapter.

    result = perplexity(model, tokenizer)            # FAST: the CI-sized protocol
    result = perplexity(model, tokenizer, FULL)      # the whole test split (model card)

Protocol: the split's documents are joined into one token stream (each followed by
<|endoftext|>, see ``course_lib.lm.tokens``); the first ``max_tokens`` tokens are cut into windows
of ``seq_len`` tokens that start every ``stride`` tokens. Each token is scored once, by the
window that sees it with the most context. With stride == seq_len (the default) the windows don't
overlap, a token's context restarts every 256 tokens, and the first token of each window, having no
context, is not scored; a smaller stride gives more context at more compute. Perplexity = exp(mean negative
log-likelihood over the scored tokens), computed in float64 from per-token losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .tokens import token_stream


@dataclass(frozen=True)
class Protocol:
    split: str = "test"
    seq_len: int = 256
    stride: int = 256
    max_tokens: int | None = 16384  # None: the whole split

    def describe(self) -> str:
        size = "all tokens" if self.max_tokens is None else f"first {self.max_tokens} tokens"
        return f"{self.split} split, {size}, windows of {self.seq_len} every {self.stride}"


FAST = Protocol()  # under 10 s on the 2-core CI machine for the bundled model
FULL = Protocol(max_tokens=None)
FULL_VALIDATION = Protocol(split="validation", max_tokens=None)


@dataclass(frozen=True)
class Result:
    ppl: float
    nll: float
    tokens: int
    protocol: Protocol

    def __str__(self) -> str:
        return f"perplexity {self.ppl:.4g} over {self.tokens} tokens ({self.protocol.describe()})"


def windows(n_tokens: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) for each window over a stream of n_tokens tokens."""
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must be in 1..seq_len ({seq_len}), got {stride}.")
    if n_tokens < 2:
        raise ValueError("Need at least 2 tokens to score anything.")
    out, scored_until, begin = [], 1, 0  # token 0 has no context
    while scored_until < n_tokens:
        end = min(begin + seq_len, n_tokens)
        if end - max(scored_until, begin + 1) < 1:  # nothing left this window could score
            break
        out.append((begin, end, scored_until))
        scored_until = end
        begin += stride
    return out


def perplexity(model, tokenizer, protocol: Protocol = FAST, *, batch_size: int = 8, stream=None) -> Result:
    """Score `model` under `protocol`; `stream` overrides the split's tokens (a 1-D LongTensor)."""
    import torch

    ids = token_stream(protocol.split, tokenizer) if stream is None else stream
    if protocol.max_tokens is not None:
        ids = ids[: protocol.max_tokens]
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if max_pos is not None and protocol.seq_len > max_pos:
        raise ValueError(f"seq_len {protocol.seq_len} exceeds the model's {max_pos} positions.")
    device = next(model.parameters()).device
    spans = windows(len(ids), protocol.seq_len, protocol.stride)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        # batch windows of equal length (all but possibly the last)
        for i in range(0, len(spans), batch_size):
            group = spans[i : i + batch_size]
            lengths = {end - begin for begin, end, _ in group}
            parts = [group] if len(lengths) == 1 else [[g] for g in group]
            for part in parts:
                x = torch.stack([ids[b:e] for b, e, _ in part]).to(device)
                logits = model(input_ids=x).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                nll = -logp.gather(-1, x[:, 1:, None]).squeeze(-1)  # nll[j, t] scores token t+1
                for row, (b, e, first) in enumerate(part):
                    start = max(first, b + 1)  # a window's first token has no context inside it
                    scored = nll[row, start - b - 1 :]
                    total += scored.double().sum().item()
                    count += scored.numel()
    model.train(was_training)
    nll = total / count
    return Result(ppl=math.exp(nll), nll=nll, tokens=count, protocol=protocol)
