"""Chapter 10's tensor exercises (the online softmax, the tiled attention forward and backward): plausible wrong solutions fail
with a hint that names their mistake, correct variants pass, garbage never makes a check raise, the cases cover
what they claim, and the references agree with the rest of course_lib.attention.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails; the warm-up formulas are covered there.)
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import torch

from course_lib.attention.online_softmax import merge_stats, online_stats, row_stats, softmax_blocked
from course_lib.attention.reference import naive_attention
from course_lib.attention.tiled import flash_attention_tiled
from course_lib.exercises import ch10, load_solutions
from exercise_helpers import hint_of, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch10")
NEG_INF = float("-inf")


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("name, n_cases", [("online_softmax_stats", 25), ("tiled_attention", 21),
                                           ("attention_backward", 15)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    check = ch10.EXERCISES[name]
    ok, out = run(check, getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out
    ok, out = run(check, stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


def test_warm_ups_are_declared():
    assert set(ch10.WARM_UPS) == {"online_sum", "score_bytes", "causal_tiles"}
    assert set(ch10.EXERCISES) - set(ch10.WARM_UPS) == {"online_softmax_stats", "tiled_attention",
                                                         "attention_backward"}


# --- 1. online_softmax_stats: wrong solutions, each as a learner writes it -------------------------------------------

def _walk(x, block, update, *, m0=NEG_INF, stop=None):
    """The block loop with the learner's update(m, l, b) -> (m, l)."""
    m = torch.full(x.shape[:-1], m0)
    l = torch.zeros(x.shape[:-1])
    for s in range(0, x.shape[-1] if stop is None else stop(x.shape[-1], block), block):
        m, l = update(m, l, x[..., s:s + block])
    return m, l


def _safe(m_new):
    return torch.where(m_new == NEG_INF, 0.0, m_new)


def st_no_rescale(x, block):
    def update(m, l, b):
        m_new = torch.maximum(m, b.amax(-1))
        return m_new, l + torch.exp(b - _safe(m_new)[:, None]).sum(-1)
    return _walk(x, block, update)


def st_inverted_factor(x, block):
    # exp(m_new - m): with m = -inf at the start, 0 * inf is NaN in every row
    def update(m, l, b):
        m_new = torch.maximum(m, b.amax(-1))
        return m_new, l * torch.exp(m_new - m) + torch.exp(b - _safe(m_new)[:, None]).sum(-1)
    return _walk(x, block, update)


def st_inverted_factor_from_block_0(x, block):
    # starts from the first block's own statistics, then rescales upside down
    b0 = x[:, :block]
    m = b0.amax(-1)
    l = torch.exp(b0 - _safe(m)[:, None]).sum(-1)
    for s in range(block, x.shape[-1], block):
        b = x[:, s:s + block]
        m_new = torch.maximum(m, b.amax(-1))
        l = l * torch.exp(m_new - m) + torch.exp(b - _safe(m_new)[:, None]).sum(-1)
        m = m_new
    return m, l


def st_local_max(x, block):
    def update(m, l, b):
        b_max = b.amax(-1)
        return torch.maximum(m, b_max), l + torch.exp(b - _safe(b_max)[:, None]).sum(-1)
    return _walk(x, block, update)


def st_overwrite(x, block):
    def update(m, l, b):
        m_new = torch.maximum(m, b.amax(-1))
        return m_new, torch.exp(b - _safe(m_new)[:, None]).sum(-1)
    return _walk(x, block, update)


def st_max_never_stored(x, block):
    m = torch.full(x.shape[:-1], NEG_INF)
    l = torch.zeros(x.shape[:-1])
    for s in range(0, x.shape[-1], block):
        b = x[:, s:s + block]
        m_new = torch.maximum(m, b.amax(-1))
        l = l * torch.exp(m - _safe(m_new)) + torch.exp(b - _safe(m_new)[:, None]).sum(-1)
    return m, l


