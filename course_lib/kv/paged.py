"""A paged KV cache, as in PagedAttention (Kwon et al., SOSP 2023, arXiv 2309.06180).

The cache is one pool of fixed-size *physical blocks* of ``block_size`` token slots. A sequence
owns a *block table*: logical block i of the sequence lives in physical block ``table[i]``, and
the physical blocks need not be contiguous or in order. Token t of a sequence sits in slot

    slot = table[t // block_size] * block_size + t % block_size

of the flattened pool (the *slot mapping*). Blocks are handed out on demand, so at most
``block_size - 1`` slots per sequence are empty (the unfilled tail of its last block).

Blocks carry reference counts, so sequences can share them: ``fork`` makes a child that points at
its parent's blocks. Writing into a shared, partly filled last block first copies it into a fresh
block (*copy-on-write*); full shared blocks are never written again and stay shared.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch


class OutOfBlocksError(RuntimeError):
    """The pool has fewer free blocks than a request needs."""


class DoubleFreeError(RuntimeError):
    """A block was freed more times than it was referenced."""


class SequenceNotFoundError(KeyError):
    """An operation named a sequence id the cache does not know."""

    def __str__(self) -> str:  # KeyError would print the message repr-quoted
        return str(self.args[0]) if self.args else ""


def blocks_needed(n_tokens: int, block_size: int) -> int:
    """Number of blocks that hold n tokens: ceil(n / B)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
        raise ValueError(f"n_tokens must be an int >= 0, got {n_tokens!r}.")
    return -(-n_tokens // block_size)


class BlockAllocator:
    """A free list of physical block ids with reference counts."""

    def __init__(self, num_blocks: int, *, order: list[int] | None = None) -> None:
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be an int >= 1, got {num_blocks!r}.")
        order = list(range(num_blocks)) if order is None else [int(b) for b in order]
        if sorted(order) != list(range(num_blocks)):
            raise ValueError(f"order must be a permutation of range({num_blocks}), got {order[:8]}...")
        self.num_blocks = num_blocks
        self._free = order[::-1]  # allocate() pops from the end, so order[0] is handed out first
        self._refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """Take a free block; its reference count becomes 1."""
        if not self._free:
            raise OutOfBlocksError(
                f"Asked for 1 block but 0 of {self.num_blocks} are free. Free finished sequences, "
                "run fewer or shorter sequences, or give the cache more blocks."
            )
        block = self._free.pop()
        self._refs[block] = 1
        return block

    def incref(self, block: int) -> None:
        if self.refcount(block) == 0:
            raise ValueError(f"Block {block} is free; allocate it before sharing it.")
        self._refs[block] += 1

    def free(self, block: int) -> None:
        """Drop one reference; at zero the block goes back on the free list."""
        if self.refcount(block) == 0:
            raise DoubleFreeError(f"Block {block} is already free (reference count 0); it was freed twice.")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free.append(block)

    def refcount(self, block: int) -> int:
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"Block id {block} is outside 0..{self.num_blocks - 1}.")
        return self._refs[block]


