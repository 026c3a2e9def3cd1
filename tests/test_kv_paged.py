"""The paged KV cache: block accounting, copy-on-write, errors, and paged attention against SDPA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.kv.paged import (
    BlockAllocator,
    DoubleFreeError,
    OutOfBlocksError,
    PagedKVCache,
    SequenceNotFoundError,
    blocks_needed,
    paged_attention,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H_KV, D = 2, 8


def kv(n: int, gen: torch.Generator, heads: int = H_KV) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, heads, D, generator=gen), torch.randn(n, heads, D, generator=gen)


def filled_cache(lengths, *, heads=H_KV, block_size=4, shuffle=True, layers=2, seed=0):
    """A cache over a random permutation of physical blocks, plus the keys/values each sequence got."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks = 40
    order = torch.randperm(num_blocks, generator=gen).tolist() if shuffle else None
    cache = PagedKVCache(num_blocks, block_size, num_layers=layers, num_kv_heads=heads, head_dim=D, block_order=order)
    truth = {}
    for sid, n in enumerate(lengths):
        cache.add_sequence(sid)
        ks, vs = zip(*[kv(n, gen, heads) for _ in range(layers)])
        # Write in two pieces, as prefill then decode would.
        cut = n // 2
        cache.append(sid, [k[:cut] for k in ks], [v[:cut] for v in vs])
        cache.append(sid, [k[cut:] for k in ks], [v[cut:] for v in vs])
        truth[sid] = (ks, vs)
    return cache, truth


def reference_attention(q, k, v, n_kv):
    """Contiguous attention with SDPA: q (n_q, q_len, d), k/v (L, n_kv, d); causal mask bottom-right."""
    n_q, q_len, _ = q.shape
    L = k.shape[0]
    k = k.transpose(0, 1).repeat_interleave(n_q // n_kv, dim=0)  # (n_q, L, d)
    v = v.transpose(0, 1).repeat_interleave(n_q // n_kv, dim=0)
    i = torch.arange(q_len)[:, None]
    j = torch.arange(L)[None, :]
    mask = j <= (L - q_len) + i  # query i is token L - q_len + i
    return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask)[0]


@pytest.mark.parametrize("q_len", [1, 5])
def test_paged_attention_over_shuffled_blocks_matches_sdpa(q_len):
    lengths = [5, 17, 40] if q_len == 5 else [1, 17, 40]
    cache, truth = filled_cache(lengths, shuffle=True)
    # The physical blocks really are scattered: some table is not increasing.
    assert any(t != sorted(t) for t in (cache.block_table(s) for s in range(3)))
    gen = torch.Generator().manual_seed(1)
    n_q = 4
    q = torch.randn(len(lengths), n_q, q_len, D, generator=gen)
    for layer in range(2):
        out = paged_attention(q, cache, layer, [0, 1, 2])
        assert out.shape == (3, n_q, q_len, D)
        for b, sid in enumerate(range(3)):
            ref = reference_attention(q[b], truth[sid][0][layer], truth[sid][1][layer], H_KV)
            torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=1e-5)