def st_max_starts_at_zero(x, block):
    def update(m, l, b):
        m_new = torch.maximum(m, b.amax(-1))
        return m_new, l * torch.exp(m - m_new) + torch.exp(b - m_new[:, None]).sum(-1)
    return _walk(x, block, update, m0=0.0)


def st_tail_skipped(x, block):
    return _walk(x, block, SOL_UPDATE, stop=lambda n, b: n - n % b)


def st_no_max_subtracted(x, block):
    def update(m, l, b):
        return torch.maximum(m, b.amax(-1)), l + torch.exp(b).sum(-1)
    return _walk(x, block, update)


def st_unsafe_minus_inf(x, block):
    # right, except where m_new is still -inf: exp(-inf - (-inf)) = NaN for masked rows and left padding
    def update(m, l, b):
        m_new = torch.maximum(m, b.amax(-1))
        return m_new, l * torch.exp(m - m_new) + torch.exp(b - m_new[:, None]).sum(-1)
    return _walk(x, block, update)


def st_swapped(x, block):
    m, l = SOL.online_softmax_stats(x, block)
    return l, m


def st_half(x, block):
    m, l = SOL.online_softmax_stats(x.half().float(), block)
    return m, l.half()


def SOL_UPDATE(m, l, b):
    m_new = torch.maximum(m, b.amax(-1))
    return m_new, l * torch.exp(m - _safe(m_new)) + torch.exp(b - _safe(m_new)[:, None]).sum(-1)


STATS_MISTAKES = [
    (st_no_rescale, "didn't rescale the running sum"),
    (st_inverted_factor, "0 * inf"),
    (st_inverted_factor_from_block_0, "factor is upside down"),
    (st_local_max, "against its own max"),
    (st_overwrite, "only the last block's terms"),
    (st_max_never_stored, "store the new max"),
    (st_max_starts_at_zero, "started the running max at 0"),
    (st_tail_skipped, "skipped the last, shorter block"),
    (st_no_max_subtracted, "you summed exp(x) itself"),
    (st_unsafe_minus_inf, "exp(-inf - (-inf))"),
    (st_swapped, "you returned (l, m)"),
    (st_half, "float16 or bfloat16"),
]


# --- 2. tiled_attention: wrong solutions -------------------------------------------------------------------------

def _tiled(q, k, v, causal, bq, bk, *, scale=None, hidden=None, rescale=("l", "acc"), safe=True, divide_safe=True,
           subtract_max=True, q_stop=None, k_stop=None, break_when=None, dtype=torch.float32):
    """The tiled loop as a learner writes it, with one choice passed in."""
    t_q, t_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    offset = t_k - t_q
    scale = 1 / math.sqrt(d) if scale is None else scale(d)
    hidden = hidden or (lambda cols, pos, ks, qs, s: cols[None, :] > pos[:, None])
    out = torch.zeros(q.shape, dtype=dtype)
    for qs in range(0, t_q if q_stop is None else q_stop(t_q, bq), bq):
        qb = q[..., qs:qs + bq, :].to(dtype) * scale
        pos = torch.arange(qs, qs + qb.shape[-2]) + offset
        m = torch.full(qb.shape[:-1], NEG_INF, dtype=dtype)
        l = torch.zeros(qb.shape[:-1], dtype=dtype)
        acc = torch.zeros(qb.shape, dtype=dtype)
        for ks in range(0, t_k if k_stop is None else k_stop(t_k, bk), bk):
            if break_when is not None and causal and break_when(ks, qs, qb.shape[-2], offset):
                break
            s = qb @ k[..., ks:ks + bk, :].to(dtype).transpose(-2, -1)
            if causal:
                s = s.masked_fill(hidden(torch.arange(ks, ks + s.shape[-1]), pos, ks, qs, s), NEG_INF)
            m_new = torch.maximum(m, s.amax(-1))
            shift = (_safe(m_new) if safe else m_new) if subtract_max else torch.zeros_like(m_new)
            p = torch.exp(s - shift[..., None])
            alpha = torch.exp(m - shift) if subtract_max else torch.ones_like(m)
            l = (alpha * l if "l" in rescale else l) + p.sum(-1)
            acc = (alpha[..., None] * acc if "acc" in rescale else acc) + p @ v[..., ks:ks + bk, :].to(dtype)
            m = m_new
        denom = torch.where(l > 0, l, 1.0) if divide_safe else l
        out[..., qs:qs + bq, :] = acc / denom[..., None]
    return out


