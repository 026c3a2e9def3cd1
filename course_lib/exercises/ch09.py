"""Checks for chapter 09.

Warm-ups (formulas, checked on a few fixed cases): ``check_kv_cache_bytes``, ``check_kv_head``,
``check_blocks_needed``, ``check_kivi_bits``.

Exercises that implement the chapter's two algorithms on tensors:

1. ``check_decode_step``: one decode step of attention with a cache, for a left-padded batch: rotate the new query
   and key by each row's own position (RoPE), append the key and value to the cache, attend over the cache with the
   padding masked and GQA's head mapping. Compared with ``course_lib.kv.attention`` (``positions_for``,
   ``rope_cos_sin``, ``apply_rope``, ``KVCache.update``, ``attend``).
2. ``check_paged_append``: append tokens to a sequence of a paged cache: blocks allocated on demand from a free
   list, copy-on-write of a shared, partly filled last block, keys written through the block table. Compared with
   ``course_lib.kv.paged.PagedKVCache`` on states built by real forks, appends and frees.

Both run the learner's function on random cases (fixed seeds, several shapes) plus edge cases; after a wrong
attempt a diagnosis recomputes the usual mistakes (the cache length as the position of a padded row, the key cached
before its rotation, GQA's heads tiled, no copy before writing into a shared block, ...) and names the one that
matches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..kv.attention import KVCache, apply_rope, attend, rope_cos_sin, rope_frequencies
from ..kv.decoder import positions_for
from ..kv.paged import PagedKVCache
from . import _short, _tensor_mismatch, check_against, check_cases


def check_kv_cache_bytes(fn) -> bool:
    """fn(layers, kv_heads, head_dim, seq_len, batch, bytes_per_element) -> bytes of the K and V cache."""
    cases = [((32, 32, 128, 4096, 1, 2), 2 * 32 * 32 * 128 * 4096 * 2),      # Llama-2-7B, fp16, 4k
             ((32, 8, 128, 4096, 1, 2), 2 * 32 * 8 * 128 * 4096 * 2),        # Llama-3-8B (GQA)
             ((80, 8, 128, 131072, 1, 2), 2 * 80 * 8 * 128 * 131072 * 2),    # Llama-3.1-70B at 128k
             ((8, 2, 64, 512, 4, 1), 2 * 8 * 2 * 64 * 512 * 4 * 1)]          # the course model, fp8, batch 4
    return check_cases("kv_cache_bytes", fn, cases,
                       hint="2 (K and V) x layers x KV heads (not query heads) x head_dim x tokens x batch x bytes.")


def check_kv_head(fn) -> bool:
    """fn(h, n_heads, n_kv_heads) -> the KV head that query head h reads under GQA."""
    cases = [((0, 32, 8), 0), ((3, 32, 8), 0), ((4, 32, 8), 1), ((31, 32, 8), 7), ((5, 8, 8), 5), ((7, 8, 1), 0),
             ((13, 16, 4), 3)]
    return check_cases("kv_head", fn, cases,
                       hint="consecutive query heads share a KV head: h // (n_heads // n_kv_heads), not h % n_kv_heads.")


def check_blocks_needed(fn) -> bool:
    """fn(n_tokens, block_size) -> how many cache blocks a sequence of n_tokens occupies."""
    cases = [((1, 16), 1), ((16, 16), 1), ((17, 16), 2), ((338, 16), 22), ((2048, 16), 128), ((100, 32), 4)]
    return check_cases("blocks_needed", fn, cases, hint="ceil(n_tokens / block_size), in integers: -(-n // b).")


def check_kivi_bits(fn) -> bool:
    """fn(bits, group) -> stored bits per cached number in KIVI's quantized part (keys per channel over `group`
    tokens, values per token over `group` channels, each group with an fp16 scale and an fp16 zero point)."""
    cases = [((2, 32), 3.0), ((4, 32), 5.0), ((2, 128), 2.25), ((4, 64), 4.5)]
    return check_cases("kivi_bits", fn, cases,
                       hint="each group of `group` numbers carries 16 + 16 bits of scale and zero point.")




# --- 1. one decode step with the cache -------------------------------------------------------------------------------

DECODE_SEEDS = (0, 1, 2)
# (B, query heads H, KV heads H_kv, cached tokens T, head_dim d, RoPE theta)
DECODE_SHAPES = ((2, 4, 2, 7, 8, 10000.0), (1, 4, 4, 12, 16, 10000.0), (3, 6, 2, 20, 32, 500000.0),
                 (4, 8, 1, 33, 64, 10000.0))
# Outputs and keys are of size about 1. A float32 angle p * inv_freq is off by up to p * 6e-8 rad (p <= 100 here),
# so another order of the float32 arithmetic differs by up to about 2e-5; a wrong position or layout is off by O(1).
DECODE_ATOL, DECODE_RTOL = 1e-4, 1e-4


def _decode_case(B: int, H: int, H_kv: int, T: int, d: int, theta: float, g: torch.Generator,
                 pads: list[int] | None = None) -> tuple:
    """(q, k, v, k_cache, v_cache, attention_mask, inv_freq): random float32 tensors, left padding per row (row 0
    none, the others at least one padding token unless `pads` says otherwise)."""
    q = torch.randn(B, H, 1, d, generator=g)
    k, v = torch.randn(B, H_kv, 1, d, generator=g), torch.randn(B, H_kv, 1, d, generator=g)
    k_cache, v_cache = torch.randn(B, H_kv, T, d, generator=g), torch.randn(B, H_kv, T, d, generator=g)
    if pads is None:
        pad = torch.randint(1, T // 2 + 2, (B,), generator=g).clamp(max=T)
        pad[0] = 0
    else:
        pad = torch.tensor(pads)
    mask = (torch.arange(T + 1)[None, :] >= pad[:, None]).long()
    return q, k, v, k_cache, v_cache, mask, rope_frequencies(d, theta)


def _describe_decode(args: tuple, theta: float) -> str:
    q, k, _, k_cache, _, mask, inv_freq = args
    B, H, _, d = q.shape
    T = k_cache.shape[2]
    pads = ", ".join(str(int(x)) for x in (mask == 0).sum(1))
    return (f"B {B}, {H} query heads over {k.shape[1]} KV heads, {T} cached tokens, head_dim {d}, RoPE theta "
            f"{theta:g}; left padding per row: {pads}")


def decode_step_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (q, k, v, k_cache, v_cache, attention_mask, inv_freq)) of check_decode_step."""
    labels, cases = [], []
    for seed in DECODE_SEEDS:
        for B, H, H_kv, T, d, theta in DECODE_SHAPES:
            args = _decode_case(B, H, H_kv, T, d, theta, torch.Generator().manual_seed(100 * seed + d))
            labels.append(f"seed {seed}, {_describe_decode(args, theta)}")
            cases.append(args)
    g = torch.Generator().manual_seed(7)
    for label, shape, pads in (
            ("an empty cache (T = 0: the new token attends to itself only)", (2, 4, 2, 0, 8), [0, 0]),
            ("row 1's cache is all padding (its new token is at position 0)", (3, 4, 2, 6, 16), [0, 6, 2]),
            ("no padding, 100 cached tokens (the new token at position 100)", (1, 2, 1, 100, 32), [0])):
        args = _decode_case(*shape, 10000.0, g, pads)
        labels.append(f"edge case: {label}; {_describe_decode(args, 10000.0)}")
        cases.append(args)
    return labels, cases


