"""Chapter 09's exercises: plausible wrong solutions of the decode step and of the paged append fail with a hint that
names their mistake, correct variants pass, garbage never makes a check raise, the cases cover what they claim, and
the references are what course_lib's decoder and paged cache do.

(tests/test_exercises.py already proves, for every chapter, that the solution passes, the stub is "not attempted"
and a 1% error or an exception fails.)
"""

from __future__ import annotations

import copy
import math
import re
import time

import numpy as np
import pytest
import torch

from course_lib.exercises import ch09, load_solutions
from course_lib.kv.attention import AttentionWithKVCache, KVCache, apply_rope, attend, rope_cos_sin
from exercise_helpers import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOL = load_solutions("ch09")


@pytest.mark.parametrize("name, n_cases", [("decode_step", 15), ("paged_append", 22)])
def test_solution_passes_and_stub_is_not_attempted(name, n_cases, capsys):
    check = ch09.EXERCISES[name]
    ok, out = run(check, getattr(SOL, name), capsys)
    assert ok is True and out == f"[ok] {name}: correct ({n_cases} cases).\n", out

    def stub(*args):
        raise NotImplementedError

    ok, out = run(check, stub, capsys)
    assert ok is False and out.startswith(f"[ ] {name}: not attempted yet.") and "Hint" not in out, out


def test_the_formula_exercises_are_warm_ups():
    assert set(ch09.WARM_UPS) == {"kv_cache_bytes", "kv_head", "blocks_needed", "kivi_bits"}
    assert set(ch09.EXERCISES) - set(ch09.WARM_UPS) == {"decode_step", "paged_append"}


# --- 1. decode_step: wrong solutions, written as a learner would ------------------------------------------------------

def _step(q, k, v, k_cache, v_cache, mask, inv_freq, *, position=None, rotate=("q", "k"), adjacent=False,
          backwards=False, cache_raw_key=False, mask_padding=True, tile=False, scale=True, prepend=False):
    B, H, _, d = q.shape
    T, H_kv = k_cache.shape[2], k_cache.shape[1]
    p = mask[:, :T].sum(1) if position is None else position(mask, T)
    angles = p[:, None].float() * inv_freq[None, :]
    sin_sign = -1.0 if backwards else 1.0

    def rope(x):
        c, s = angles.cos()[:, None, None, :], sin_sign * angles.sin()[:, None, None, :]
        if adjacent:
            x1, x2 = x[..., 0::2], x[..., 1::2]
            return torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], -1).flatten(-2)
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    qr = rope(q) if "q" in rotate else q
    kr = rope(k) if "k" in rotate else k
    vr = rope(v) if "v" in rotate else v
    join = (lambda c, x: torch.cat([x, c], 2)) if prepend else (lambda c, x: torch.cat([c, x], 2))
    new_k, new_v = join(k_cache, k if cache_raw_key else kr), join(v_cache, vr)
    keys = join(k_cache, kr)
    g = H // H_kv
    rep = (lambda x: x.repeat(1, g, 1, 1)) if tile else (lambda x: x.repeat_interleave(g, 1))
    scores = qr @ rep(keys).transpose(-1, -2) / (math.sqrt(d) if scale else 1.0)
    if mask_padding:
        scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    return torch.softmax(scores, -1) @ rep(new_v), new_k, new_v


def step_cache_length(*a):
    return _step(*a, position=lambda mask, T: torch.full((mask.shape[0],), T))


def step_no_positions(*a):
    return _step(*a, position=lambda mask, T: torch.zeros(mask.shape[0], dtype=torch.long))


def step_counts_the_new_token(*a):
    return _step(*a, position=lambda mask, T: mask.sum(1))


def step_position_minus_one(*a):
    return _step(*a, position=lambda mask, T: mask[:, :T].sum(1) - 1)


def step_query_not_rotated(*a):
    return _step(*a, rotate=("k",))


def step_key_not_rotated(*a):
    return _step(*a, rotate=("q",))


def step_value_rotated(*a):
    return _step(*a, rotate=("q", "k", "v"))


def step_adjacent_pairs(*a):
    return _step(*a, adjacent=True)


def step_rotates_backwards(*a):
    return _step(*a, backwards=True)


def step_caches_the_raw_key(*a):
    return _step(*a, cache_raw_key=True)


def step_padding_not_masked(*a):
    return _step(*a, mask_padding=False)


def step_gqa_tiled(*a):
    return _step(*a, tile=True)