def ta_no_scale(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk, scale=lambda d: 1.0)


def ta_scale_by_d(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk, scale=lambda d: 1 / d)


def ta_top_left_mask(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk, hidden=lambda cols, pos, ks, qs, s: cols[None, :] >
                  torch.arange(qs, qs + s.shape[-2])[:, None])


def ta_diagonal_hidden(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk, hidden=lambda cols, pos, ks, qs, s: cols[None, :] >= pos[:, None])


def ta_tile_triangle(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk,
                  hidden=lambda cols, pos, ks, qs, s: torch.ones(s.shape[-2:], dtype=torch.bool).triu(1))


def ta_causal_ignored(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, False, bq, bk)


def ta_always_causal(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, True, bq, bk)


def ta_acc_not_rescaled(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk, rescale=("l",))


def ta_l_not_rescaled(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk, rescale=("acc",))


def ta_nothing_rescaled(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk, rescale=())


def ta_key_tail_skipped(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk, k_stop=lambda n, b: n - n % b)


def ta_query_tail_skipped(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk, q_stop=lambda n, b: n - n % b)


def ta_unsafe_shift(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk, safe=False)


def ta_divides_by_zero(q, k, v, causal, bq, bk):
    return _tiled(q, k, v, causal, bq, bk, divide_safe=False)


def ta_no_max_subtracted(q, k, v, causal, bq, bk):
    # exp(s) straight away: right in exact arithmetic, inf / inf = NaN in float32 once a score passes 88.7
    return _tiled(q, k, v, causal, bq, bk, subtract_max=False)


def ta_half(q, k, v, causal, bq, bk):
    return _tiled(q.half().float(), k.half().float(), v.half().float(), causal, bq, bk).half()


ATTN_MISTAKES = [
    (ta_no_scale, "didn't scale the scores"),
    (ta_scale_by_d, "divided the scores by d"),
    (ta_top_left_mask, "aligned top-left"),
    (ta_diagonal_hidden, "hides the diagonal"),
    (ta_tile_triangle, "positions inside the tile"),
    (ta_causal_ignored, "with causal=True, query i must not see"),
    (ta_always_causal, "apply the mask only when causal is True"),
    (ta_acc_not_rescaled, "rescaled l but not acc"),
    (ta_l_not_rescaled, "rescaled acc but not l"),
    (ta_nothing_rescaled, "rescaled neither l nor acc"),
    (ta_key_tail_skipped, "last, shorter block of keys"),
    (ta_query_tail_skipped, "last, shorter block of queries"),
    (ta_unsafe_shift, "rows that see no key"),
    (ta_divides_by_zero, "rows that see no key"),
    (ta_no_max_subtracted, "overflows float32"),
    (ta_half, "float16 or bfloat16"),
]