def reference_decode_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                          v_cache: torch.Tensor, attention_mask: torch.Tensor,
                          inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """course_lib.kv's own steps: positions_for (a row's position counts its real tokens), rope_cos_sin and
    apply_rope, KVCache.update, attend (softmax in float32, padding keys masked, repeat_kv)."""
    positions = positions_for(1, None, attention_mask, q.shape[0], q.device)  # (B, 1)
    cos, sin = rope_cos_sin(positions, inv_freq)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    cache = KVCache(1)
    cache.keys[0], cache.values[0] = k_cache, v_cache
    keys, values = cache.update(0, k, v)
    return attend(q, keys, values, key_mask=attention_mask), keys, values


def _rotate(x: torch.Tensor, angles: torch.Tensor, *, pairs: str = "half", sin_sign: int = 1) -> torch.Tensor:
    """RoPE on x (B, h, 1, d) with angles (B, d/2): pairs (i, i + d/2) ("half") or (2i, 2i + 1) ("adjacent")."""
    cos, sin = angles.cos()[:, None, None, :], sin_sign * angles.sin()[:, None, None, :]
    d = x.shape[-1]
    if pairs == "half":
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)


def _decode_by_hand(q, k, v, k_cache, v_cache, attention_mask, inv_freq, *, pos="real", rotate_q=True,
                    rotate_k=True, rotate_v=False, pairs="half", sin_sign=1, store="rotated", mask_pad=True,
                    gqa="interleave", scale=True, append="end") -> tuple[torch.Tensor, ...]:
    """The step in float64 as a learner writes it, with one choice passed in; the defaults are right."""
    B, H, _, d = q.shape
    H_kv, T = k.shape[1], k_cache.shape[2]
    real = attention_mask[:, :T].sum(1).double()
    p = {"real": real, "cache_len": torch.full_like(real, T), "zero": torch.zeros_like(real), "plus1": real + 1,
         "minus1": real - 1}[pos]
    angles = p[:, None] * inv_freq.double()[None, :]
    q, k, v, k_cache, v_cache = (x.double() for x in (q, k, v, k_cache, v_cache))
    rot = lambda x: _rotate(x, angles, pairs=pairs, sin_sign=sin_sign)  # noqa: E731
    q_r, k_r, v_r = rot(q) if rotate_q else q, rot(k) if rotate_k else k, rot(v) if rotate_v else v
    k_stored = k_r if store == "rotated" else k
    join = (lambda cache, new: torch.cat([cache, new], 2)) if append == "end" else \
        (lambda cache, new: torch.cat([new, cache], 2))
    keys, values = join(k_cache, k_stored), join(v_cache, v_r)
    keys_now = join(k_cache, k_r)  # attention uses the rotated key even when the cache stores another
    group = H // H_kv
    expand = (lambda x: x.repeat_interleave(group, 1)) if gqa == "interleave" else (lambda x: x.repeat(1, group, 1, 1))
    scores = q_r @ expand(keys_now).transpose(-1, -2) / (math.sqrt(d) if scale else 1.0)
    if mask_pad:
        scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
    return torch.softmax(scores, -1) @ expand(values), keys, values


