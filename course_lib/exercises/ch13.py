"""Checks for chapter 13: three decisions of a serving engine, each on small cases.

1. ``check_prefix_cache_hit``: prefix caching's hash chain. Hash each full block of a prompt on its predecessor's
   hash and return the physical blocks of the longest cached prefix, never the whole prompt. Compared with the
   engine's own logic (``Engine._admit_prefix``: ``prefix_hashes``, then the lookup of ``BlockPool.lookup``).
2. ``check_speculative_accept``: speculative decoding's acceptance rule with its random numbers given: how many
   draft tokens are accepted and the distribution the next token is drawn from. Compared with
   ``course_lib.serving.speculative.accept_step``: n exactly, the distribution within 1e-9.
3. ``check_admit``: one scheduling step's admission with chunked prefill, on prompt lengths. Compared with
   ``course_lib.serving.teach.admission_plan``, the admission loop of ``Engine.schedule`` on plain integers
   (tests/test_serving_teach.py checks it against a real engine).

Each runs on random cases from fixed seeds plus edge cases; after a wrong attempt a diagnosis recomputes the usual
mistakes (a hash without the chain, a missing block skipped, the ratio upside down, the residual not normalised,
a request skipping ahead of one that does not fit, ...) and names the one that matches.

The answers are lists and tuples, not single tensors, so the checks compare them with ``_check_against`` below,
which prints the outcome in the same form as ``check_tensor_cases``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..serving.blocks import ROOT, block_hash, prefix_hashes
from ..serving.speculative import accept_step
from ..serving.teach import admission_plan
from . import _clone_args, _short, _tensor_mismatch, check_against

# --- comparing answers that are not one tensor ------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.dim() == 0 and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _diagnosis(fn: Callable[..., Any], cases: Sequence[tuple], reference: Callable[..., Any],
               compare: Callable[[Any, Any], tuple[str, Any]], by_hand: Callable[..., Any],
               variants: Sequence[tuple[dict, str]], same: Callable[[Any, Any], bool]
               ) -> Callable[[tuple, Any], str | None]:
    """A diagnose(args, got) for _check_against: the message of the mistake by_hand(*args, **kwargs) that gives
    the learner's answer on this case (and differs from the reference there).

    Several mistakes can give the same answer on one case (accepting when u > p/q and when u < p alone both
    reject everything when u is large); then fn runs on the other cases, and the mistake that explains all of
    them wins (else the first that explains this one).
    """
    def diagnose(args: tuple, got: Any) -> str | None:
        expected = reference(*args)
        candidates = []
        for kwargs, message in variants:
            mistake = by_hand(*args, **kwargs)
            if not same(mistake, expected) and same(got, mistake):
                candidates.append((kwargs, message))
        if len(candidates) <= 1:
            return candidates[0][1] if candidates else None
        answers = []
        for other in cases:
            try:
                answers.append((other, compare(fn(*_clone_args(other)), reference(*_clone_args(other)))[1]))
            except Exception:  # the learner's function fails elsewhere: judge by the cases it answers
                continue
        for kwargs, message in candidates:
            if all(answer is not None and same(answer, by_hand(*other, **kwargs)) for other, answer in answers):
                return message
        return candidates[0][1]
    return diagnose


# --- 1. prefix caching's hash chain -----------------------------------------------------------------------------------

VOCAB = 1000
PREFIX_SEEDS = (0, 1, 2)
PREFIX_SHAPES = ((13, 4), (40, 4), (64, 16), (97, 8))  # (prompt tokens, block_size)


def _random_tokens(rng: np.random.Generator, n: int) -> list[int]:
    return [int(t) for t in rng.integers(0, VOCAB, n)]


def _cache_of(prompts: Sequence[Sequence[int]], block_size: int, rng: np.random.Generator) -> dict[bytes, int]:
    """The hash -> block table after serving `prompts`: every full block of each, a shared prefix stored once, each
    new block at a physical id drawn at random (ids are not positions)."""
    ids = iter(int(b) for b in rng.permutation(200))
    cached: dict[bytes, int] = {}
    for tokens in prompts:
        for h in prefix_hashes(list(tokens), block_size):
            if h not in cached:
                cached[h] = next(ids)
    return cached


def prefix_cache_hit_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (tokens, block_size, cached)) of check_prefix_cache_hit."""
    labels, cases = [], []
    for seed in PREFIX_SEEDS:
        for n, bs in PREFIX_SHAPES:
            rng = np.random.default_rng(100 * seed + n)
            tokens = _random_tokens(rng, n)
            # three earlier prompts share 0..n tokens with this one (in seed 1 one of them contains it whole)
            shares = sorted({int(rng.integers(0, n // 2)), int(rng.integers(n // 2, n)),
                             n if seed == 1 else int(rng.integers(0, n + 1))})
            others = [tokens[:m] + _random_tokens(rng, int(rng.integers(bs, 3 * bs))) for m in shares]
            labels.append(f"seed {seed}, {n} tokens, block_size {bs}, cached: earlier prompts sharing "
                          f"{', '.join(map(str, shares))} tokens with it")
            cases.append((tokens, bs, _cache_of(others, bs, rng)))
    rng = np.random.default_rng(7)
    whole = _random_tokens(rng, 32)
    labels.append("edge case: 32 tokens, block_size 8 (a multiple), every block cached; the last token must still be "
                  "computed")
    cases.append((whole, 8, _cache_of([whole], 8, rng)))
    gap = _random_tokens(rng, 21)
    cached = _cache_of([gap], 4, rng)
    del cached[prefix_hashes(gap, 4)[1]]
    labels.append("edge case: 21 tokens, block_size 4, blocks 0, 2, 3 and 4 cached but not block 1 (the chain "
                  "stops at the gap)")
    cases.append((gap, 4, cached))
    moved = _random_tokens(rng, 14)
    labels.append("edge case: 14 tokens, block_size 4; another prompt began with this prompt's block 1 (the same "
                  "tokens after another prefix)")
    cases.append((moved, 4, _cache_of([moved[:4] + _random_tokens(rng, 5), moved[4:8] + moved[:6]], 4, rng)))
    one = _random_tokens(rng, 5)
    labels.append("edge case: 5 tokens, block_size 4 (one block and one token), that block cached")
    cases.append((one, 4, _cache_of([one[:4] + _random_tokens(rng, 3)], 4, rng)))
    short = _random_tokens(rng, 3)
    labels.append("edge case: 3 tokens, block_size 4 (no full block)")
    cases.append((short, 4, _cache_of([short + _random_tokens(rng, 9)], 4, rng)))
    empty = _random_tokens(rng, 19)
    labels.append("edge case: 19 tokens, block_size 4, an empty cache")
    cases.append((empty, 4, {}))
    return labels, cases


def reference_prefix_cache_hit(tokens: list[int], block_size: int, cached: dict[bytes, int]) -> list[int]:
    """Engine._admit_prefix on a dict: the usable blocks' chain of hashes (prefix_hashes), then BlockPool.lookup's
    walk, which stops at the first hash that is not cached."""
    usable = (len(tokens) - 1) // block_size
    found = []
    for h in prefix_hashes(tokens[:usable * block_size], block_size):
        block = cached.get(h)
        if block is None:
            break
        found.append(block)
    return found


def _prefix_by_hand(tokens: list[int], block_size: int, cached: dict[bytes, int], *, chain: bool | str = True,
                    whole_prompt: bool = False, skip: bool = False, out: str = "ids") -> list:
    """The hit as a learner writes it, with one choice passed in (chain: True, False for each block hashed from ROOT,
    "whole_prefix" for tokens[0:(i+1)B] hashed from ROOT)."""
    usable = (len(tokens) if whole_prompt else len(tokens) - 1) // block_size
    found, parent = [], ROOT
    for i in range(usable):
        if chain == "whole_prefix":
            h = block_hash(ROOT, tokens[:(i + 1) * block_size])
        else:
            h = block_hash(parent if chain else ROOT, tokens[i * block_size:(i + 1) * block_size])
        parent = h
        if h not in cached:
            if skip:
                continue
            break
        found.append({"ids": cached[h], "positions": i, "hashes": h}[out])
    return found


_PREFIX_MESSAGES = {
    "chain": ("your hashes after block 0 are not the chain's: hash each block's own tokens on the previous block's "
              "hash (not on ROOT), h_i = block_hash(h_{i-1}, tokens[i*B:(i+1)*B]) with h_{-1} = ROOT. The same "
              "tokens after another prefix have other keys and values, and the chain is what tells them apart."),
    "whole": ("you use every full block: when len(tokens) is a multiple of block_size the last block must still be "
              "computed (its last token's logits give the first output token). Use at most "
              "(len(tokens) - 1) // block_size blocks."),
    "skip": ("you go on after a block that is not cached: the hit is a prefix. Stop at the first hash that is "
             "missing; a later block's keys and values were computed after the missing one's tokens."),
    "positions": "you return the blocks' positions 0, 1, 2, ...: return their physical ids, cached[h].",
    "hashes": "you return the hashes: return the physical block ids they name, cached[h].",
}
_PREFIX_VARIANTS = tuple((kwargs, _PREFIX_MESSAGES[key]) for kwargs, key in (
    (dict(chain=False), "chain"), (dict(chain="whole_prefix"), "chain"), (dict(whole_prompt=True), "whole"),
    (dict(skip=True), "skip"), (dict(out="positions"), "positions"), (dict(out="hashes"), "hashes")))
_PREFIX_HINT = ("usable = (len(tokens) - 1) // B blocks; for i in range(usable): h = block_hash(h_prev, "
                "tokens[i*B:(i+1)*B]) (h_prev = ROOT for block 0); stop at the first h not in cached; else collect "
                "cached[h].")


def _compare_block_ids(got: Any, expected: list[int]) -> tuple[str, Any]:
    if not isinstance(got, (list, tuple)):
        return f"expected a list of block ids, got {type(got).__name__} {_short(got)}.", None
    got = list(got)
    if len(got) == len(expected) and all(_is_int(g) and int(g) == e for g, e in zip(got, expected)):
        return "", got
    return f"expected the block ids {expected}, got {_short(got)}.", got


def check_prefix_cache_hit(fn) -> bool:
    """fn(tokens, block_size, cached) -> the physical block ids of the longest cached prefix of the prompt.

    tokens is a list of token ids, cached a dict {block hash (bytes): physical block id (int)}: the engine's table
    of the full blocks it has computed. A full block is named by a hash of its tokens and of every token before
    it, chained on the previous block's hash:

        h_0 = block_hash(ROOT, tokens[0:B]),   h_i = block_hash(h_{i-1}, tokens[i*B:(i+1)*B])

    (block_hash and ROOT from course_lib.serving.blocks; B = block_size; a partial last block has no hash).
    Return [cached[h_0], cached[h_1], ...] for the longest run of blocks from the start whose hashes are all in
    cached, stopping at the first that is not. Never the whole prompt: the last token must be computed to get the
    logits of the first output token, so use at most (len(tokens) - 1) // B blocks.

    Checked against the engine's own logic (Engine._admit_prefix) on random prompts of 13, 40, 64 and 97 tokens
    with block_size 4, 8 or 16, seeds 0, 1, 2, each with a cache built from earlier prompts that share prefixes of
    various lengths with it; then a prompt that is a multiple of block_size and fully cached, a gap in the cached
    chain, the same tokens cached after another prefix, one block and one token, no full block, an empty cache.
    The list must be equal.
    """
    labels, cases = prefix_cache_hit_cases()
    diagnose = _diagnosis(fn, cases, reference_prefix_cache_hit, _compare_block_ids, _prefix_by_hand,
                          _PREFIX_VARIANTS, lambda a, b: list(a) == list(b))
    return check_against("prefix_cache_hit", fn, cases, reference_prefix_cache_hit, _compare_block_ids,
                          labels=labels, hint=_PREFIX_HINT, diagnose=diagnose)


# --- 2. speculative decoding's acceptance rule ------------------------------------------------------------------------

SPEC_SEEDS = (0, 1, 2)
SPEC_SHAPES = ((1, 5), (3, 5), (6, 5), (1, 50), (3, 50), (6, 50))  # (k draft tokens, vocabulary V)
SPEC_MIX = {0: 0.25, 1: 0.5, 2: 0.85}  # how far the draft q is from the target p, by seed
SPEC_ATOL = SPEC_RTOL = 1e-9


def _simplex(rows: int, V: int, g: torch.Generator) -> torch.Tensor:
    """Random distributions (rows, V), float64: Dirichlet(1/2)-like, normalised squared exponentials."""
    e = (-torch.rand(rows, V, generator=g, dtype=torch.float64).clamp_min(1e-12).log()) ** 2
    return e / e.sum(-1, keepdim=True)


def _spec_case(k: int, V: int, g: torch.Generator, mix: float) -> tuple:
    """(draft_tokens, q, p, u): a draft q that mixes the target p with noise, tokens drawn from q, u uniform."""
    p = _simplex(k + 1, V, g)
    q = (1 - mix) * p[:k] + mix * _simplex(k, V, g)
    q = q / q.sum(-1, keepdim=True)
    d = torch.multinomial(q, 1, generator=g).squeeze(1)
    u = torch.rand(k, generator=g, dtype=torch.float64)
    return d, q, p, u


def speculative_accept_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (draft_tokens, q, p, u)) of check_speculative_accept."""
    labels, cases = [], []
    for seed in SPEC_SEEDS:
        for k, V in SPEC_SHAPES:
            g = torch.Generator().manual_seed(1000 * seed + 10 * k + V)
            labels.append(f"seed {seed}, k {k}, V {V}")
            cases.append(_spec_case(k, V, g, SPEC_MIX[seed]))
    g = torch.Generator().manual_seed(99)
    d, q, p, u = _spec_case(3, 5, g, 0.5)
    labels.append("edge case: q = p (every draft token is accepted: the bonus token comes from p[k])")
    cases.append((d, p[:3].clone(), p, u))
    d, q, p, u = _spec_case(3, 5, g, 0.5)
    p[0] = q[0]                                   # row 0: p = q, accepted
    p[1, d[1]] = 0.0                              # row 1: the target never produces d_1
    p[1] /= p[1].sum()
    labels.append("edge case: p[1, d_1] = 0 (draft token 1 is rejected whatever u)")
    cases.append((d, q, p, u))
    d, q, p, _ = _spec_case(4, 5, g, 0.5)
    labels.append("edge case: u = 0 (every draft token the target gives any probability is accepted)")
    cases.append((d, q, p, torch.zeros(4, dtype=torch.float64)))
    d, q, p, _ = _spec_case(4, 5, g, 0.5)
    p[2, d[2]] = 0.0
    p[2] /= p[2].sum()
    labels.append("edge case: u = 0 and p[2, d_2] = 0 (0 < 0 is false: rejected)")
    cases.append((d, q, p, torch.zeros(4, dtype=torch.float64)))
    d, q, p, _ = _spec_case(6, 50, g, 0.85)
    onehot = torch.nn.functional.one_hot(d, 50).double()
    p = torch.cat([0.5 * q + 0.5 * onehot, p[6:]])  # the target likes every draft token more than the draft did
    labels.append("edge case: p(d_i) > q(d_i) at every position, u close to 1 (all accepted)")
    cases.append((d, q, p, torch.full((6,), 0.999, dtype=torch.float64)))
    return labels, cases


def reference_speculative_accept(draft_tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor,
                                 u: torch.Tensor) -> tuple[int, torch.Tensor]:
    return accept_step(draft_tokens, q, p, u)


def _accept_by_hand(draft_tokens: torch.Tensor, q: torch.Tensor, p: torch.Tensor, u: torch.Tensor, *,
                    ratio: str = "p/q", compare: str = "<", on_reject: str = "residual", bonus: str = "k",
                    count: int = 0, rows: int = 0) -> tuple[int, torch.Tensor]:
    """The rule as a learner writes it, with one choice passed in (rows=1: p's row i + 1 used for draft i)."""
    k = len(draft_tokens)
    for i in range(k):
        t, pi, qi = int(draft_tokens[i]), p[i + rows], q[i]
        x = {"p/q": pi[t] / qi[t], "q/p": qi[t] / pi[t], "p": pi[t]}[ratio]
        accept = {"<": u[i] < x, "<=": u[i] <= x, ">": u[i] > x}[compare]
        if accept:
            continue
        residual = {"residual": (pi - qi).clamp_min(0), "unclamped": pi - qi, "q-p": (qi - pi).clamp_min(0),
                    "p": pi, "unnormalised": (pi - qi).clamp_min(0)}[on_reject]
        if on_reject not in ("p", "unnormalised"):
            residual = residual / residual.sum()
        return i + count, residual
    return k, p[k - 1] if bonus == "k-1" else p[k]


_SPEC_VARIANTS = (
    (dict(ratio="q/p"), ("you accept when u < q(d) / p(d): the ratio is upside down. Accept draft token d_i when "
                         "u_i < p_i(d_i) / q_i(d_i), target over draft: a token the target likes at least as much "
                         "as the draft did is always kept.")),
    (dict(compare=">"), ("you accept when u is above the ratio: accept when u_i < p_i(d_i) / q_i(d_i), which "
                         "happens with probability min(1, p/q).")),
    (dict(ratio="p"), ("you compare u with p(d) alone: the acceptance probability is min(1, p_i(d_i) / q_i(d_i)); "
                       "d_i was already drawn with probability q_i(d_i), so divide by it.")),
    (dict(rows=1), ("you read the target's row i + 1 for draft token i: row i of p, like row i of q, is the "
                    "distribution at the position where d_i was drafted. p's extra row k is only for the bonus "
                    "token.")),
    (dict(on_reject="p"), ("at a rejection you return p_n, the target's distribution: the next token must come from "
                           "the residual norm(max(0, p_n - q_n)). Drawing from p_n would produce the tokens the draft "
                           "proposes too often (already accepted with probability min(1, p/q)) a second time.")),
    (dict(on_reject="unnormalised"), "your residual max(0, p_n - q_n) is not normalised: divide it by its sum."),
    (dict(on_reject="unclamped"), ("your residual has negative entries: clamp p_n - q_n at 0 before normalising, "
                                   "norm(max(0, p_n - q_n)).")),
    (dict(on_reject="q-p"), ("your residual is max(0, q - p): it is norm(max(0, p_n - q_n)), the probability the "
                             "target wants beyond what the draft proposed.")),
    (dict(bonus="k-1"), ("when all k draft tokens are accepted you return p[k-1]: p has k + 1 rows, and the bonus "
                         "token comes from the last one, p[k], the target's distribution after d_k.")),
    (dict(count=1), ("your n counts the rejected token too: n is the number of accepted draft tokens, i.e. the index "
                     "of the first rejected one (0 when d_0 is rejected).")),
    (dict(compare="<="), ("you accept when u <= p/q: with u = 0 that keeps a token the target gives probability 0. "
                          "Use a strict <, written u_i * q_i(d_i) < p_i(d_i) to avoid dividing.")),
)
_SPEC_HINT = ("for i in range(k): accept d_i while u_i * q[i, d_i] < p[i, d_i] (u_i < p/q); at the first rejection "
              "return (i, r / r.sum()) with r = (p[i] - q[i]).clamp(min=0); if all k are accepted return (k, p[k]).")


def _compare_accept(got: Any, expected: tuple[int, torch.Tensor]) -> tuple[str, Any]:
    n_exp, dist_exp = expected
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a tuple (n, distribution), got {type(got).__name__} {_short(got)}.", None
    n, dist = got
    if not _is_int(n):
        return f"expected n, the number of accepted draft tokens, as an int; got {type(n).__name__} {_short(n)}.", None
    n = int(n)
    problem, comparable = _tensor_mismatch(dist, dist_exp, SPEC_ATOL, SPEC_RTOL, torch)
    if not comparable:
        return f"the distribution: {problem}", None
    if n != n_exp:
        return f"expected n = {n_exp} accepted draft tokens, got n = {n}.", (n, dist)
    if problem:
        return f"n = {n} is right, but the distribution differs: {problem}", (n, dist)
    return "", (n, dist)


def _same_accept(a: tuple[int, torch.Tensor], b: tuple[int, torch.Tensor]) -> bool:
    return a[0] == b[0] and torch.allclose(a[1].detach().to("cpu", torch.float64), b[1].double(), rtol=1e-6,
                                           atol=1e-9, equal_nan=True)


def _diagnose_accept(fn) -> Callable[[tuple, Any], str | None]:
    by_variant = _diagnosis(fn, speculative_accept_cases()[1], reference_speculative_accept, _compare_accept,
                            _accept_by_hand, _SPEC_VARIANTS, _same_accept)

    def diagnose(args: tuple, got: tuple[int, torch.Tensor]) -> str | None:
        message = by_variant(args, got)
        if message is not None:
            return message
        n, dist = got
        expected = reference_speculative_accept(*args)
        if n == expected[0] and torch.allclose(dist.detach().to("cpu", torch.float64), expected[1], rtol=1e-5,
                                               atol=1e-7):
            return ("your distribution is right to about 7 digits only: it was computed in float32. Keep q and p "
                    "in float64 (the check's tolerance is 1e-9).")
        return None
    return diagnose


def check_speculative_accept(fn) -> bool:
    """fn(draft_tokens, q, p, u) -> (n, dist): speculative decoding's acceptance rule with its random numbers given.

    draft_tokens (k,) long: the draft's tokens d_0..d_{k-1}; q (k, V) float64: the draft's distribution at each
    of them (d_i was drawn from q[i]); p (k + 1, V) float64: the target's distributions at the same positions and
    one more (after d_{k-1}); u (k,) float64: uniform numbers in [0, 1).

    For i = 0, 1, ...: accept d_i when u_i < p[i, d_i] / q[i, d_i] (probability min(1, p/q); write it
    u_i * q[i, d_i] < p[i, d_i] to avoid dividing). At the first rejection stop: return (i, the residual
    norm(max(0, p[i] - q[i]))), the distribution the target's replacement token is drawn from. If all k are
    accepted, return (k, p[k]): the bonus token comes from the target's last row.

    Checked against course_lib.serving.speculative.accept_step on random distributions with k in {1, 3, 6} and
    V in {5, 50}, seeds 0, 1, 2 (drafts close to and far from the target); then q = p, a draft token the target
    gives probability 0, u = 0 (with and without such a token), and a target that likes every draft token more
    than the draft did. n must be equal, the distribution (V,) within 1e-9 + 1e-9 * |expected|.
    """
    labels, cases = speculative_accept_cases()
    return check_against("speculative_accept", fn, cases, reference_speculative_accept, _compare_accept,
                          labels=labels, hint=_SPEC_HINT, diagnose=_diagnose_accept(fn))


# --- 3. admission with chunked prefill --------------------------------------------------------------------------------

ADMIT_SEEDS = (0, 1, 2)


def admit_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (waiting, free_blocks, block_size, token_budget, max_seqs, running)) of check_admit."""
    cases = []
    for seed in ADMIT_SEEDS:
        rng = np.random.default_rng(seed)
        for block_size in (4, 16):
            for _ in range(2):
                # budgets between a third of the queue's demand and all of it, so that each limit binds somewhere
                waiting = [int(x) for x in rng.integers(1, 120, int(rng.integers(3, 9)))]
                blocks = sum(-(-n // block_size) for n in waiting)
                running = int(rng.integers(0, 3))
                cases.append((waiting, int(rng.integers(blocks // 3, blocks + 2)), block_size,
                              int(rng.integers(sum(waiting) // 3, sum(waiting) + 20)),
                              running + int(rng.integers(1, len(waiting) + 2)), running))
    labels = [f"seed {seed}, case {i}" for seed in ADMIT_SEEDS for i in range(4)]
    edges = [
        ("edge case: the budget ends inside request 2's prompt (a chunk)", ([7, 9, 12, 5], 64, 4, 20, 8, 0)),
        ("edge case: request 1 needs 4 blocks and 3 are free; request 2 would fit (first come, first served)",
         ([9, 13, 3], 6, 4, 256, 8, 0)),
        ("edge case: request 1's chunk needs 2 blocks, its whole prompt 8; 7 are free", ([4, 29], 8, 4, 12, 8, 0)),
        ("edge case: 2 running, max_seqs 4", ([3, 3, 3, 3], 50, 4, 100, 4, 2)),
        ("edge case: as many running as max_seqs", ([5, 5], 50, 4, 100, 3, 3)),
        ("edge case: the running requests used the whole budget", ([5, 5], 50, 4, 0, 8, 2)),
        ("edge case: the blocks fit exactly", ([8, 8, 1], 4, 4, 100, 8, 0)),
        ("edge case: the first prompt is longer than the budget", ([100, 5], 100, 16, 32, 8, 0)),
        ("edge case: no waiting request", ([], 10, 4, 100, 8, 0)),
    ]
    for label, args in edges:
        labels.append(label)
        cases.append(args)
    return [f"{label}: {_admit_args(args)}" for label, args in zip(labels, cases)], cases


def _admit_args(args: tuple) -> str:
    names = ("waiting", "free_blocks", "block_size", "token_budget", "max_seqs", "running")
    return ", ".join(f"{name}={value!r}" for name, value in zip(names, args))


def reference_admit(waiting: list[int], free_blocks: int, block_size: int, token_budget: int, max_seqs: int,
                    running: int) -> list[tuple[int, int]]:
    return admission_plan(waiting, free_blocks, block_size, token_budget, max_seqs, running)


def _admit_by_hand(waiting, free_blocks, block_size, token_budget, max_seqs, running, *, skip=False,
                   blocks_of="chunk", seqs="running", chunk="min", take_budget=True, take_blocks=True,
                   strict_fit=False, zero=False, rounding="ceil") -> list[tuple[int, int]]:
    """The admission loop as a learner writes it, with one choice passed in."""
    plan = []
    for i, length in enumerate(waiting):
        if token_budget < 0 or (token_budget == 0 and not zero):
            break
        if seqs == "running" and running + len(plan) >= max_seqs:
            break
        if seqs == "admitted" and len(plan) >= max_seqs:
            break
        if chunk == "refuse" and length > token_budget:  # no chunking: a prompt longer than the budget waits
            if skip:
                continue
            break
        n = min(length, token_budget) if chunk == "min" else length
        tokens = n if blocks_of == "chunk" else length
        need = -(-tokens // block_size) if rounding == "ceil" else tokens // block_size
        if need > free_blocks or (strict_fit and need == free_blocks):
            if skip:
                continue
            break
        plan.append((i, n))
        if take_blocks:
            free_blocks -= need
        if take_budget:
            token_budget -= n
    return plan


_ADMIT_VARIANTS = (
    (dict(skip=True), ("a request that does not fit stops the walk: first come, first served. You skipped it and "
                       "admitted a later one, which can starve a long prompt forever.")),
    (dict(blocks_of="prompt"), ("you reserve blocks for the whole prompt: this step computes only n = min(prompt "
                                "length, budget) tokens and needs ceil(n / block_size) blocks; the rest come in "
                                "later steps.")),
    (dict(seqs=None), "you ignore max_seqs: admit only while running + admitted < max_seqs."),
    (dict(seqs="admitted"), ("you forgot the requests already running: admit only while running + admitted < "
                             "max_seqs.")),
    (dict(chunk="refuse"), ("a prompt longer than the budget left is not refused: it is admitted with a chunk, "
                            "n = min(prompt length, budget left), and prefilled over several steps.")),
    (dict(chunk="refuse", skip=True), ("a prompt longer than the budget left is not skipped: it is admitted with a "
                                       "chunk, n = min(prompt length, budget left).")),
    (dict(chunk="whole"), ("n is at most the budget left: a longer prompt is admitted with a chunk, "
                           "n = min(prompt length, budget left), and prefilled over several steps.")),
    (dict(take_budget=False), "each admitted request's n comes off the token budget: token_budget -= n."),
    (dict(take_blocks=False), "each admitted request's blocks come off the free blocks: free_blocks -= ceil(n / B)."),
    (dict(strict_fit=True), "a request fits when it needs at most the free blocks: need <= free_blocks, not <."),
    (dict(rounding="floor"), ("you round the blocks down: a partly filled block is a whole block, "
                              "ceil(n / block_size) = -(-n // block_size).")),
    (dict(zero=True), "stop when the budget is spent: a request admitted with n = 0 tokens does nothing."),
)
_ADMIT_HINT = ("for i, length in enumerate(waiting): stop when the budget is 0 or running + admitted == max_seqs; "
               "n = min(length, budget); need = ceil(n / block_size); stop if need > free_blocks; else record "
               "(i, n) and take n from the budget and need from the free blocks.")


def _compare_plan(got: Any, expected: list[tuple[int, int]]) -> tuple[str, Any]:
    if not isinstance(got, (list, tuple)) or not all(isinstance(x, (list, tuple)) and len(x) == 2 for x in got):
        return f"expected a list of (index, n) pairs, got {_short(got)}.", None
    if not all(_is_int(a) and _is_int(b) for a, b in got):
        return f"expected a list of (index, n) pairs of ints, got {_short(got)}.", None
    plan = [(int(a), int(b)) for a, b in got]
    if plan == expected:
        return "", plan
    return f"expected {expected}, got {plan}.", plan


def check_admit(fn) -> bool:
    """fn(waiting, free_blocks, block_size, token_budget, max_seqs, running) -> [(index, n), ...]: which waiting
    requests one scheduling step admits, and how many prompt tokens each computes now (chunked prefill).

    waiting: the prompt lengths of the waiting requests, in arrival order (nothing of them cached or computed yet);
    free_blocks, token_budget: what the running requests left this step; running: how many requests run already.
    Walk the queue in order and admit request i with n = min(its prompt length, budget left) new tokens when

    * the budget left is > 0,
    * running + the requests admitted so far < max_seqs,
    * ceil(n / block_size) blocks are free (then take them, and take n from the budget).

    Stop at the first request that does not fit: first come, first served, nobody skips ahead. Return the
    (index in waiting, n) pairs of the admitted requests, in order.

    Checked against course_lib.serving.teach.admission_plan (the admission loop of Engine.schedule, tested against
    the engine) on random queues with block_size 4 and 16, seeds 0, 1, 2; then a budget that ends inside a
    prompt, a request that does not fit before one that would, a chunk that fits where its whole prompt would not,
    max_seqs with requests running, a spent budget, an exact fit, no waiting request. The list must be equal.
    """
    labels, cases = admit_cases()
    diagnose = _diagnosis(fn, cases, reference_admit, _compare_plan, _admit_by_hand, _ADMIT_VARIANTS,
                          lambda a, b: list(a) == list(b))
    return check_against("admit", fn, cases, reference_admit, _compare_plan, labels=labels, hint=_ADMIT_HINT,
                          diagnose=diagnose)


EXERCISES = {"prefix_cache_hit": check_prefix_cache_hit, "speculative_accept": check_speculative_accept,
             "admit": check_admit}