MISTAKES = [(name, wrong, named) for name, mistakes in (("online_softmax_stats", STATS_MISTAKES),
                                                          ("tiled_attention", ATTN_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch10.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and out.count("\n") == 1 and "Hint: " in out, out
    assert named in hint_of(out), out


# --- mistakes the diagnosis does not name get the general hint --------------------------------------------------------

def ta_tilewise_softmax(q, k, v, causal, bq, bk):
    # each tile normalised on its own and the tiles' outputs added: no running statistics at all
    out = torch.zeros(q.shape)
    offset = k.shape[-2] - q.shape[-2]
    for qs in range(0, q.shape[-2], bq):
        qb = q[..., qs:qs + bq, :] / math.sqrt(q.shape[-1])
        pos = torch.arange(qs, qs + qb.shape[-2]) + offset
        for ks in range(0, k.shape[-2], bk):
            s = qb @ k[..., ks:ks + bk, :].transpose(-2, -1)
            if causal:
                s = s.masked_fill(torch.arange(ks, ks + s.shape[-1])[None, :] > pos[:, None], NEG_INF)
            out[..., qs:qs + bq, :] += torch.nan_to_num(torch.softmax(s, -1)) @ v[..., ks:ks + bk, :]
    return out


def ta_seed_output_formula(q, k, v, causal, bq, bk):
    # seed 003's update, O = (l·exp(m - m_new) + O + exp(S - m_new) V) / l_new: O added, not multiplied
    out = torch.zeros(q.shape)
    offset = k.shape[-2] - q.shape[-2]
    for qs in range(0, q.shape[-2], bq):
        qb = q[..., qs:qs + bq, :] / math.sqrt(q.shape[-1])
        pos = torch.arange(qs, qs + qb.shape[-2]) + offset
        m = torch.full(qb.shape[:-1], NEG_INF)
        l = torch.zeros(qb.shape[:-1])
        o = torch.zeros(qb.shape)
        for ks in range(0, k.shape[-2], bk):
            s = qb @ k[..., ks:ks + bk, :].transpose(-2, -1)
            if causal:
                s = s.masked_fill(torch.arange(ks, ks + s.shape[-1])[None, :] > pos[:, None], NEG_INF)
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - _safe(m_new)[..., None])
            l_new = torch.exp(m - _safe(m_new)) * l + p.sum(-1)
            o = ((l * torch.exp(m - _safe(m_new)))[..., None] + o + p @ v[..., ks:ks + bk, :]) / \
                torch.where(l_new > 0, l_new, 1.0)[..., None]
            m, l = m_new, l_new
        out[..., qs:qs + bq, :] = o
    return out


def ta_future_blocks_skipped_top_left(q, k, v, causal, bq, bk):
    # the mask is right, but the early exit forgets the offset: with fewer queries than keys it drops visible keys
    return _tiled(q, k, v, causal, bq, bk, break_when=lambda ks, qs, n, offset: ks > qs + n - 1)


@pytest.mark.parametrize("wrong", [ta_tilewise_softmax, ta_seed_output_formula, ta_future_blocks_skipped_top_left])
def test_an_unrecognised_attention_mistake_gets_the_general_hint(wrong, capsys):
    ok, out = run(ch10.check_tiled_attention, wrong, capsys)
    assert not ok and hint_of(out).startswith("for each block of queries: m = -inf"), out


def test_an_unrecognised_stats_mistake_gets_the_general_hint(capsys):
    ok, out = run(ch10.check_online_softmax_stats, lambda x, block: (x.amax(-1), torch.exp(x).mean(-1)), capsys)
    assert not ok and hint_of(out).startswith("m = -inf and l = 0 per row"), out


def test_the_stats_messages_say_which_half_is_wrong(capsys):
    ok, out = run(ch10.check_online_softmax_stats, st_overwrite, capsys)
    assert "l is right" not in out and "m is right, but l: " in out
    ok, out = run(ch10.check_online_softmax_stats, st_max_never_stored, capsys)
    assert "m: " in out and "m is right" not in out
    ok, out = run(ch10.check_online_softmax_stats, lambda x, b: (x.amax(-1, keepdim=True), x.sum(-1)), capsys)
    assert "m: expected a tensor of shape (4,), got one of shape (4, 1)." in out


# --- correct variants pass --------------------------------------------------------------------------------------------

def _st_merge_pairs(x, block):
    # each block reduced on its own, then merged with merge_stats' formula, guarded for -inf; in float64
    m = torch.full(x.shape[:-1], NEG_INF, dtype=torch.float64)
    l = torch.zeros(x.shape[:-1], dtype=torch.float64)
    for s in range(0, x.shape[-1], block):
        b = x[:, s:s + block].double()
        bm = b.amax(-1)
        bl = torch.exp(b - _safe(bm)[:, None]).sum(-1)
        m_new = torch.maximum(m, bm)
        l = l * torch.exp(m - _safe(m_new)) + bl * torch.exp(bm - _safe(m_new))
        m = m_new
    return m, l


def _st_element_by_element(x, block):
    # ignores the block size: one column at a time (the notebook's scalar loop, vectorised over rows)
    m = torch.full(x.shape[:-1], NEG_INF)
    l = torch.zeros(x.shape[:-1])
    for i in range(x.shape[-1]):
        xi = x[:, i]
        m_new = torch.maximum(m, xi)
        l = l * torch.exp(m - _safe(m_new)) + torch.exp(xi - _safe(m_new))
        m = m_new
    return [m, l]  # a list is fine too


def _st_two_passes(x, block):
    # a correct result the check cannot tell apart from one pass (it compares values only)
    m = x.amax(-1)
    return m, torch.nan_to_num(torch.exp(x - m[:, None])).sum(-1)


def _ta_course_lib(q, k, v, causal, bq, bk):
    return flash_attention_tiled(q, k, v, causal=causal, block_q=bq, block_k=bk)


def _ta_normalised_output(q, k, v, causal, bq, bk):
    # FlashAttention-1's form: the output kept normalised after every tile, O ← (α·l·O + P V) / l_new
    out = torch.zeros(q.shape)
    offset = k.shape[-2] - q.shape[-2]
    for qs in range(0, q.shape[-2], bq):
        qb = q[..., qs:qs + bq, :] / math.sqrt(q.shape[-1])
        pos = torch.arange(qs, qs + qb.shape[-2]) + offset
        m = torch.full(qb.shape[:-1], NEG_INF)
        l = torch.zeros(qb.shape[:-1])
        o = torch.zeros(qb.shape)
        for ks in range(0, k.shape[-2], bk):
            s = qb @ k[..., ks:ks + bk, :].transpose(-2, -1)
            if causal:
                s = s.masked_fill(torch.arange(ks, ks + s.shape[-1])[None, :] > pos[:, None], NEG_INF)
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - _safe(m_new)[..., None])
            scaled = torch.exp(m - _safe(m_new)) * l
            l_new = scaled + p.sum(-1)
            o = (scaled[..., None] * o + p @ v[..., ks:ks + bk, :]) / torch.where(l_new > 0, l_new, 1.0)[..., None]
            m, l = m_new, l_new
        out[..., qs:qs + bq, :] = o
    return out


def _ta_float64_every_tile(q, k, v, causal, bq, bk):
    # no early exit (every tile computed, the future ones fully masked); float64 throughout
    return _tiled(q.double(), k.double(), v.double(), causal, bq, bk, dtype=torch.float64)


def _ta_whole_matrix(q, k, v, causal, bq, bk):
    # a correct result the check cannot tell apart from tiles (it compares values only)
    return naive_attention(q, k, v, causal=causal)


CORRECT = {"online_softmax_stats": [SOL.online_softmax_stats, _st_merge_pairs, _st_element_by_element,
                                    _st_two_passes],
           "tiled_attention": [SOL.tiled_attention, _ta_course_lib, _ta_normalised_output, _ta_float64_every_tile,
                               _ta_whole_matrix]}


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in CORRECT.items() for v in vs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch10.EXERCISES[name], variant, capsys)
    assert ok is True and out.startswith(f"[ok] {name}: correct"), out