_DECODE_MESSAGES = {
    "cache_len": ("a left-padded row's new token is not at position T (the cache length): padding has no position. "
                  "Its position is the number of real tokens before it, attention_mask[:, :-1].sum(1) (or "
                  "attention_mask.sum(1) - 1), one per row."),
    "zero": ("you rotated the new query and key by position 0 (the seed's missing positions): rotate them by the "
             "new token's absolute position, the number of real tokens before it in its row."),
    "plus1": ("your positions are one too large: positions count from 0, so a token with n real tokens before it is "
              "at position n = attention_mask[:, :-1].sum(1)."),
    "minus1": ("your positions are one too small: a token with n real tokens before it is at position n "
               "(attention_mask[:, :-1].sum(1)), not n - 1."),
    "rotate_q": "you didn't rotate the query: RoPE rotates the query and the key by the new token's position.",
    "rotate_k": "you didn't rotate the new key: RoPE rotates the query and the key by the new token's position.",
    "rotate_v": "you rotated the value too: RoPE rotates queries and keys only.",
    "pairs": ("you rotated adjacent pairs (x0, x1), (x2, x3), ... (the original Llama code's complex-number layout). "
              "This model's layout pairs channel i with channel i + d/2 (transformers' rotate_half)."),
    "sin_sign": ("you rotated the wrong way: the first half is x_i cos - x_{i+d/2} sin, the second x_{i+d/2} cos + "
                 "x_i sin (angle = position * inv_freq[i])."),
    "store": ("you cached the key before rotating it: the cache holds keys after RoPE, each rotated once by its own "
              "position, so append the rotated key."),
    "mask_pad": ("padding keys are attended to: set the scores of keys whose attention_mask is 0 to -inf before the "
                 "softmax."),
    "gqa": ("your GQA mapping tiles the KV heads (0, 1, 0, 1, ...): consecutive query heads share a KV head, query "
            "head h reads KV head h // (H / H_kv) (repeat_interleave, not repeat)."),
    "scale": "you didn't scale the scores: q k^T / sqrt(head_dim).",
    "append": ("you put the new key and value first: the cache is in token order, so the new token goes at the end "
               "(torch.cat([k_cache, k], dim=2))."),
}
_DECODE_VARIANTS = tuple((dict(**{flag: value}), key) for flag, value, key in (
    ("pos", "cache_len", "cache_len"), ("pos", "zero", "zero"), ("pos", "plus1", "plus1"),
    ("pos", "minus1", "minus1"), ("rotate_q", False, "rotate_q"), ("rotate_k", False, "rotate_k"),
    ("rotate_v", True, "rotate_v"), ("pairs", "adjacent", "pairs"), ("sin_sign", -1, "sin_sign"),
    ("store", "unrotated", "store"), ("mask_pad", False, "mask_pad"), ("gqa", "tile", "gqa"),
    ("scale", False, "scale"), ("append", "front", "append")))