def step_unscaled(*a):
    return _step(*a, scale=False)


def step_prepends(*a):
    return _step(*a, prepend=True)


def step_returns_the_old_cache(q, k, v, k_cache, v_cache, mask, inv_freq):
    out, _, _ = SOL.decode_step(q, k, v, k_cache, v_cache, mask, inv_freq)
    return out, k_cache, v_cache


def step_mask_by_position_from_the_right(q, k, v, k_cache, v_cache, mask, inv_freq):
    # treats the padding as if it were on the right: position = T, mask ignored
    return _step(q, k, v, k_cache, v_cache, torch.ones_like(mask), inv_freq)


DECODE_MISTAKES = [
    (step_cache_length, "not at position T"),
    (step_no_positions, "by position 0"),
    (step_counts_the_new_token, "one too large"),
    (step_position_minus_one, "one too small"),
    (step_query_not_rotated, "didn't rotate the query"),
    (step_key_not_rotated, "didn't rotate the new key"),
    (step_value_rotated, "rotated the value too"),
    (step_adjacent_pairs, "adjacent pairs"),
    (step_rotates_backwards, "rotated the wrong way"),
    (step_caches_the_raw_key, "cached the key before rotating it"),
    (step_padding_not_masked, "padding keys are attended to"),
    (step_gqa_tiled, "tiles the KV heads"),
    (step_unscaled, "didn't scale the scores"),
    (step_prepends, "put the new key and value first"),
    (step_returns_the_old_cache, "expected a tensor of shape"),
    (step_mask_by_position_from_the_right, None),
]


# --- 2. paged_append: wrong solutions ---------------------------------------------------------------------------------