def test_the_learner_cannot_change_the_references_inputs(capsys):
    def mutator(q, k, v, causal, bq, bk):
        out = SOL.tiled_attention(q, k, v, causal, bq, bk)
        q.zero_(), k.fill_(1.0), v.fill_(2.0)
        return out

    assert run(ch10.check_tiled_attention, mutator, capsys)[0]


# --- the cases cover what they claim -------------------------------------------------------------------------------

def test_stats_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch10.online_softmax_stats_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2}
    ns = {(x.shape[1], block) for x, block in cases}
    assert any(n % b == 0 and n > b for n, b in ns) and any(n % b and n > b for n, b in ns)  # divisible and ragged
    assert any(b > n for n, b in ns) and any(b == 1 for _, b in ns)
    for x, block in cases:
        assert x.dtype == torch.float32 and x.dim() == 2 and block >= 1
    masked = [x for x, _ in cases if bool(torch.isinf(x).any())]
    assert any(bool(torch.isinf(x).all(-1).any()) for x in masked)  # a fully masked row
    assert any(bool(torch.isinf(x[:, :8]).all(-1).any() & torch.isfinite(x).any(-1).all()) for x in masked)
    assert any(float(x.min()) > 900 for x, _ in cases) and any(float(x.max()) < -900 for x, _ in cases)
    firsts = [x for (x, _), label in zip(cases, labels) if label.startswith(("seed 0, x of shape (4, 16)",
                                                                             "seed 1, x of shape (4, 16)"))]
    assert len(firsts) == 2 and not torch.equal(*firsts)