def test_gqa_mapping_is_repeat_interleave_not_tiling():
    gen = torch.Generator().manual_seed(2)
    # n_kv = n_q: paged GQA is plain multi-head attention.
    cache, truth = filled_cache([9, 23], heads=4, layers=1)
    q = torch.randn(2, 4, 1, D, generator=gen)
    out = paged_attention(q, cache, 0, [0, 1])
    for b in range(2):
        k, v = truth[b][0][0], truth[b][1][0]
        mha = F.scaled_dot_product_attention(q[b][None], k.transpose(0, 1)[None], v.transpose(0, 1)[None])[0]
        torch.testing.assert_close(out[b], mha, atol=1e-5, rtol=1e-5)
    # n_q = 4, n_kv = 2: the tiling map h % n_kv gives a different answer, so the test would catch it.
    cache, truth = filled_cache([9, 23], heads=2, layers=1)
    out = paged_attention(q, cache, 0, [0, 1])
    k, v = truth[1][0][0], truth[1][1][0]
    tiled = F.scaled_dot_product_attention(
        q[1][None], k.transpose(0, 1).repeat(2, 1, 1)[None], v.transpose(0, 1).repeat(2, 1, 1)[None]
    )[0]
    assert (out[1] - tiled).abs().max() > 1e-2
    torch.testing.assert_close(out[1], reference_attention(q[1], k, v, 2), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple"):
        paged_attention(torch.randn(2, 3, 1, D), cache, 0, [0, 1])


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_block_counts_and_freeing_everything(block_size):
    cache = PagedKVCache(64, block_size, num_kv_heads=1, head_dim=2)
    lengths = [1, 3, 4, 5, 16, 17, 33]
    lengths = [n for n in lengths if blocks_needed(n, block_size) <= 64 // len(lengths)]
    for sid, n in enumerate(lengths):
        cache.add_sequence(sid)
        cache.append(sid, [torch.ones(n, 1, 2)], [torch.ones(n, 1, 2)])
        assert len(cache.block_table(sid)) == math.ceil(n / block_size)
        assert cache.seq_len(sid) == n
    assert cache.blocks_in_use() == sum(math.ceil(n / block_size) for n in lengths)
    cache.fork(0, "child")
    cache.append("child", [torch.ones(2, 1, 2)], [torch.ones(2, 1, 2)])
    for sid in [*range(len(lengths)), "child"]:
        cache.free(sid)
    assert cache.allocator.num_free == cache.num_blocks == 64
    assert all(cache.allocator.refcount(b) == 0 for b in range(64))
    assert cache.blocks_in_use() == 0 and cache.bytes_allocated() == 0


def test_blocks_needed():
    assert [blocks_needed(n, 16) for n in (0, 1, 15, 16, 17, 32, 33)] == [0, 1, 1, 1, 2, 2, 3]
    assert blocks_needed(7, 1) == 7
    for bad in [(5, 0), (5, -1), (5, 2.0), (-1, 4)]:
        with pytest.raises(ValueError):
            blocks_needed(*bad)


def test_fork_shares_blocks_and_copy_on_write_protects_the_parent():
    gen = torch.Generator().manual_seed(3)
    cache = PagedKVCache(16, 4, num_layers=2, num_kv_heads=H_KV, head_dim=D)
    cache.add_sequence("p")
    k, v = kv(6, gen)  # blocks: one full (4 tokens), one partly filled (2 of 4)
    cache.append("p", [k, k * 2], [v, v * 2])
    cache.fork("p", "c")
    full, partial = cache.block_table("p")
    assert cache.block_table("c") == [full, partial]
    assert cache.allocator.refcount(full) == 2 and cache.allocator.refcount(partial) == 2
    before = [cache.gather(layer, "p") for layer in range(2)]
    used = cache.blocks_in_use()

    k1, v1 = kv(1, gen)
    cache.append("c", [k1, k1 * 2], [v1, v1 * 2])
    child_table = cache.block_table("c")
    assert child_table[0] == full and child_table[1] != partial  # the partly filled block was copied
    assert cache.allocator.refcount(full) == 2 and cache.allocator.refcount(partial) == 1
    assert cache.blocks_in_use() == used + 1
    for layer, scale in enumerate((1, 2)):
        pk, pv = cache.gather(layer, "p")
        torch.testing.assert_close(pk, before[layer][0], rtol=0, atol=0)  # parent unchanged
        torch.testing.assert_close(pv, before[layer][1], rtol=0, atol=0)
        ck, cv = cache.gather(layer, "c")
        assert ck.shape[0] == 7 and cache.seq_len("p") == 6
        torch.testing.assert_close(ck, torch.cat([k, k1]) * scale)  # copied prefix + the new token
        torch.testing.assert_close(cv, torch.cat([v, v1]) * scale)

    # The parent now owns its partial block alone: it writes in place, no copy.
    cache.append("p", [k1, k1], [v1, v1])
    assert cache.block_table("p") == [full, partial] and cache.blocks_in_use() == used + 1


def test_appending_to_a_child_with_a_full_last_block_does_not_copy():
    cache = PagedKVCache(8, 4, num_kv_heads=1, head_dim=2)
    cache.add_sequence("p")
    cache.append("p", [torch.ones(8, 1, 2)], [torch.ones(8, 1, 2)])  # exactly two full blocks
    cache.fork("p", "c")
    cache.append("c", [torch.zeros(1, 1, 2)], [torch.zeros(1, 1, 2)])
    assert cache.block_table("c")[:2] == cache.block_table("p")
    assert len(cache.block_table("c")) == 3 and cache.blocks_in_use() == 3
    assert [cache.allocator.refcount(b) for b in cache.block_table("p")] == [2, 2]


def test_out_of_blocks_rolls_back():
    cache = PagedKVCache(3, 4, num_kv_heads=1, head_dim=2)
    cache.add_sequence(0)
    cache.append(0, [torch.ones(6, 1, 2)], [torch.ones(6, 1, 2)])
    free, table = cache.allocator.num_free, cache.block_table(0)
    with pytest.raises(OutOfBlocksError, match=r"needs 2 new block\(s\).*only 1 of 3 are free.*[Ff]ree finished"):
        cache.reserve(0, 7)
    assert cache.allocator.num_free == free and cache.block_table(0) == table and cache.seq_len(0) == 6
    # Copy-on-write counts its extra block too: a forked child cannot write with no free block.
    cache.reserve(0, 2)  # fills block 2 exactly
    cache.fork(0, 1)
    cache.reserve(1, 4)  # takes the last free block
    cache.add_sequence(2)
    with pytest.raises(OutOfBlocksError):
        cache.reserve(2, 1)
    alloc = BlockAllocator(1)
    alloc.allocate()
    with pytest.raises(OutOfBlocksError, match="0 of 1 are free"):
        alloc.allocate()


def test_errors():
    alloc = BlockAllocator(2)
    b = alloc.allocate()
    alloc.free(b)
    with pytest.raises(DoubleFreeError, match="already free"):
        alloc.free(b)
    cache = PagedKVCache(4, 4, num_kv_heads=1, head_dim=2)
    cache.add_sequence("a")
    for call in (lambda: cache.free("zz"), lambda: cache.block_table("zz"),
                 lambda: cache.append("zz", [torch.ones(1, 1, 2)], [torch.ones(1, 1, 2)])):
        with pytest.raises(SequenceNotFoundError) as info:
            call()
        assert str(info.value).startswith("Unknown sequence id 'zz'")  # not repr-quoted
        assert "'a'" in str(info.value) and "add_sequence" in str(info.value)
    assert isinstance(info.value, KeyError)
    with pytest.raises(ValueError, match="already exists"):
        cache.add_sequence("a")
    with pytest.raises(ValueError, match="block_size"):
        PagedKVCache(4, 0, num_kv_heads=1, head_dim=2)
    with pytest.raises(ValueError, match="num_blocks"):
        PagedKVCache(0, 4, num_kv_heads=1, head_dim=2)
    with pytest.raises(ValueError, match="must be"):
        cache.append("a", [torch.ones(1, 2, 2)], [torch.ones(1, 2, 2)])
    assert cache.blocks_in_use() == 0  # the bad append reserved nothing


def test_bytes_allocated_is_the_sum_of_referenced_blocks():
    cache, _ = filled_cache([3, 10, 21], layers=2)
    cache.fork(1, "f")  # sharing adds no bytes
    blocks = {b for s in (0, 1, 2, "f") for b in cache.block_table(s)}
    expected = sum(
        cache.k_blocks[layer][b].nbytes + cache.v_blocks[layer][b].nbytes for layer in range(2) for b in blocks
    )
    assert cache.bytes_allocated() == expected == len(blocks) * cache.bytes_per_block()
    assert cache.blocks_in_use() == len(blocks)


def test_block_tables_tensor_pads_with_zero():
    cache, _ = filled_cache([1, 9], block_size=4, shuffle=False, layers=1)
    tables, lens = cache.block_tables_tensor([0, 1])
    assert tables.tolist() == [[0, 0, 0], [1, 2, 3]] and lens.tolist() == [1, 9]
    slots = cache.reserve(1, 3)  # tokens 9, 10, 11 -> block 3, offsets 1..3
    assert slots.tolist() == [3 * 4 + 1, 3 * 4 + 2, 3 * 4 + 3]
