"""Per-request sampling settings and the sampler: greedy, temperature, top-k and top-p (nucleus).

Every request carries its own settings, as in vLLM's ``SamplingParams`` and OpenAI's API, so one
batch can mix a greedy request with a creative one. A request's ``seed`` gives it its own random
generator: its output does not depend on what else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class RequestError(ValueError):
    """A request the engine cannot serve; the message says why and what to change. Other requests go on."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it stops.

    temperature 0 is greedy (argmax). top_p keeps the smallest set of tokens whose probability
    reaches top_p; top_k (0: off) keeps the k most likely. Generation stops at max_tokens, at the
    end-of-sequence token (unless ignore_eos), at any of stop_token_ids, or when the text contains
    one of the ``stop`` strings (which are cut from the output, as OpenAI's API does).
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise RequestError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}.")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0.0 <= self.temperature <= 100.0:
            raise RequestError(f"temperature must be a number in [0, 100] (0 is greedy), got {self.temperature!r}.")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise RequestError(f"top_k must be an integer >= 0 (0 turns it off), got {self.top_k!r}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise RequestError(f"seed must be an integer in [0, 2**63), got {self.seed!r}.")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise RequestError(f"stop must be non-empty strings, got {self.stop!r}.")
        object.__setattr__(self, "stop", stop)
        ids = tuple(self.stop_token_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
            raise RequestError(f"stop_token_ids must be integers, got {self.stop_token_ids!r}.")
        object.__setattr__(self, "stop_token_ids", ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of mass top_p (1-D logits)."""
    logits = logits.clone()
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass of the tokens before it already reaches top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        logits[order[drop]] = float("-inf")
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """One token id from the 1-D logits of the last position."""
    if params.greedy:
        return int(torch.argmax(logits))
    logits = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))