def test_attention_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch10.tiled_attention_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2}
    assert {c for *_, c, _, _ in cases} == {True, False}
    t = [(q.shape[2], k.shape[2], bq, bk) for q, k, v, c, bq, bk in cases]
    assert any(tq % bq for tq, _, bq, _ in t) and any(tk % bk for _, tk, _, bk in t)  # ragged blocks
    assert any(bq > tq for tq, _, bq, _ in t) and any(tq < tk for tq, tk, _, _ in t)
    assert any(tq > tk for tq, tk, _, _ in t)  # rows that see no key
    assert any(q.shape[0] > 1 and q.shape[1] > 1 for q, *_ in cases)
    for q, k, v, causal, bq, bk in cases:
        assert q.dtype == k.dtype == v.dtype == torch.float32 and k.shape == v.shape and q.shape[:2] == k.shape[:2]
    # rows that see no key output exactly zero in the reference, and one case has every score near 100
    q, k, v, causal, bq, bk = cases[15]
    ref = ch10.reference_tiled_attention(*cases[15])
    assert bool((ref[..., :6, :] == 0).all()) and bool((ref[..., 6:, :] != 0).all())
    scores = [(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])) for q, k, *_ in cases]
    assert any(float(s.min()) > 88.7 for s in scores)


def test_row_stats_is_the_online_pass_where_that_is_defined():
    g = torch.Generator().manual_seed(3)
    x = 3 * torch.randn(5, 41, generator=g)
    m, l = row_stats(x)
    assert m.dtype == l.dtype == torch.float64
    for other in (online_stats(x), merge_stats(online_stats(x[:, :20]), online_stats(x[:, 20:]))):
        torch.testing.assert_close(m.float(), other[0])
        torch.testing.assert_close(l.float(), other[1])
    torch.testing.assert_close(torch.exp(x.double() - m[:, None]) / l[:, None], softmax_blocked(x, 8).double(),
                               rtol=1e-5, atol=1e-7)
    x[1] = NEG_INF
    x[2, :30] = NEG_INF
    m, l = row_stats(x)
    assert m[1] == NEG_INF and l[1] == 0 and torch.isfinite(l).all() and torch.isnan(online_stats(x)[1][1:3]).all()


def test_the_attention_reference_is_course_libs_tiled_version():
    for args in ch10.tiled_attention_cases()[1]:
        q, k, v, causal, bq, bk = args
        ours = flash_attention_tiled(q, k, v, causal=causal, block_q=bq, block_k=bk).double()
        assert (ours - ch10.reference_tiled_attention(*args)).abs().max() < ch10.ATTN_ATOL / 5