_DECODE_HINT = ("per row, p = attention_mask[:, :-1].sum(1) (real tokens before the new one); angles = p * inv_freq; "
                "rotate q and k (pairs i, i + d/2: x1 cos - x2 sin, x2 cos + x1 sin); k_cache = cat([k_cache, k], 2), "
                "the same for v; scores = q @ keys^T / sqrt(d) with each KV head repeated for H / H_kv consecutive "
                "query heads, -inf where attention_mask is 0; out = softmax(scores) @ values.")
_DECODE_PARTS = ("the output", "the key cache", "the value cache")


def _compare_decode(got: Any, expected: tuple) -> tuple[str, Any]:
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return f"expected a tuple (out, k_cache, v_cache), got {type(got).__name__} {_short(got)}.", None
    problems = []
    for name, g, e in zip(_DECODE_PARTS, got, expected):
        problem, comparable = _tensor_mismatch(g, e, DECODE_ATOL, DECODE_RTOL, torch)
        if not comparable:
            return f"{name}: {problem}", None
        problems.append((name, problem))
    comparable = tuple(g.detach().to("cpu", torch.float64) for g in got)
    for name, problem in problems:
        if problem:
            return f"{name}: {problem}", comparable
    return "", comparable


def _same_decode(a: tuple, b: tuple, atol: float = 10 * DECODE_ATOL, rtol: float = 10 * DECODE_RTOL) -> bool:
    return all(x.shape == y.shape and torch.allclose(x.double(), y.double(), atol=atol, rtol=rtol)
               for x, y in zip(a, b))


def _diagnose_decode(args: tuple, got: tuple) -> str | None:
    expected = reference_decode_step(*args)
    for kwargs, key in _DECODE_VARIANTS:
        mistake = _decode_by_hand(*args, **kwargs)
        if _same_decode(mistake, expected, DECODE_ATOL, DECODE_RTOL):
            continue  # this case cannot tell that mistake apart
        if _same_decode(got, mistake):
            return _DECODE_MESSAGES[key]
    return None


def check_decode_step(fn) -> bool:
    """fn(q, k, v, k_cache, v_cache, attention_mask, inv_freq) -> (out, k_cache, v_cache): one decode step of one
    attention layer with a KV cache, for a left-padded batch.

    q (B, H, 1, d): the new token's query; k, v (B, H_kv, 1, d): its key and value; all three before RoPE.
    k_cache, v_cache (B, H_kv, T, d): the T cached keys (already rotated, each by its own position) and values.
    attention_mask (B, T + 1): 1 for real tokens, 0 for the left padding; the last column is the new token (1).
    inv_freq (d/2,): RoPE's frequencies.

    1. The new token's position in row b is the number of real tokens before it, p = attention_mask[b, :T].sum()
       (padding has no position; T is the row's position only when it has no padding).
    2. Rotate q and k (never v) by the angles p * inv_freq[i], pairing channel i with channel i + d/2:
       (x_i, x_{i+d/2}) -> (x_i cos - x_{i+d/2} sin, x_{i+d/2} cos + x_i sin).
    3. The cache update: append the rotated key and the value at the end, k_cache = cat([k_cache, k], dim=2).
    4. Attend: scores = q k^T / sqrt(d) over the T + 1 keys, query head h reading KV head h // (H / H_kv); keys
       where attention_mask is 0 get -inf; out = softmax(scores) @ values, of shape (B, H, 1, d).

    Return out and both updated caches (B, H_kv, T + 1, d). Checked against course_lib.kv.attention's own steps on
    random tensors with (B, H, H_kv, T, d) in {(2, 4, 2, 7, 8), (1, 4, 4, 12, 16), (3, 6, 2, 20, 32),
    (4, 8, 1, 33, 64)} (GQA, MHA and MQA), seeds 0, 1, 2; then an empty cache, a row whose cache is all padding, and
    100 cached tokens. Tolerance: |got - expected| <= 1e-4 + 1e-4 * |expected| for each of the three tensors.
    """
    labels, cases = decode_step_cases()
    return check_against("decode_step", fn, cases, reference_decode_step, _compare_decode, labels=labels,
                         hint=_DECODE_HINT, diagnose=_diagnose_decode)