def _append(k_blocks, table, seq_len, k_new, refcount, free, *, cow=lambda partial, shared, n: partial and shared
            and n > 0, copy_data=True, decref=True, release=False, new_count=1, take=lambda free: free.pop(),
            cow_after=False, offset=lambda t, j, B: t % B):
    B, n = k_blocks.shape[1], k_new.shape[0]

    def allocate():
        block = take(free)
        if new_count is not None:
            refcount[block] = new_count
        return block

    do_cow = bool(table) and cow(seq_len % B != 0, refcount[table[-1]] > 1, n)

    def copy_last():
        old, new = table[-1], allocate()
        if copy_data:
            k_blocks[new] = k_blocks[old]
        if decref:
            refcount[old] -= 1
        if release:
            free.append(old)
        table[-1] = new

    if do_cow and not cow_after:
        copy_last()
    while len(table) < -(-(seq_len + n) // B):
        table.append(allocate())
    if do_cow and cow_after:
        copy_last()
    for j in range(n):
        t = seq_len + j
        k_blocks[table[t // B], offset(t, j, B)] = k_new[j]
    return k_blocks, table, refcount, free


def pa_no_copy_on_write(*a):
    return _append(*a, cow=lambda partial, shared, n: False)


def pa_copies_full_blocks(*a):
    return _append(*a, cow=lambda partial, shared, n: shared and n > 0)


def pa_copies_unshared_blocks(*a):
    return _append(*a, cow=lambda partial, shared, n: partial and n > 0)


def pa_copies_with_no_token(*a):
    return _append(*a, cow=lambda partial, shared, n: partial and shared)


def pa_forgets_the_contents(*a):
    return _append(*a, copy_data=False)


def pa_keeps_the_old_reference(*a):
    return _append(*a, decref=False)


def pa_frees_the_shared_block(*a):
    return _append(*a, release=True)


def pa_no_count_for_new_blocks(*a):
    return _append(*a, new_count=None)


def pa_takes_from_the_front(*a):
    return _append(*a, take=lambda free: free.pop(0))


def pa_copies_after_allocating(*a):
    return _append(*a, cow_after=True)


def pa_offset_from_the_new_tokens(*a):
    return _append(*a, offset=lambda t, j, B: j % B)


def pa_new_block_for_new_tokens(k_blocks, table, seq_len, k_new, refcount, free):
    # never fills the partly filled last block: the new tokens start a block of their own
    B, n = k_blocks.shape[1], k_new.shape[0]
    first = len(table)
    for _ in range(-(-n // B)):
        block = free.pop()
        refcount[block] = 1
        table.append(block)
    for j in range(n):
        k_blocks[table[first + j // B], j % B] = k_new[j]
    return k_blocks, table, refcount, free


def pa_shares_a_copy_of_the_table(k_blocks, table, seq_len, k_new, refcount, free):
    # returns the table as it was (the new blocks never make it into the returned table)
    _, new_table, refcount, free = SOL.paged_append(k_blocks, list(table), seq_len, k_new, refcount, free)
    return k_blocks, table, refcount, free


def pa_increments_the_old_count(*a):
    return _append(*a, decref=False, new_count=2)


PAGED_MISTAKES = [
    (pa_no_copy_on_write, "wrote into a shared block"),
    (pa_copies_full_blocks, "copied a full shared block"),
    (pa_copies_unshared_blocks, "copied a block nobody else uses"),
    (pa_copies_with_no_token, "nothing to copy"),
    (pa_forgets_the_contents, "lacks the old block's contents"),
    (pa_keeps_the_old_reference, "drop its reference"),
    (pa_frees_the_shared_block, "back on the free list"),
    (pa_no_count_for_new_blocks, "reference count of 1"),
    (pa_takes_from_the_front, "from the front of the free list"),
    (pa_copies_after_allocating, "before the copy-on-write block"),
    (pa_offset_from_the_new_tokens, "your slots are off"),
    (pa_new_block_for_new_tokens, "last one had room"),
    (pa_shares_a_copy_of_the_table, None),
    (pa_increments_the_old_count, None),
]


MISTAKES = [(name, wrong, named) for name, mistakes in (("decode_step", DECODE_MISTAKES),
                                                          ("paged_append", PAGED_MISTAKES))
            for wrong, named in mistakes]


@pytest.mark.parametrize("name, wrong, named", MISTAKES, ids=[f"{n}-{w.__name__}" for n, w, _ in MISTAKES])
def test_wrong_solution_fails_and_the_hint_names_the_mistake(name, wrong, named, capsys):
    ok, out = run(ch09.EXERCISES[name], wrong, capsys)
    assert ok is False
    assert out.startswith(f"[x] {name}: for ") and "Hint: " in out
    if named is not None:
        assert named in out.split(": for ", 1)[1], out


def test_a_wrong_key_cache_is_reported_as_the_cache(capsys):
    ok, out = run(ch09.check_decode_step, step_caches_the_raw_key, capsys)
    assert not ok and ": the key cache: " in out  # the output itself is right


def test_writing_into_a_shared_block_is_reported_on_the_table(capsys):
    ok, out = run(ch09.check_paged_append, pa_no_copy_on_write, capsys)
    assert not ok and ": the block table: expected" in out


# --- correct variants -------------------------------------------------------------------------------------------------

def _step_with_course_lib_pieces(q, k, v, k_cache, v_cache, mask, inv_freq):
    # a correct variant: course_lib's RoPE, KVCache and attend, the position as mask.sum() - 1 over all T + 1 columns
    cache = KVCache(1)
    cache.keys[0], cache.values[0] = k_cache, v_cache
    pos = mask.sum(1, keepdim=True) - 1
    cos, sin = rope_cos_sin(pos, inv_freq)
    keys, values = cache.update(0, apply_rope(k, cos, sin), v)
    return attend(apply_rope(q, cos, sin), keys, values, key_mask=mask), keys, values


def _step_float64_loops(q, k, v, k_cache, v_cache, mask, inv_freq):
    # a correct variant: float64, a loop over query heads, the padding dropped instead of masked
    B, H, _, d = q.shape
    H_kv = k_cache.shape[1]
    half = d // 2
    out = torch.zeros(B, H, 1, d, dtype=torch.float64)
    new_k, new_v = [], []
    for b in range(B):
        p = int(mask[b].sum()) - 1
        a = p * inv_freq.double()
        c, s = torch.cat([a.cos(), a.cos()]), torch.cat([a.sin(), a.sin()])
        rot = lambda x: x.double() * c + torch.cat([-x.double()[..., half:], x.double()[..., :half]], -1) * s  # noqa
        kb = torch.cat([k_cache[b].double(), rot(k[b])], 1)
        vb = torch.cat([v_cache[b].double(), v[b].double()], 1)
        new_k.append(kb)
        new_v.append(vb)
        keep = mask[b].bool()
        for h in range(H):
            kv = h // (H // H_kv)
            w = torch.softmax(rot(q[b, h]) @ kb[kv, keep].T / math.sqrt(d), -1)
            out[b, h] = w @ vb[kv, keep]
    return out, torch.stack(new_k), torch.stack(new_v)


def _pa_new_objects(k_blocks, table, seq_len, k_new, refcount, free):
    # a correct variant that returns new objects, copies only the filled slots and writes all tokens at once
    k, table, ref, free = k_blocks.clone(), list(table), list(refcount), list(free)
    B, n = k.shape[1], k_new.shape[0]
    if n and seq_len % B and ref[table[-1]] > 1:
        new = free.pop()
        k[new, : seq_len % B] = k[table[-1], : seq_len % B]
        ref[table[-1]] -= 1
        ref[new] = 1
        table[-1] = new
    while len(table) * B < seq_len + n:
        table.append(free.pop())
        ref[table[-1]] = 1
    t = torch.arange(seq_len, seq_len + n)
    blocks = torch.tensor(table, dtype=torch.long)[t // B] if n else torch.zeros(0, dtype=torch.long)
    k.view(-1, *k.shape[2:])[blocks * B + t % B] = k_new
    return k, torch.tensor(table), tuple(ref), free


CORRECT = {"decode_step": [SOL.decode_step, _step_with_course_lib_pieces, _step_float64_loops],
           "paged_append": [SOL.paged_append, _pa_new_objects]}


@pytest.mark.parametrize("name, variant", [(n, v) for n, vs in CORRECT.items() for v in vs],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_correct_variants_pass(name, variant, capsys):
    ok, out = run(ch09.EXERCISES[name], variant, capsys)
    assert ok is True, out


# --- the cases and the references -------------------------------------------------------------------------------------

def test_decode_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch09.decode_step_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2} and len(cases) == 15
    kinds = {(q.shape[1], k.shape[1]) for q, k, *_ in cases}
    assert any(h == kv for h, kv in kinds) and any(kv == 1 for _, kv in kinds) and any(1 < kv < h for h, kv in kinds)
    for q, k, v, kc, vc, mask, inv_freq in cases:
        T = kc.shape[2]
        assert mask.shape == (q.shape[0], T + 1) and bool((mask[:, -1] == 1).all())
        assert bool((mask.diff(dim=1) >= 0).all())  # left padding: 0s, then 1s
        assert inv_freq.shape == (q.shape[-1] // 2,)
    assert any(kc.shape[2] == 0 for _, _, _, kc, *_ in cases)
    assert any(bool((mask[:, :-1] == 0).all(1).any()) and mask.shape[1] > 1 for *_, mask, _ in cases)
    firsts = [c for c, label in zip(cases, labels) if label.startswith("seed 0")][0]
    assert int((firsts[5] == 0).sum()) > 0  # the first case has a padded row: the cache length is wrong there


def test_the_decode_reference_is_the_course_decoder_step():
    # a prefill then one step of AttentionWithKVCache (positions from the mask, as CourseDecoder computes them)
    g = torch.Generator().manual_seed(0)
    attn = AttentionWithKVCache(32, 4, 2, head_dim=8)
    x = torch.randn(2, 6, 32, generator=g)
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = KVCache(1)
    with torch.no_grad():
        attn(x[:, :5], pos[:, :5], cache=cache, key_mask=mask[:, :5])
        k_cache, v_cache = cache.keys[0].clone(), cache.values[0].clone()
        out = attn(x[:, 5:], pos[:, 5:], cache=cache, key_mask=mask)
        q = attn.split_heads(attn.q_proj(x[:, 5:]), 4)
        k = attn.split_heads(attn.k_proj(x[:, 5:]), 2)
        v = attn.split_heads(attn.v_proj(x[:, 5:]), 2)
        ref_out, ref_k, ref_v = ch09.reference_decode_step(q, k, v, k_cache, v_cache, mask, attn.inv_freq)
        mine = attn.o_proj(ref_out.transpose(1, 2).reshape(2, 1, 32))
    torch.testing.assert_close(mine, out)
    torch.testing.assert_close(ref_k, cache.keys[0])
    torch.testing.assert_close(ref_v, cache.values[0])


@pytest.mark.parametrize("kwargs, key", ch09._DECODE_VARIANTS, ids=[k for _, k in ch09._DECODE_VARIANTS])
def test_every_diagnosed_decode_mistake_is_visible_in_the_first_case(kwargs, key):
    args = ch09.decode_step_cases()[1][0]
    assert ch09._same_decode(ch09._decode_by_hand(*args), ch09.reference_decode_step(*args), 1e-5, 1e-5)
    assert not ch09._same_decode(ch09._decode_by_hand(*args, **kwargs), ch09.reference_decode_step(*args))


def test_paged_cases_cover_shapes_seeds_and_edges():
    labels, cases = ch09.paged_append_cases()
    seeds = {int(m.group(1)) for label in labels if (m := re.match(r"seed (\d+),", label))}
    assert seeds == {0, 1, 2} and len(cases) == 22
    assert {k.shape[1] for k, *_ in cases} == {2, 4, 8, 16}
    cow = [bool(s % k.shape[1]) and n.shape[0] > 0 and r[t[-1]] > 1 for k, t, s, n, r, f in cases if t]
    random_cow = cow[:12]
    assert any(random_cow) and not all(random_cow)  # the random states include copies and plain appends
    for k, table, seq_len, k_new, refcount, free in cases:
        B = k.shape[1]
        assert len(table) == -(-seq_len // B) and len(refcount) == k.shape[0]
        assert all(refcount[b] == 0 for b in free) and all(refcount[b] >= 1 for b in table)
        assert len(free) >= -(-(seq_len + k_new.shape[0]) // B) + 1  # always enough free blocks
    assert any(not t for _, t, *_ in cases) and any(n.shape[0] == 0 for *_, n, _, _ in [(c[0], c[1], c[3], c[4], c[5])
                                                                                       for c in cases])
    assert any(max((r[b] for b in t), default=0) == 3 for _, t, _, _, r, _ in cases)


def test_the_paged_reference_is_a_real_append():
    # the state injection gives what appending to the real cache gives
    g = torch.Generator().manual_seed(3)
    cache = ch09._new_cache(4, 2, 4, g)
    ch09._fill(cache, "a", 6, g)
    cache.fork("a", "b")
    args = ch09._state(cache, "b", 5, g)
    expected = ch09.reference_paged_append(*args)
    real = copy.deepcopy(cache)
    real.append("b", [args[3]], [args[3].clone()])
    assert expected.table == real.block_table("b") and expected.free == real.allocator._free
    assert expected.refcount == real.allocator._refs and torch.equal(expected.k_blocks, real.k_blocks[0])
    assert real.block_table("a") == cache.block_table("a")  # the parent keeps its block


@pytest.mark.parametrize("kwargs, key", ch09._PAGED_VARIANTS, ids=[k for _, k in ch09._PAGED_VARIANTS])
def test_every_diagnosed_paged_mistake_is_visible_in_some_case(kwargs, key):
    cases = ch09.paged_append_cases()[1]
    for args in cases:
        assert ch09._same_paged(ch09._append_by_hand(*args), ch09.reference_paged_append(*args))
    assert any(not ch09._same_paged(ch09._append_by_hand(*a, **kwargs), ch09.reference_paged_append(*a))
               for a in cases)


# --- garbage never makes a check raise --------------------------------------------------------------------------------

GARBAGE = {
    "none": lambda *a: None,
    "float": lambda *a: 0.5,
    "numpy": lambda *a: np.zeros(3),
    "a single tensor": lambda *a: a[0].clone(),
    "a tuple of two": lambda *a: (a[0], a[1]),
    "lists": lambda *a: tuple(x.tolist() if isinstance(x, torch.Tensor) else x for x in a[:4]),
    "nan tensors": lambda *a: tuple(torch.full_like(x, float("nan")) if isinstance(x, torch.Tensor) else x
                                    for x in a[:4]),
    "complex": lambda *a: tuple(x.to(torch.complex64) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                                for x in a[:4]),
    "bool": lambda *a: tuple(x.bool() if isinstance(x, torch.Tensor) else x for x in a[:4]),
    "floats in the table": lambda *a: (a[0], [0.5], [1.0], [2.0]),
}


@pytest.mark.parametrize("name", ["decode_step", "paged_append"])
@pytest.mark.parametrize("kind", list(GARBAGE))
def test_a_check_never_raises_on_garbage(name, kind, capsys):
    ok, out = run(ch09.EXERCISES[name], GARBAGE[kind], capsys)
    assert ok is False and out.startswith(f"[x] {name}: for "), out


def test_checks_are_fast(capsys):
    for name in ("decode_step", "paged_append"):
        check = ch09.EXERCISES[name]
        start = time.perf_counter()
        check(getattr(SOL, name))
        check(pa_no_copy_on_write if name == "paged_append" else step_cache_length)  # runs the diagnosis too
        assert time.perf_counter() - start < 2.0, name
    capsys.readouterr()
