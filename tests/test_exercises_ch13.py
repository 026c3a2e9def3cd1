"""Chapter 13's exercises: plausible wrong solutions fail with a hint that names their mistake, correct variants of
the solutions pass, garbage never makes a check raise, the cases cover what they claim, and the prefix-cache
reference is what a real Engine takes from its cache.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails.)
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from course_lib.exercises import ch13, load_solutions
from course_lib.serving.blocks import ROOT, block_hash, prefix_hashes
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch13")


# --- the solutions and the stub ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n_cases", [("prefix_cache_hit", 18), ("speculative_accept", 23), ("admit", 21)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    check = ch13.EXERCISES[name]
    ok, out = run(check, getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out

    def stub(*args):
        raise NotImplementedError

    ok, out = run(check, stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


# --- 1. prefix_cache_hit: wrong solutions -----------------------------------------------------------------------------

def _blocks(tokens, B, n):
    return [tokens[i * B:(i + 1) * B] for i in range(n)]


def pc_no_chain(tokens, B, cached):
    hit = []
    for block in _blocks(tokens, B, (len(tokens) - 1) // B):
        h = block_hash(ROOT, block)                          # each block on its own
        if h not in cached:
            break
        hit.append(cached[h])
    return hit


def pc_whole_prefix(tokens, B, cached):
    hit = []
    for i in range((len(tokens) - 1) // B):
        h = block_hash(ROOT, tokens[:(i + 1) * B])           # "the hash of every token before it", from ROOT
        if h not in cached:
            break
        hit.append(cached[h])
    return hit


def pc_all_full_blocks(tokens, B, cached):
    hit, parent = [], ROOT
    for block in _blocks(tokens, B, len(tokens) // B):       # the last block too when len % B == 0
        parent = block_hash(parent, block)
        if parent not in cached:
            break
        hit.append(cached[parent])
    return hit


def pc_skip_missing(tokens, B, cached):
    hashes = prefix_hashes(tokens[:(len(tokens) - 1) // B * B], B)
    return [cached[h] for h in hashes if h in cached]        # goes on after a gap


def pc_positions(tokens, B, cached):
    return list(range(len(SOL.prefix_cache_hit(tokens, B, cached))))


def pc_hashes(tokens, B, cached):
    hashes = prefix_hashes(tokens[:(len(tokens) - 1) // B * B], B)
    return hashes[:len(SOL.prefix_cache_hit(tokens, B, cached))]


def pc_count(tokens, B, cached):
    return len(SOL.prefix_cache_hit(tokens, B, cached))     # the number of blocks, not their ids


PREFIX_MISTAKES = [
    (pc_no_chain, "hash each block's own tokens on the previous block's hash"),
    (pc_whole_prefix, "hash each block's own tokens on the previous block's hash"),
    (pc_all_full_blocks, "(len(tokens) - 1) // block_size"),
    (pc_skip_missing, "the hit is a prefix"),
    (pc_positions, "physical ids"),
    (pc_hashes, "return the physical block ids"),
    (pc_count, "expected a list of block ids, got int"),
]


# --- 2. speculative_accept: wrong solutions ---------------------------------------------------------------------------

def _accept(d, q, p, u, *, accept, on_reject, bonus=lambda p, k: p[k], n_of=lambda i: i):
    """A loop as a learner writes it, with the acceptance test, the rejection's distribution and the bonus passed in."""
    for i in range(len(d)):
        t = int(d[i])
        if accept(u[i], q[i, t], p[i, t]):
            continue
        return n_of(i), on_reject(p[i], q[i])
    return len(d), bonus(p, len(d))


def _residual(pi, qi):
    r = torch.clamp(pi - qi, min=0)
    return r / r.sum()


def sa_ratio_inverted(d, q, p, u):
    return _accept(d, q, p, u, accept=lambda u, qd, pd: u < qd / pd, on_reject=_residual)


def sa_above_ratio(d, q, p, u):
    return _accept(d, q, p, u, accept=lambda u, qd, pd: u > pd / qd, on_reject=_residual)


def sa_p_alone(d, q, p, u):
    return _accept(d, q, p, u, accept=lambda u, qd, pd: u < pd, on_reject=_residual)


def sa_non_strict(d, q, p, u):
    return _accept(d, q, p, u, accept=lambda u, qd, pd: u <= pd / qd, on_reject=_residual)