# --- 2. appending to a paged cache, with copy-on-write ---------------------------------------------------------------

PAGED_SEEDS = (0, 1, 2)
PAGED_SHAPES = ((4, 2, 4), (2, 1, 8), (8, 2, 4), (16, 2, 8))  # (block_size, KV heads, head_dim)
PAGED_BLOCKS = 32


@dataclass
class PagedAnswer:
    """What paged_append returns, plus `care`: bool (num_blocks, block_size), the slots that are compared (all but
    the unused tails of the blocks allocated in this step, whose old contents do not matter)."""

    k_blocks: torch.Tensor
    table: list[int]
    refcount: list[int]
    free: list[int]
    care: torch.Tensor


def _answer(k_blocks: torch.Tensor, table: list[int], refcount: list[int], free: list[int], old_table: list[int],
            length: int) -> PagedAnswer:
    block_size = k_blocks.shape[1]
    care = torch.ones(k_blocks.shape[:2], dtype=torch.bool)
    for j, block in enumerate(table):
        if block not in old_table:
            care[block] = j * block_size + torch.arange(block_size) < length
    return PagedAnswer(k_blocks, list(table), list(refcount), list(free), care)


def _state(cache: PagedKVCache, seq, n: int, g: torch.Generator) -> tuple:
    """paged_append's arguments for appending n random tokens to `seq` of a real cache."""
    return (cache.k_blocks[0].clone(), cache.block_table(seq), cache.seq_len(seq),
            torch.randn(n, cache.num_kv_heads, cache.head_dim, generator=g), list(cache.allocator._refs),
            list(cache.allocator._free))


def _new_cache(block_size: int, heads: int, head_dim: int, g: torch.Generator) -> PagedKVCache:
    order = torch.randperm(PAGED_BLOCKS, generator=g).tolist()  # physical blocks handed out in a shuffled order
    return PagedKVCache(PAGED_BLOCKS, block_size, num_kv_heads=heads, head_dim=head_dim, block_order=order)


def _fill(cache: PagedKVCache, seq, n: int, g: torch.Generator, *, new: bool = True) -> None:
    if new:
        cache.add_sequence(seq)
    k = torch.randn(n, cache.num_kv_heads, cache.head_dim, generator=g)
    cache.append(seq, [k], [k.clone()])


def paged_append_cases() -> tuple[list[str], list[tuple]]:
    """(labels, argument tuples (k_blocks, table, seq_len, k_new, refcount, free)) of check_paged_append: states
    built by real adds, appends, forks and frees of a PagedKVCache, then the tokens to append."""
    labels, cases = [], []
    for seed in PAGED_SEEDS:
        for block_size, heads, head_dim in PAGED_SHAPES:
            g = torch.Generator().manual_seed(1000 * seed + block_size)
            cache = _new_cache(block_size, heads, head_dim, g)
            for seq in "abc":
                _fill(cache, seq, int(torch.randint(1, 3 * block_size, (1,), generator=g)), g)
            cache.fork("a", "a2")      # a parallel sample of a: shares all of a's blocks
            cache.fork("b", "b2")
            _fill(cache, "b2", int(torch.randint(1, block_size + 1, (1,), generator=g)), g, new=False)
            cache.free("c")            # its blocks go back on the free list
            target = ["a2", "a", "b"][(seed + block_size) % 3]
            n = int(torch.randint(1, 2 * block_size + 2, (1,), generator=g))
            args = _state(cache, target, n, g)
            cow = args[2] % block_size != 0 and args[4][args[1][-1]] > 1
            labels.append(f"seed {seed}, block_size {block_size}, H {heads}, d {head_dim}: seq_len {args[2]}, table "
                          f"{args[1]} (reference counts {[args[4][b] for b in args[1]]}), n = {n} new tokens"
                          + (" (the last block is shared and partly filled)" if cow else ""))
            cases.append(args)

    def edge(label, build, seq, n, block_size=4):
        g = torch.Generator().manual_seed(50 + len(cases))
        cache = _new_cache(block_size, 2, 4, g)
        build(cache, g)
        args = _state(cache, seq, n, g)
        labels.append(f"edge case: {label}; block_size {block_size}: seq_len {args[2]}, table {args[1]} (reference "
                      f"counts {[args[4][b] for b in args[1]]}), n = {n} new tokens")
        cases.append(args)

    def fork_of(length, *, children=("s2",), first=0):
        def build(cache, g):
            _fill(cache, "other", 6, g)
            _fill(cache, "s", length, g)
            for child in children:
                cache.fork("s", child)
            if first:
                _fill(cache, children[0], first, g, new=False)
        return build

    edge("a new sequence (an empty table): two blocks", lambda c, g: (_fill(c, "other", 5, g), c.add_sequence("s")),
         "s", 5)
    edge("the last block is partly filled and not shared: fill it, then a new block", fork_of(6, children=()), "s", 4)
    edge("parallel sampling: a fork's first token goes into the shared, partly filled last block (copy-on-write)",
         fork_of(6), "s2", 1)
    edge("the parent's next token, after the fork: its last block is shared too (copy-on-write)", fork_of(7), "s", 2)
    edge("a fork whose shared last block is full: no copy, a new block", fork_of(8), "s2", 1)
    edge("a shared, partly filled last block and no new token: nothing changes", fork_of(6), "s2", 0)
    edge("copy-on-write, then two more blocks (n = 2 * block_size + 1)", fork_of(5), "s2", 9)
    edge("the last block shared three ways (reference count 3): copied, its count drops to 2",
         fork_of(6, children=("s2", "s3")), "s3", 1)
    edge("earlier blocks shared, the last one this fork's own (it copied already): no copy", fork_of(5, first=1),
         "s2", 1)
    edge("the tokens fill the last block exactly (no new block)", fork_of(5, children=()), "s", 3)
    return labels, cases


