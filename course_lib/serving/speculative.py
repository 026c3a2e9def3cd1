"""Speculative decoding: a small draft model proposes k tokens, the target model checks them in one pass.

Decoding is memory-bound (chapter 00): a forward pass over k + 1 tokens costs about what one token
costs, because the weights are read once either way. So let a cheap draft model guess k tokens
d_1..d_k, run the target once on them, and keep the longest prefix the target agrees with, plus one
token of the target's own. Each round yields between 1 and k + 1 tokens for one target pass.

The acceptance rule (Leviathan et al., ICML 2023; Chen et al., 2023) keeps the output distribution
*exactly* the target's. With draft probabilities q and target probabilities p at each position:

* accept d_i with probability min(1, p(d_i) / q(d_i));
* at the first rejection, sample instead from the residual norm(max(0, p - q)) and stop;
* if all k are accepted, sample a bonus token from the target's distribution after d_k.

At temperature 0 both distributions are one-hot, and the rule becomes: accept while d_i equals the
target's argmax, then append the target's argmax. The output is then token for token the target's
greedy output, which the tests check against transformers' ``generate`` and its own assisted
generation (``generate(..., assistant_model=draft)``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


def verify_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> list[int]:
    """Temperature 0: draft_tokens (k,), target_logits (k + 1, V) at the positions that predict d_1..d_k and one more.

    Returns the accepted draft tokens followed by the target's own next token (so 1..k + 1 tokens).
    """
    best = target_logits.argmax(-1).tolist()
    out = []
    for i, t in enumerate(draft_tokens.tolist()):
        if t != best[i]:
            return out + [best[i]]       # the target's correction
        out.append(t)
    return out + [best[len(out)]]        # all accepted: the bonus token


def accept_step(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
                u: torch.Tensor) -> tuple[int, torch.Tensor]:
    """The acceptance rule with its random numbers given: u (k,) uniform in [0, 1).

    Draft token i is accepted when u_i < p_i(d_i) / q_i(d_i), written u_i · q_i(d_i) < p_i(d_i) so that
    a zero q needs no division. Returns (n accepted, the distribution the next token is drawn from):
    the residual norm(max(0, p_n - q_n)) at the first rejection n, or p_k when all k are accepted.
    """
    k = len(draft_tokens)
    for i, t in enumerate(draft_tokens.tolist()):
        if u[i] * draft_probs[i, t] < target_probs[i, t]:
            continue
        residual = (target_probs[i] - draft_probs[i]).clamp_min(0)
        total = residual.sum()
        # after a rejection p != q, so the residual has mass; guard against rounding anyway
        return i, residual / total if total > 0 else target_probs[i]
    return k, target_probs[k]


def verify_sampled(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
                   generator: torch.Generator | None = None) -> list[int]:
    """The rejection-sampling rule: draft_probs (k, V) = q, target_probs (k + 1, V) = p; returns 1..k + 1 tokens."""
    u = torch.rand(len(draft_tokens), generator=generator, dtype=torch.float64)
    n, dist = accept_step(draft_tokens, draft_probs.double(), target_probs.double(), u)
    return draft_tokens[:n].tolist() + [int(torch.multinomial(dist, 1, generator=generator))]


@dataclass
class SpecResult:
    tokens: list[int]
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    target_passes: int = 0
    draft_passes: int = 0
    seconds: float = 0.0
    per_round: list[int] = field(default_factory=list)  # tokens produced by each round

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / proposed draft tokens."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """Tokens produced per target forward pass (1.0 for plain decoding)."""
        return len(self.tokens) / self.target_passes if self.target_passes else 0.0


def _forward(model, ids: list[int], cache, device) -> torch.Tensor:
    """Run `ids` through the model on its cache; float32 logits (len(ids), V)."""
    out = model(input_ids=torch.tensor([ids], device=device), past_key_values=cache, use_cache=True)
    return out.logits[0].float()


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _crop(cache, length: int) -> None:
    """Keep the first `length` tokens of a DynamicCache (crop(-n) drops the last n)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _check_pair(target, draft) -> None:
    tv, dv = target.config.vocab_size, draft.config.vocab_size
    if tv != dv:
        raise ValueError(f"The draft's vocabulary ({dv}) differs from the target's ({tv}); speculative decoding needs "
                         "a draft that shares the target's tokenizer (for example a distilled student).")


@torch.inference_mode()
def speculative_generate(target, draft, prompt_ids: list[int], max_new_tokens: int, *, k: int = 4,
                         temperature: float = 0.0, seed: int = 0, eos_id: int | None = None) -> SpecResult:
    """Generate with the draft proposing k tokens per round and the target verifying them in one pass.

    Both models keep a transformers DynamicCache; after a round each cache is cropped back to the
    tokens that were accepted (``cache.crop``), and the tokens a cache has not seen yet are fed at the
    start of the next round.
    """
    _check_pair(target, draft)
    if k < 1 or max_new_tokens < 1:
        raise ValueError(f"k and max_new_tokens must be >= 1, got k={k}, max_new_tokens={max_new_tokens}.")
    device = next(target.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    seq = list(prompt_ids)
    t_cache, d_cache = _new_cache(target), _new_cache(draft)
    res = SpecResult(tokens=[])
    start = time.perf_counter()
    # the caches hold every token but the last one of `seq`; the last one is fed with the next pass
    t_len = d_len = 0
    while len(res.tokens) < max_new_tokens:
        # 1. the draft proposes k tokens, autoregressively
        drafts, q_rows = [], []
        feed = seq[d_len:]
        for _ in range(k):
            logits = _forward(draft, feed, d_cache, device)[-1]
            res.draft_passes += 1
            d_len += len(feed)
            if temperature == 0:
                t = int(logits.argmax())
            else:
                q = torch.softmax(logits / temperature, -1).cpu()
                q_rows.append(q)
                t = int(torch.multinomial(q, 1, generator=gen))
            drafts.append(t)
            feed = [t]
        # 2. the target scores the unseen tokens and all k drafts in one pass
        t_feed = seq[t_len:] + drafts
        logits = _forward(target, t_feed, t_cache, device)[-(k + 1):].cpu()
        res.target_passes += 1
        draft_t = torch.tensor(drafts)
        if temperature == 0:
            new = verify_greedy(draft_t, logits)
        else:
            new = verify_sampled(draft_t, torch.stack(q_rows), torch.softmax(logits / temperature, -1), gen)
        res.rounds += 1
        res.proposed += k
        res.accepted += len(new) - 1
        # 3. keep what was accepted; crop both caches to the tokens now known (all but the newest)
        seq += new
        t_len = d_len = len(seq) - 1
        _crop(t_cache, t_len)
        _crop(d_cache, d_len)
        d_len = d_cache.get_seq_length()
        res.tokens += new
        res.per_round.append(len(new))
        if eos_id is not None and eos_id in new:
            res.tokens = res.tokens[:res.tokens.index(eos_id) + 1]
            break
    res.tokens = res.tokens[:max_new_tokens]
    res.seconds = time.perf_counter() - start
    return res


@torch.inference_mode()
def greedy_generate(model, prompt_ids: list[int], max_new_tokens: int) -> SpecResult:
    """Plain greedy decoding with the same cache and loop, one target pass per token (the baseline)."""
    device = next(model.parameters()).device
    cache, feed, res = _new_cache(model), list(prompt_ids), SpecResult(tokens=[])
    start = time.perf_counter()
    for _ in range(max_new_tokens):
        t = int(_forward(model, feed, cache, device)[-1].argmax())
        res.target_passes += 1
        res.tokens.append(t)
        feed = [t]
    res.seconds = time.perf_counter() - start
    return res