def sa_target_at_rejection(d, q, p, u):
    return _accept(d, q, p, u, accept=lambda u, qd, pd: u * qd < pd, on_reject=lambda pi, qi: pi)


def sa_unnormalised(d, q, p, u):
    return _accept(d, q, p, u, accept=lambda u, qd, pd: u * qd < pd, on_reject=lambda pi, qi: (pi - qi).clamp(min=0))


def sa_unclamped(d, q, p, u):
    return _accept(d, q, p, u, accept=lambda u, qd, pd: u * qd < pd,
                   on_reject=lambda pi, qi: (pi - qi) / (pi - qi).sum())


def sa_swapped_residual(d, q, p, u):
    return _accept(d, q, p, u, accept=lambda u, qd, pd: u * qd < pd, on_reject=lambda pi, qi: _residual(qi, pi))


def sa_no_bonus_row(d, q, p, u):
    return _accept(d, q, p, u, accept=lambda u, qd, pd: u * qd < pd, on_reject=_residual,
                   bonus=lambda p, k: p[k - 1])


def sa_counts_the_rejected(d, q, p, u):
    return _accept(d, q, p, u, accept=lambda u, qd, pd: u * qd < pd, on_reject=_residual, n_of=lambda i: i + 1)


def sa_rows_shifted(d, q, p, u):
    for i in range(len(d)):
        t = int(d[i])
        if u[i] * q[i, t] < p[i + 1, t]:                     # p's row i + 1 for draft token i
            continue
        return i, _residual(p[i + 1], q[i])
    return len(d), p[len(d)]


def sa_float32(d, q, p, u):
    n, dist = SOL.speculative_accept(d, q.float(), p.float(), u.float())
    return n, dist


def sa_accepted_tokens(d, q, p, u):
    n, dist = SOL.speculative_accept(d, q, p, u)
    return d[:n], dist                                       # the accepted tokens instead of their number


SPEC_MISTAKES = [
    (sa_ratio_inverted, "the ratio is upside down"),
    (sa_above_ratio, "above the ratio"),
    (sa_p_alone, "with p(d) alone"),
    (sa_non_strict, "strict <"),
    (sa_target_at_rejection, "the residual norm(max(0, p_n - q_n))"),
    (sa_unnormalised, "not normalised"),
    (sa_unclamped, "negative entries"),
    (sa_swapped_residual, "max(0, q - p)"),
    (sa_no_bonus_row, "p[k-1]"),
    (sa_counts_the_rejected, "counts the rejected token"),
    (sa_rows_shifted, "row i + 1"),
    (sa_float32, "float64"),
    (sa_accepted_tokens, "as an int"),
]


# --- 3. admit: wrong solutions ----------------------------------------------------------------------------------------