def reference_paged_append(k_blocks: torch.Tensor, table: list[int], seq_len: int, k_new: torch.Tensor,
                           refcount: list[int], free: list[int]) -> PagedAnswer:
    """PagedKVCache.append on a cache holding this state (one layer; the values go the same way as the keys)."""
    num_blocks, block_size, heads, head_dim = k_blocks.shape
    cache = PagedKVCache(num_blocks, block_size, num_kv_heads=heads, head_dim=head_dim, dtype=k_blocks.dtype)
    cache.k_blocks[0].copy_(k_blocks)
    cache.allocator._free, cache.allocator._refs = list(free), list(refcount)
    cache._tables["seq"], cache._lens["seq"] = list(table), seq_len
    cache.append("seq", [k_new], [k_new.clone()])
    return _answer(cache.k_blocks[0], cache.block_table("seq"), cache.allocator._refs, cache.allocator._free,
                   table, seq_len + k_new.shape[0])


def _append_by_hand(k_blocks, table, seq_len, k_new, refcount, free, *, cow="partial_shared", copy=True,
                    decref=True, release=False, new_ref=True, pop="end", order="cow_first", offset="position",
                    fill_last=True) -> PagedAnswer:
    """The append as a learner writes it, with one choice passed in; the defaults are right."""
    k, table, ref, free = k_blocks.clone(), list(table), list(refcount), list(free)
    old_table, n, bs = list(table), k_new.shape[0], k.shape[1]

    def allocate() -> int:
        block = free.pop() if pop == "end" else free.pop(0)
        if new_ref:
            ref[block] = 1
        return block

    partial, shared = seq_len % bs != 0, bool(table) and ref[table[-1]] > 1
    need_cow = {"partial_shared": n > 0 and partial and shared, "never": False, "shared": n > 0 and shared,
                "partial": n > 0 and partial, "even_n0": partial and shared}[cow]
    need_cow = need_cow and fill_last  # a learner who never writes into the last block never copies it

    def copy_on_write() -> None:
        old, new = table[-1], allocate()
        if copy:
            k[new] = k[old]
        if decref or release:
            ref[old] -= 1
        if release:
            free.append(old)
        table[-1] = new

    if need_cow and order == "cow_first":
        copy_on_write()
    if fill_last:
        while len(table) < -(-(seq_len + n) // bs):
            table.append(allocate())
        if need_cow and order == "cow_last":
            copy_on_write()
        slots = [(table[(seq_len + j) // bs], (seq_len + j) % bs if offset == "position" else j % bs)
                 for j in range(n)]
    else:  # new tokens start a fresh block, the partly filled last one is left as it is
        first = len(table)
        while len(table) < first + -(-n // bs):
            table.append(allocate())
        slots = [(table[first + j // bs], j % bs) for j in range(n)]
    for j, (block, offset_j) in enumerate(slots):
        k[block, offset_j] = k_new[j]
    return _answer(k, table, ref, free, old_table, seq_len + n)


_PAGED_MESSAGES = {
    "no_cow": ("you wrote into a shared block: the last block is partly filled and its reference count is above 1, "
               "so another sequence reads it. Copy it first (copy-on-write): take a free block, copy the old "
               "block's keys into it, drop one reference to the old block, give the new one a count of 1 and put it "
               "at the end of the table."),
    "cow_full": ("you copied a full shared block: a full block is never written again (the new tokens go into a new "
                 "block), so it stays shared. Copy only a shared, partly filled last block."),
    "cow_unshared": ("you copied a block nobody else uses (reference count 1): write into it directly. Copy only "
                     "when the partly filled last block is shared (reference count > 1)."),
    "cow_n0": "with no new token there is nothing to write, so nothing to copy: return the state unchanged.",
    "no_copy": ("your copy-on-write block lacks the old block's contents: copy the keys of the old block into the new "
                "one (k_blocks[new] = k_blocks[old]) before writing the new tokens."),
    "no_decref": ("after copying, the sequence no longer uses the old block: drop its reference, "
                  "refcount[old] -= 1 (the other owners keep it)."),
    "release": ("you put the copied block back on the free list: the other sequences still use it (its count was "
                "above 1). Only drop one reference, refcount[old] -= 1; a block is free when its count reaches 0."),
    "new_ref": "a newly allocated block needs a reference count of 1: refcount[block] = 1.",
    "pop": ("you took free blocks from the front of the free list: take them with free.pop(), from the end (the "
            "allocator's order)."),
    "order": ("you allocated the new blocks before the copy-on-write block: do the copy first (it replaces the last "
              "block of the table), then append the new blocks."),
    "offset": ("your slots are off: token t of the sequence (t = seq_len + j) goes to block table[t // block_size] at "
               "offset t % block_size, not j % block_size."),
    "fill_last": ("you started a new block although the last one had room: token t goes to table[t // block_size], so "
                  "the partly filled last block is filled first."),
}
_PAGED_VARIANTS = tuple((dict(**{flag: value}), key) for flag, value, key in (
    ("cow", "never", "no_cow"), ("cow", "shared", "cow_full"), ("cow", "partial", "cow_unshared"),
    ("cow", "even_n0", "cow_n0"), ("copy", False, "no_copy"), ("decref", False, "no_decref"),
    ("release", True, "release"), ("new_ref", False, "new_ref"), ("pop", "front", "pop"),
    ("order", "cow_last", "order"), ("offset", "sequence", "offset"), ("fill_last", False, "fill_last")))
_PAGED_HINT = ("n = len(k_new); if n > 0 and seq_len % block_size != 0 and refcount[table[-1]] > 1: new = free.pop(); "
               "refcount[new] = 1; k_blocks[new] = k_blocks[table[-1]]; refcount[table[-1]] -= 1; table[-1] = new. "
               "Then while len(table) < ceil((seq_len + n) / block_size): b = free.pop(); refcount[b] = 1; "
               "table.append(b). Token t = seq_len + j goes to k_blocks[table[t // block_size], t % block_size].")


def _int_list(x: Any) -> list[int] | None:
    if isinstance(x, torch.Tensor):
        if x.dim() != 1 or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            return None
        return [int(v) for v in x.tolist()]
    if not isinstance(x, (list, tuple)):
        return None
    out = []
    for v in x:
        if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point() and v.dtype != torch.bool:
            out.append(int(v))
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append(v)
        else:
            return None
    return out


def _compare_paged(got: Any, expected: PagedAnswer) -> tuple[str, Any]:
    if not isinstance(got, (tuple, list)) or len(got) != 4:
        return f"expected a tuple (k_blocks, table, refcount, free), got {type(got).__name__} {_short(got)}.", None
    k, *lists = got
    if not isinstance(k, torch.Tensor) or tuple(k.shape) != tuple(expected.k_blocks.shape):
        what = f"shape {tuple(k.shape)}" if isinstance(k, torch.Tensor) else type(k).__name__
        return f"k_blocks: expected a tensor of shape {tuple(expected.k_blocks.shape)}, got {what}.", None
    if k.is_complex() or k.dtype == torch.bool:
        return f"k_blocks: expected real numbers, got dtype {k.dtype}.", None
    converted = []
    for name, x in zip(("table", "refcount", "free"), lists):
        xs = _int_list(x)
        if xs is None:
            return f"{name}: expected a list of ints, got {type(x).__name__} {_short(x)}.", None
        converted.append(xs)
    answer = PagedAnswer(k.detach().to("cpu", torch.float64), *converted, care=expected.care)
    for name, g, e in zip(("the block table", "the reference counts", "the free list"), converted,
                          (expected.table, expected.refcount, expected.free)):
        if g == e:
            continue
        if name == "the reference counts" and len(g) == len(e):
            diff = [f"block {b}: expected {x}, got {y}" for b, (x, y) in enumerate(zip(e, g)) if x != y]
            return f"{name}: {'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}.", answer
        return f"{name}: expected {_short(e)}, got {_short(g)}.", answer
    wrong = (answer.k_blocks != expected.k_blocks.double()).any(-1).any(-1) & expected.care  # (blocks, slots)
    if bool(wrong.any()):
        block, slot = (int(i) for i in wrong.nonzero()[0])
        owner = (f"token {expected.table.index(block) * expected.k_blocks.shape[1] + slot} of the sequence"
                 if block in expected.table else "a block the sequence does not use")
        count = int(wrong.sum())
        return (f"the keys: {count} slot{'s' if count > 1 else ''} of k_blocks hold{'' if count > 1 else 's'} other "
                f"values than expected; the first is block {block}, slot {slot} ({owner}).", answer)
    return "", answer


def _same_paged(a: PagedAnswer, b: PagedAnswer) -> bool:
    return (a.table == b.table and a.refcount == b.refcount and a.free == b.free
            and bool(((a.k_blocks.double() == b.k_blocks.double()).all(-1).all(-1) | ~b.care).all()))


def _diagnose_paged(args: tuple, got: PagedAnswer) -> str | None:
    expected = reference_paged_append(*args)
    for kwargs, key in _PAGED_VARIANTS:
        try:
            mistake = _append_by_hand(*args, **kwargs)
        except IndexError:  # the mistake runs out of free blocks, or reads past the table, on this case
            continue
        if _same_paged(mistake, expected):
            continue  # this case cannot tell that mistake apart
        if _same_paged(got, mistake):
            return _PAGED_MESSAGES[key]
    return None


def check_paged_append(fn) -> bool:
    """fn(k_blocks, table, seq_len, k_new, refcount, free) -> (k_blocks, table, refcount, free): append n new tokens'
    keys to one sequence of a paged KV cache (PagedAttention), copying a shared block before writing into it.

    k_blocks (num_blocks, block_size, H, d): one layer's pool of physical blocks (the values go the same way);
    table: the sequence's block table, a list of physical block ids (logical block i lives in block table[i]);
    seq_len: the tokens the sequence holds (its table has ceil(seq_len / block_size) blocks); k_new (n, H, d): the
    new tokens' keys; refcount: a list, the number of sequences using each physical block; free: the list of free
    block ids, handed out from its end with free.pop().

    1. Copy-on-write: if n > 0 and the last block is partly filled (seq_len % block_size != 0) and shared
       (refcount > 1), take a free block, copy the old block's keys into it, set its count to 1, drop one
       reference to the old block (its other owners keep it) and put the new block at the end of the table.
       A full shared block is never written again and stays shared.
    2. Take free blocks (count 1 each) until the table holds ceil((seq_len + n) / block_size) blocks.
    3. Token t = seq_len + j goes to block table[t // block_size], slot t % block_size: k_blocks[...] = k_new[j].

    Return the four (changed in place or new). The table, the counts and the free list must be equal; the keys
    equal in every slot except the unused tails of the blocks allocated in this step. There are always enough free
    blocks. Checked against course_lib.kv.paged.PagedKVCache.append on states built by real adds, appends, forks and
    frees (block_size 2, 4, 8 and 16), seeds 0, 1, 2; then an empty table, a block with room, a fork's first token,
    the parent after a fork, a full shared block, no new token, a copy followed by two blocks, a block shared three
    ways, a fork that copied already, and tokens that fill the last block exactly.
    """
    labels, cases = paged_append_cases()
    return check_against("paged_append", fn, cases, reference_paged_append, _compare_paged, labels=labels,
                         hint=_PAGED_HINT, diagnose=_diagnose_paged)


WARM_UPS = ("kv_cache_bytes", "kv_head", "blocks_needed", "kivi_bits")
EXERCISES = {
    "kv_cache_bytes": check_kv_cache_bytes,
    "kv_head": check_kv_head,
    "blocks_needed": check_blocks_needed,
    "kivi_bits": check_kivi_bits,
    "decode_step": check_decode_step,
    "paged_append": check_paged_append,
}