class PagedKVCache:
    """Keys and values of many sequences in one pool of blocks, for every layer.

    ``k_blocks[layer]`` and ``v_blocks[layer]`` have shape (num_blocks, block_size, num_kv_heads,
    head_dim). All layers share the block tables: token t of a sequence uses the same slot in
    every layer.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int = 16,
        *,
        num_layers: int = 1,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        block_order: list[int] | None = None,
    ) -> None:
        blocks_needed(0, block_size)  # validates block_size
        for name, value in {"num_layers": num_layers, "num_kv_heads": num_kv_heads, "head_dim": head_dim}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        self.allocator = BlockAllocator(num_blocks, order=block_order)
        self.block_size = block_size
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.k_blocks = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_blocks = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._tables: dict[Hashable, list[int]] = {}
        self._lens: dict[Hashable, int] = {}

    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    @property
    def device(self) -> torch.device:
        return self.k_blocks[0].device

    # ---- sequences -------------------------------------------------------------------------
    def _table(self, seq_id: Hashable) -> list[int]:
        if seq_id not in self._tables:
            known = list(self._tables)[:5]
            more = ", ..." if len(self._tables) > 5 else ""
            raise SequenceNotFoundError(
                f"Unknown sequence id {seq_id!r}; known ids: {known}{more}. Call add_sequence({seq_id!r}) first."
            )
        return self._tables[seq_id]

    def add_sequence(self, seq_id: Hashable) -> None:
        if seq_id in self._tables:
            raise ValueError(f"Sequence {seq_id!r} already exists; free it first or use another id.")
        self._tables[seq_id], self._lens[seq_id] = [], 0

    def block_table(self, seq_id: Hashable) -> list[int]:
        return list(self._table(seq_id))

    def seq_len(self, seq_id: Hashable) -> int:
        self._table(seq_id)
        return self._lens[seq_id]

    def fork(self, parent: Hashable, child: Hashable) -> None:
        """The child shares every block of the parent (one more reference each); nothing is copied."""
        table = self._table(parent)
        self.add_sequence(child)
        for block in table:
            self.allocator.incref(block)
        self._tables[child], self._lens[child] = list(table), self._lens[parent]

    def free(self, seq_id: Hashable) -> None:
        """Drop the sequence's reference to each of its blocks and forget it."""
        for block in self._table(seq_id):
            self.allocator.free(block)
        del self._tables[seq_id], self._lens[seq_id]

    # ---- slots -----------------------------------------------------------------------------
    def reserve(self, seq_id: Hashable, n_tokens: int) -> torch.Tensor:
        """Slots for the next n tokens of a sequence, allocating (and copying on write) as needed.

        All or nothing: the blocks needed are counted first, so an OutOfBlocksError changes nothing.
        """
        table, length, bs = self._table(seq_id), self._lens[seq_id], self.block_size
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
            raise ValueError(f"n_tokens must be an int >= 0, got {n_tokens!r}.")
        # The last block is partly filled and shared: writing into it would change the other owners.
        cow = n_tokens > 0 and length % bs != 0 and self.allocator.refcount(table[-1]) > 1
        n_new = blocks_needed(length + n_tokens, bs) - len(table) + int(cow)
        if n_new > self.allocator.num_free:
            raise OutOfBlocksError(
                f"Sequence {seq_id!r} needs {n_new} new block(s) for {n_tokens} token(s) but only "
                f"{self.allocator.num_free} of {self.num_blocks} are free. Free finished sequences, "
                "run fewer or shorter sequences, or give the cache more blocks."
            )
        if cow:
            old, new = table[-1], self.allocator.allocate()
            for layer in range(self.num_layers):
                self.k_blocks[layer][new].copy_(self.k_blocks[layer][old])
                self.v_blocks[layer][new].copy_(self.v_blocks[layer][old])
            self.allocator.free(old)  # one reference fewer; the other owners keep it
            table[-1] = new
        while len(table) < blocks_needed(length + n_tokens, bs):
            table.append(self.allocator.allocate())
        pos = torch.arange(length, length + n_tokens, device=self.device)
        blocks = torch.tensor(table, dtype=torch.long, device=self.device)
        self._lens[seq_id] = length + n_tokens
        return blocks[pos // bs] * bs + pos % bs  # slot = block * B + offset

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store n keys and values, each (n, num_kv_heads, head_dim), at the given slots of a layer."""
        want = (slots.numel(), self.num_kv_heads, self.head_dim)
        for name, x in (("k", k), ("v", v)):
            if tuple(x.shape) != want:
                raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (n, num_kv_heads, head_dim) = {want}.")
        flat_k = self.k_blocks[layer].view(-1, self.num_kv_heads, self.head_dim)  # views share storage
        flat_v = self.v_blocks[layer].view(-1, self.num_kv_heads, self.head_dim)
        slots = slots.to(self.device)
        flat_k[slots] = k.to(flat_k.dtype)
        flat_v[slots] = v.to(flat_v.dtype)

    def append(self, seq_id: Hashable, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> torch.Tensor:
        """Reserve slots for n new tokens and write every layer's (n, H, d) keys and values there."""
        self._table(seq_id)
        if len(keys) != self.num_layers or len(values) != self.num_layers:
            raise ValueError(f"Give one key and one value tensor per layer ({self.num_layers}), "
                             f"got {len(keys)} and {len(values)}.")
        n = keys[0].shape[0]
        for x in list(keys) + list(values):
            if tuple(x.shape) != (n, self.num_kv_heads, self.head_dim):
                raise ValueError(f"Every tensor must be (n, num_kv_heads, head_dim) = "
                                 f"({n}, {self.num_kv_heads}, {self.head_dim}); got {tuple(x.shape)}.")
        slots = self.reserve(seq_id, n)
        for layer in range(self.num_layers):
            self.write(layer, slots, keys[layer], values[layer])
        return slots

    # ---- reading and accounting ------------------------------------------------------------
    def gather(self, layer: int, seq_id: Hashable) -> tuple[torch.Tensor, torch.Tensor]:
        """Contiguous (L, H, d) keys and values of a sequence, read through its block table."""
        table = torch.tensor(self._table(seq_id), dtype=torch.long, device=self.device)
        n = self._lens[seq_id]
        k = self.k_blocks[layer][table].reshape(-1, self.num_kv_heads, self.head_dim)[:n]
        v = self.v_blocks[layer][table].reshape(-1, self.num_kv_heads, self.head_dim)[:n]
        return k, v

    def blocks_in_use(self) -> int:
        return self.num_blocks - self.allocator.num_free

    def bytes_per_block(self) -> int:
        """K and V of one block in every layer: 2 · layers · B · H · d · bytes per element."""
        return 2 * self.num_layers * self.k_blocks[0][0].nbytes

    def bytes_allocated(self) -> int:
        return self.blocks_in_use() * self.bytes_per_block()

    def block_tables_tensor(self, seq_ids: Sequence[Hashable]) -> tuple[torch.Tensor, torch.Tensor]:
        """Block tables padded with block 0 to (B, max_blocks), and the context lengths (B,)."""
        tables = [self._table(s) for s in seq_ids]
        width = max([len(t) for t in tables] + [1])
        padded = torch.zeros(len(tables), width, dtype=torch.long)
        for row, table in enumerate(tables):
            padded[row, : len(table)] = torch.tensor(table, dtype=torch.long)
        lens = torch.tensor([self._lens[s] for s in seq_ids], dtype=torch.long)
        return padded.to(self.device), lens.to(self.device)


def paged_attention(
    q: torch.Tensor,
    cache: PagedKVCache,
    layer: int,
    seq_ids: Sequence[Hashable],
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of the last q_len tokens of each sequence over its cached keys and values.

    q: (B, n_q_heads, q_len, head_dim). Keys and values are read through the block tables:
    ``k_blocks[layer][tables]`` is (B, max_blocks, block_size, H, d), flattened to token order;
    slots past a sequence's length (padding blocks, the empty tail of its last block) are masked.
    Query i may see keys 0 .. ctx_len - q_len + i (causal mask aligned bottom-right).
    GQA: query head h reads KV head h // (n_q_heads // n_kv_heads).
    """
    if q.dim() != 4 or q.shape[0] != len(seq_ids):
        raise ValueError(f"q must be (B, n_q_heads, q_len, head_dim) with B = len(seq_ids) = {len(seq_ids)}; "
                         f"got {tuple(q.shape)}.")
    batch, n_q, q_len, d = q.shape
    n_kv = cache.num_kv_heads
    if d != cache.head_dim:
        raise ValueError(f"q has head_dim {d} but the cache stores head_dim {cache.head_dim}.")
    if n_q % n_kv != 0:
        raise ValueError(f"n_q_heads ({n_q}) must be a multiple of the cache's num_kv_heads ({n_kv}) for GQA.")
    tables, ctx = cache.block_tables_tensor(seq_ids)
    if q_len > int(ctx.min()):
        raise ValueError(f"q_len ({q_len}) exceeds a context length ({int(ctx.min())}): the queries are the last "
                         "q_len tokens of each sequence, so append their keys and values first.")
    # Physical blocks -> (B, T, H, d) in token order, T = max_blocks · block_size -> (B, H, T, d).
    k = cache.k_blocks[layer][tables].flatten(1, 2).transpose(1, 2).float()
    v = cache.v_blocks[layer][tables].flatten(1, 2).transpose(1, 2).float()
    group = n_q // n_kv
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # head h -> h // group
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    scores = q.float() @ k.transpose(-1, -2) * scale  # (B, n_q, q_len, T), in float32
    key_pos = torch.arange(k.shape[2], device=q.device)
    last_visible = ctx.to(q.device)[:, None] - q_len + torch.arange(q_len, device=q.device)  # (B, q_len)
    visible = key_pos[None, None, :] <= last_visible[:, :, None]  # also hides slots >= ctx_len
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).to(q.dtype)