def test_float32_rounding_is_well_inside_the_tolerances():
    worst = max(float((SOL.online_softmax_stats(*a)[1].double() - row_stats(a[0])[1]).abs().div(
        row_stats(a[0])[1].clamp(min=1)).max()) for a in ch10.online_softmax_stats_cases()[1])
    assert worst < ch10.STATS_RTOL / 10
    worst = max(float((SOL.tiled_attention(*a).double() - ch10.reference_tiled_attention(*a)).abs().max())
                for a in ch10.tiled_attention_cases()[1])
    assert worst < ch10.ATTN_ATOL / 5


@pytest.mark.parametrize("kwargs", [k for k, _ in ch10._STATS_VARIANTS], ids=str)
def test_every_diagnosed_stats_mistake_is_visible_in_some_case(kwargs):
    cases = ch10.online_softmax_stats_cases()[1]
    for a in cases:
        right = ch10._stats_by_hand(*a)
        assert ch10._same(right[0], row_stats(a[0])[0]) and ch10._same(right[1], row_stats(a[0])[1])
    assert any(not ch10._same(ch10._stats_by_hand(*a, **kwargs)[1], row_stats(a[0])[1], rtol=1e-3) or
               not ch10._same(ch10._stats_by_hand(*a, **kwargs)[0], row_stats(a[0])[0], rtol=1e-3) for a in cases)


@pytest.mark.parametrize("kwargs", [k for k, _ in ch10._ATTN_VARIANTS], ids=str)
def test_every_diagnosed_attention_mistake_is_visible_in_some_case(kwargs):
    cases = ch10.tiled_attention_cases()[1]
    assert all(ch10._same(ch10._attention_by_hand(*a), ch10.reference_tiled_attention(*a), rtol=1e-9, atol=1e-9)
               for a in cases)
    assert any(not ch10._same(ch10._attention_by_hand(*a, **kwargs), ch10.reference_tiled_attention(*a),
                              rtol=1e-2, atol=1e-2) for a in cases)


# --- garbage never makes a check raise -------------------------------------------------------------------------------

def _garbage(kind):
    def fn(*args):
        shape = args[0].shape if len(args) == 6 else args[0].shape[:-1]
        pair = len(args) == 2
        value = {
            "none": lambda: None,
            "list": lambda: torch.zeros(shape).tolist(),
            "numpy": lambda: np.zeros(shape, dtype=np.float32),
            "float": lambda: 0.5,
            "bool tensor": lambda: torch.zeros(shape, dtype=torch.bool),
            "complex tensor": lambda: torch.zeros(shape, dtype=torch.complex64),
            "nan": lambda: torch.full(shape, float("nan")),
            "inf": lambda: torch.full(shape, float("inf")),
            "0-d tensor": lambda: torch.tensor(1.0),
            "wrong shape": lambda: torch.zeros(3, 5),
        }[kind]()
        return (value, value) if pair and kind not in ("none", "float") else value
    return fn


GARBAGE = ["none", "list", "numpy", "float", "bool tensor", "complex tensor", "nan", "inf", "0-d tensor",
           "wrong shape"]


@pytest.mark.parametrize("name", ["online_softmax_stats", "tiled_attention"])
@pytest.mark.parametrize("kind", GARBAGE)
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch10.EXERCISES[name], _garbage(kind), capsys)
    assert ok is False and out.startswith(f"[x] {name}: for seed 0,"), out


def test_a_tuple_of_three_or_a_single_tensor_is_refused_for_the_stats(capsys):
    for fn in (lambda x, b: (*SOL.online_softmax_stats(x, b), 0), lambda x, b: SOL.online_softmax_stats(x, b)[1]):
        ok, out = run(ch10.check_online_softmax_stats, fn, capsys)
        assert not ok and "expected a tuple (m, l) of two tensors" in out, out


def test_checks_are_fast(capsys):
    for name in ("online_softmax_stats", "tiled_attention"):
        check, solution = ch10.EXERCISES[name], getattr(SOL, name)
        start = time.perf_counter()
        check(solution)
        check(lambda *a: solution(*a) * 1.01 if name == "tiled_attention" else
              tuple(t * 1.01 for t in solution(*a)))  # a wrong answer runs the diagnosis too
        assert time.perf_counter() - start < 2.0, name
    capsys.readouterr()