def _admit(waiting, free, B, budget, max_seqs, running, *, on_miss="break", blocks=lambda n, length, B: -(-n // B),
           full=lambda running, plan, max_seqs: running + len(plan) >= max_seqs, chunk=True):
    plan = []
    for i, length in enumerate(waiting):
        if budget <= 0 or full(running, plan, max_seqs):
            break
        if not chunk and length > budget:
            break
        n = min(length, budget)
        need = blocks(n, length, B)
        if need > free:
            if on_miss == "continue":
                continue
            break
        plan.append((i, n))
        free -= need
        budget -= n
    return plan


def ad_skip_ahead(*args):
    return _admit(*args, on_miss="continue")


def ad_blocks_of_the_prompt(*args):
    return _admit(*args, blocks=lambda n, length, B: -(-length // B))


def ad_no_max_seqs(*args):
    return _admit(*args, full=lambda running, plan, max_seqs: False)


def ad_running_forgotten(*args):
    return _admit(*args, full=lambda running, plan, max_seqs: len(plan) >= max_seqs)


def ad_no_chunks(*args):
    return _admit(*args, chunk=False)


def ad_floor_blocks(*args):
    return _admit(*args, blocks=lambda n, length, B: n // B)


def ad_strict_fit(waiting, free, B, budget, max_seqs, running):
    return _admit(waiting, free - 1, B, budget, max_seqs, running)   # need < free


def ad_budget_kept(waiting, free, B, budget, max_seqs, running):
    plan = []
    for i, length in enumerate(waiting):
        if budget <= 0 or running + len(plan) >= max_seqs:
            break
        n = min(length, budget)
        if -(-n // B) > free:
            break
        plan.append((i, n))
        free -= -(-n // B)                                   # the budget is never reduced
    return plan


ADMIT_MISTAKES = [
    (ad_skip_ahead, "first come, first served"),
    (ad_blocks_of_the_prompt, "reserve blocks for the whole prompt"),
    (ad_no_max_seqs, "you ignore max_seqs"),
    (ad_running_forgotten, "already running"),
    (ad_no_chunks, "not refused"),
    (ad_floor_blocks, "round the blocks down"),
    (ad_strict_fit, "need <= free_blocks"),
    (ad_budget_kept, "token_budget -= n"),
    (lambda *a: [list(x) + [0] for x in SOL.admit(*a)], "(index, n) pairs"),
]


MISTAKES = [(name, wrong, named) for name, mistakes in (("prefix_cache_hit", PREFIX_MISTAKES),
                                                          ("speculative_accept", SPEC_MISTAKES),
                                                          ("admit", ADMIT_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch13.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and out.count("\n") == 1, out
    assert named in out, out


def test_an_unrecognised_mistake_gets_the_general_hint(capsys):
    ok, out = run(ch13.check_admit, lambda *a: SOL.admit(*a)[::-1], capsys)
    assert not ok and hint_of(out).startswith("for i, length in enumerate(waiting)"), out
    ok, out = run(ch13.check_prefix_cache_hit, lambda t, b, c: SOL.prefix_cache_hit(t, b, c)[::-1], capsys)
    assert not ok and hint_of(out).startswith("usable = (len(tokens) - 1) // B blocks"), out


# --- correct variants pass --------------------------------------------------------------------------------------------

def _pc_from_prefix_hashes(tokens, B, cached):
    usable = (len(tokens) - 1) // B
    hit = []
    for h in prefix_hashes(tokens[:usable * B], B):
        if h not in cached:
            break
        hit.append(cached[h])
    return tuple(np.int64(b) for b in hit)                   # a tuple of numpy ints is fine


def _sa_division(d, q, p, u):
    # the textbook form: accept with probability min(1, p/q); n as a 0-d tensor
    for i in range(len(d)):
        t = d[i]
        if u[i] < torch.clamp(p[i, t] / q[i, t], max=1.0):
            continue
        r = torch.relu(p[i] - q[i])
        return torch.tensor(i), r / torch.sum(r)
    return torch.tensor(len(d)), p[-1].clone()


def _sa_vectorised(d, q, p, u):
    rows = torch.arange(len(d))
    accepted = u * q[rows, d] < p[rows, d]
    rejected = (~accepted).nonzero()
    if len(rejected) == 0:
        return len(d), p[len(d)]
    n = int(rejected[0])
    r = (p[n] - q[n]).clamp(min=0)
    return n, r / r.sum()


def _ad_while_loop(waiting, free, B, budget, max_seqs, running):
    plan, i = [], 0
    while i < len(waiting) and budget and running + len(plan) < max_seqs:
        n = min(waiting[i], budget)
        need = (n + B - 1) // B
        if need > free:
            break
        plan.append([i, n])                                  # lists are fine too
        free, budget, i = free - need, budget - n, i + 1
    return plan


CORRECT = [("prefix_cache_hit", _pc_from_prefix_hashes), ("speculative_accept", _sa_division),
           ("speculative_accept", _sa_vectorised), ("admit", _ad_while_loop)]


@pytest.mark.parametrize("name, variant", CORRECT, ids=[v.__name__ for _, v in CORRECT])
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch13.EXERCISES[name], variant, capsys)
    assert ok is True and out.startswith(f"[ok] {name}: correct"), out


def test_the_learner_cannot_change_the_references_inputs(capsys):
    def list_mutator(tokens, B, cached):
        hit = SOL.prefix_cache_hit(tokens, B, cached)
        cached.clear()
        tokens.clear()
        return hit

    def tensor_mutator(d, q, p, u):
        out = SOL.speculative_accept(d, q, p, u)
        n, dist = out
        result = (n, dist.clone())
        q.zero_(), p.zero_(), u.fill_(0.5)
        return result

    assert run(ch13.check_prefix_cache_hit, list_mutator, capsys)[0]
    assert run(ch13.check_speculative_accept, tensor_mutator, capsys)[0]
    cases = ch13.prefix_cache_hit_cases()[1]
    args = ch13._clone_args(cases[0])
    list_mutator(*args)
    assert cases[0][0] and cases[0][2]                      # the copies were emptied, not the case


# --- garbage never makes a check raise --------------------------------------------------------------------------------

GARBAGE = {
    "none": lambda *a: None,
    "string": lambda *a: "blocks",
    "dict": lambda *a: {0: 1},
    "tensor": lambda *a: torch.zeros(3),
    "nested": lambda *a: [[[1]]],
    "tuple of 3": lambda *a: (1, 2, 3),
    "floats": lambda *a: [0.5, 1.5],
    "bools": lambda *a: [True, (0, 1)],
    "int and list": lambda *a: (1, [0.2, 0.8]),
    "float n": lambda *a: (1.0, torch.zeros(5)),
    "nan": lambda *a: (0, torch.full((5,), float("nan"))),
    "complex": lambda *a: (0, torch.zeros(5, dtype=torch.complex64)),
}


@pytest.mark.parametrize("name", list(ch13.EXERCISES))
@pytest.mark.parametrize("kind", list(GARBAGE))
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch13.EXERCISES[name], GARBAGE[kind], capsys)
    assert ok is False and out.startswith(f"[x] {name}: for "), out


# --- the cases --------------------------------------------------------------------------------------------------------

def test_prefix_cases_cover_seeds_lengths_and_edges():
    labels, cases = ch13.prefix_cache_hit_cases()
    assert {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))} == {0, 1, 2}
    assert {len(t) for t, _, _ in cases[:12]} == {13, 40, 64, 97} and {b for _, b, _ in cases} == {4, 8, 16}
    hits = [len(ch13.reference_prefix_cache_hit(*c)) for c in cases]
    usable = [(len(t) - 1) // b for t, b, _ in cases]
    assert any(1 < h < u for h, u in zip(hits, usable))                     # a partial hit of several blocks
    assert any(h == u and len(t) % b == 0 for h, u, (t, b, _) in zip(hits, usable, cases))  # all but the last
    assert any(h == 0 for h in hits[:12]) or 0 in hits
    # the physical ids are not the positions
    assert any(ch13.reference_prefix_cache_hit(*c) != list(range(h)) for c, h in zip(cases, hits) if h)


@pytest.mark.parametrize("kwargs, _", ch13._PREFIX_VARIANTS, ids=[str(k) for k, _ in ch13._PREFIX_VARIANTS])
def test_every_diagnosed_prefix_mistake_is_visible_in_some_case(kwargs, _):
    cases = ch13.prefix_cache_hit_cases()[1]
    assert all(ch13._prefix_by_hand(*c) == ch13.reference_prefix_cache_hit(*c) for c in cases)
    assert any(ch13._prefix_by_hand(*c, **kwargs) != ch13.reference_prefix_cache_hit(*c) for c in cases)


def test_speculative_cases_cover_shapes_and_every_outcome():
    labels, cases = ch13.speculative_accept_cases()
    assert {(len(d), q.shape[1]) for d, q, _, _ in cases[:18]} == set(ch13.SPEC_SHAPES)
    for d, q, p, u in cases:
        k, V = q.shape
        assert d.dtype == torch.long and p.shape == (k + 1, V) and u.shape == (k,)
        assert q.dtype == p.dtype == u.dtype == torch.float64
        assert torch.allclose(q.sum(1), torch.ones(k, dtype=torch.float64))
        assert torch.allclose(p.sum(1), torch.ones(k + 1, dtype=torch.float64))
        assert bool((q[torch.arange(k), d] > 0).all())        # every draft token could be drafted
        assert bool((u >= 0).all() and (u < 1).all())
    outcomes = [(ch13.reference_speculative_accept(*c)[0], len(c[0])) for c in cases[:18]]
    assert any(n == 0 for n, _ in outcomes) and any(n == k for n, k in outcomes if k > 1)
    assert any(0 < n < k for n, k in outcomes)


@pytest.mark.parametrize("kwargs, _", ch13._SPEC_VARIANTS, ids=[str(k) for k, _ in ch13._SPEC_VARIANTS])
def test_every_diagnosed_speculative_mistake_is_visible_in_some_case(kwargs, _):
    def same(a, b):
        return a[0] == b[0] and torch.allclose(a[1], b[1], rtol=1e-9, atol=1e-9)

    cases = ch13.speculative_accept_cases()[1]
    assert all(same(ch13._accept_by_hand(*c), ch13.reference_speculative_accept(*c)) for c in cases)
    assert any(not same(ch13._accept_by_hand(*c, **kwargs), ch13.reference_speculative_accept(*c)) for c in cases)


def test_admit_cases_cover_every_limit():
    labels, cases = ch13.admit_cases()
    plans = [ch13.reference_admit(*c) for c in cases]
    assert any(len(p) >= 3 for p in plans[:12]) and [] in plans
    assert any(p and p[-1][1] < c[0][p[-1][0]] for p, c in zip(plans[:12], cases))          # a chunk
    assert any(len(p) == c[4] - c[5] and len(p) < len(c[0]) for p, c in zip(plans, cases))  # max_seqs binds


@pytest.mark.parametrize("kwargs, _", ch13._ADMIT_VARIANTS, ids=[str(k) for k, _ in ch13._ADMIT_VARIANTS])
def test_every_diagnosed_admit_mistake_is_visible_in_some_case(kwargs, _):
    cases = ch13.admit_cases()[1]
    assert all(ch13._admit_by_hand(*c) == ch13.reference_admit(*c) for c in cases)
    assert any(ch13._admit_by_hand(*c, **kwargs) != ch13.reference_admit(*c) for c in cases)


# --- the prefix-cache reference is the engine's -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundled():
    from course_lib.lm.models import load_model

    return load_model(device="cpu")


PREFIX_B = 4
PREFIX_BASE = [int(t) for t in np.random.default_rng(0).integers(1, 4000, 24)]
PREFIX_SERVED = [PREFIX_BASE[:10] + [7, 8, 9, 10, 11], PREFIX_BASE[:24], PREFIX_BASE[4:12] + PREFIX_BASE[:6]]
PREFIX_PROMPTS = {  # a prompt, and the blocks it finds in the cache the served prompts left
    "shares 10 tokens: 2 blocks": (PREFIX_BASE[:10] + [1, 2, 3, 4, 5, 6], 2),
    "all 24 tokens (a multiple of 4): 5 of 6 blocks": (PREFIX_BASE[:24], 5),
    "another served prompt's start": (PREFIX_BASE[4:12] + [3, 3, 3], 2),
    "cached tokens after an uncached prefix": ([9, 9, 9, 9] + PREFIX_BASE[4:12] + [3], 0),
    "a gap after block 0": (PREFIX_BASE[:4] + [1, 2, 3, 4] + PREFIX_BASE[8:20], 1),
    "nothing shared": ([5] * 9, 0),
}


@pytest.mark.parametrize("name", list(PREFIX_PROMPTS))
def test_the_prefix_reference_is_what_the_engine_takes_from_its_cache(bundled, name):
    from course_lib.serving import Engine, EngineConfig, SamplingParams

    model, tok = bundled
    engine = Engine(model, tok, EngineConfig(num_blocks=64, block_size=PREFIX_B, max_num_batched_tokens=256,
                                             enable_prefix_caching=True))
    engine.generate(PREFIX_SERVED, SamplingParams(max_tokens=1))
    cached = dict(engine.blocks._cached)                    # hash -> physical block: what the exercise gets
    assert len(cached) == len({h for p in PREFIX_SERVED for h in prefix_hashes(p, PREFIX_B)})
    tokens, hits = PREFIX_PROMPTS[name]
    reference = ch13.reference_prefix_cache_hit(tokens, PREFIX_B, cached)
    rid = engine.add_request(tokens, SamplingParams(max_tokens=1))
    _, admitted, _ = engine.schedule()                      # admission takes the cached blocks (_admit_prefix)
    req = engine.requests[rid]
    assert admitted == [rid]
    assert req.cached_tokens == PREFIX_B * hits and req.blocks[:hits] == reference and len(reference) == hits
    assert SOL.prefix_cache_hit(tokens, PREFIX_B, cached) == reference


# --- speed ------------------------------------------------------------------------------------------------------------

def test_checks_are_fast(capsys):
    # a wrong answer runs the diagnosis too, and an ambiguous one runs the learner's function on every case
    for name, fn in [*((n, getattr(SOL, n)) for n in ch13.EXERCISES), ("speculative_accept", sa_p_alone),
                     ("admit", ad_budget_kept), ("prefix_cache_hit", pc_whole_prefix)]:
        start = time.perf_counter()
        ch13.EXERCISES[name](fn)
        assert time.perf_counter() - start < 2.0, name
    capsys.readouterr()