# --- 3. attention_backward ---------------------------------------------------------------------------------------------

def _bwd_learner(**mistake):
    """The backward as a learner writes it, in float32, with one mistake (none: a correct variant)."""
    def fn(q, k, v, out, lse, do, causal, block_q, block_k):
        return tuple(t.float() for t in ch10._backward_by_hand(q, k, v, out, lse, do, causal, block_q, block_k,
                                                                **mistake))
    return fn


@pytest.mark.parametrize("kwargs, message", ch10._BWD_VARIANTS, ids=[str(k) for k, _ in ch10._BWD_VARIANTS])
def test_each_backward_mistake_fails_and_is_named(kwargs, message, capsys):
    ok, out = run(ch10.check_attention_backward, _bwd_learner(**kwargs), capsys)
    assert ok is False and out.rstrip().endswith(f"Hint: {message}"), out


def test_backward_correct_variants_pass(capsys):
    from course_lib.attention.tiled import flash_backward_tiled

    def course_lib_version(q, k, v, out, lse, do, causal, bq, bk):   # any block sizes: the blocks change nothing
        return flash_backward_tiled(do, q, k, v, out, lse, causal=causal, block_q=7, block_k=5)

    def autograd(q, k, v, out, lse, do, causal, bq, bk):             # the whole matrix, autograd, float32
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        naive_attention(*x, causal=causal).backward(do)
        return tuple(t.grad for t in x)

    for fn in (SOL.attention_backward, _bwd_learner(), course_lib_version, autograd):
        ok, out = run(ch10.check_attention_backward, fn, capsys)
        assert ok is True, out


@pytest.mark.parametrize("kwargs", [k for k, _ in ch10._BWD_VARIANTS], ids=str)
def test_every_diagnosed_backward_mistake_is_visible_in_some_case(kwargs):
    cases = ch10.attention_backward_cases()[1]
    # the defaults are the answer (to the rounding of the float32 out and lse they are given)
    assert all(all(ch10._same(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(ch10._backward_by_hand(*c),
                                                                         ch10.reference_attention_backward(*c)))
               for c in cases)
    assert any(any(not ch10._same(a, b, rtol=1e-2, atol=1e-2) for a, b in zip(ch10._backward_by_hand(*c, **kwargs),
                                                                             ch10.reference_attention_backward(*c)))
               for c in cases)


def test_backward_cases_cover_what_they_claim():
    labels, cases = ch10.attention_backward_cases()
    assert {int(re.match(r"seed (\d+),", lab).group(1)) for lab in labels} == {0, 1, 2}
    assert any(c[6] and c[0].shape[2] > c[1].shape[2] for c in cases)           # rows that see no key
    assert any(not c[6] for c in cases) and any(c[0].shape[2] == 1 for c in cases)
    assert any(c[1].shape[2] % c[8] for c in cases) and any(c[0].shape[2] % c[7] for c in cases)  # ragged blocks
    empty = next(c for c in cases if c[6] and c[0].shape[2] > c[1].shape[2])
    assert (empty[4][..., :8] == float("inf")).all() and (ch10.reference_attention_backward(*empty)[0][..., :8, :] == 0).all()


@pytest.mark.parametrize("got, words", [
    (None, "expected a tuple (dq, dk, dv) of three tensors"), ((1, 2), "expected a tuple (dq, dk, dv) of three"),
    ((torch.zeros(3), torch.zeros(3), torch.zeros(3)), "dq: expected a tensor of shape"),
    ("nan", "dq: "),
])
def test_backward_garbage_never_raises(got, words, capsys):
    def fn(q, k, v, *rest):
        if got == "nan":
            return tuple(torch.full_like(t, float("nan")) for t in (q, k, v))
        return got

    ok, out = run(ch10.check_attention_backward, fn, capsys)
    assert ok is False and words in out, out
