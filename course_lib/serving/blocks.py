"""Blocks for a serving engine: chapter 09's allocator plus the hash table of prefix caching.

Chapter 09's ``BlockAllocator`` hands out physical blocks with reference counts. A server adds one
idea (vLLM's automatic prefix caching, SGLang's RadixAttention in a simpler form): a *full* block is
named by a hash of its tokens **and of every token before it**,

    h_0 = H(ROOT, tokens[0:B]),   h_i = H(h_{i-1}, tokens[i·B:(i+1)·B])

so two requests whose first k·B tokens agree have the same first k hashes, whatever follows. A block
whose hash is known can be handed to a new request instead of being computed again; its reference
count says how many requests read it.

A block whose count drops to 0 keeps its contents and its hash: it sits in the free list, and is only
*evicted* (its hash forgotten) when the allocator hands it out again. The free list is least recently
freed first, and a finished request frees its blocks last to first, so the tail of a prompt is
evicted before its head (which other prompts are more likely to share).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from ..kv.paged import DoubleFreeError, OutOfBlocksError, blocks_needed

ROOT = b"course-prefix-cache-root"

__all__ = ["ROOT", "BlockPool", "DoubleFreeError", "OutOfBlocksError", "block_hash", "blocks_needed",
           "prefix_hashes"]


def block_hash(parent: bytes, tokens: Sequence[int]) -> bytes:
    """H(parent, tokens): SHA-256 of the parent's hash followed by the block's token ids as int64.

    A cryptographic hash, as vLLM's default: with Python's 64-bit ``hash`` two different prefixes
    could collide and one request would silently read another's keys and values.
    """
    return hashlib.sha256(parent + np.asarray(tokens, dtype=np.int64).tobytes()).digest()


def prefix_hashes(tokens: Sequence[int], block_size: int, parent: bytes = ROOT) -> list[bytes]:
    """The chain of hashes of every *full* block of ``tokens`` (a partial last block has none)."""
    blocks_needed(len(tokens), block_size)  # validates block_size
    hashes = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = block_hash(parent, tokens[start:start + block_size])
        hashes.append(parent)
    return hashes


class BlockPool:
    """Physical block ids with reference counts, an LRU free list and a hash -> block table.

    ``caching=False`` is chapter 09's allocator (freed blocks are forgotten at once).
    """

    def __init__(self, num_blocks: int, *, caching: bool = True) -> None:
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be an int >= 1, got {num_blocks!r}.")
        self.num_blocks, self.caching = num_blocks, caching
        self._refs = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._hash_of: dict[int, bytes] = {}
        self._cached: dict[bytes, int] = {}
        self.evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now: never used, or unreferenced (cached contents are evictable)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def refcount(self, block: int) -> int:
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"Block id {block} is outside 0..{self.num_blocks - 1}.")
        return self._refs[block]

    def allocate(self) -> int:
        """The least recently freed block, its old hash (if any) evicted; reference count 1."""
        if not self._free:
            raise OutOfBlocksError(f"All {self.num_blocks} blocks are in use. Finish or preempt a request, or give "
                                   "the engine more KV-cache memory.")
        block, _ = self._free.popitem(last=False)
        old = self._hash_of.pop(block, None)
        if old is not None:
            del self._cached[old]
            self.evictions += 1
        self._refs[block] = 1
        return block

    def free(self, block: int) -> None:
        """Drop one reference; at zero the block joins the free list, keeping its hash."""
        if self.refcount(block) == 0:
            raise DoubleFreeError(f"Block {block} is already free (reference count 0); it was freed twice.")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free[block] = None
            if not self.caching:
                self._forget(block)

    def free_all(self, blocks: Sequence[int]) -> None:
        """Free a request's blocks last to first, so that its tail is evicted before its head."""
        for block in reversed(blocks):
            self.free(block)

    def register(self, block: int, block_hash_: bytes) -> None:
        """Name a full, computed block by its hash (the first block with a hash keeps it)."""
        if self.caching and block_hash_ not in self._cached and block not in self._hash_of:
            self._cached[block_hash_] = block
            self._hash_of[block] = block_hash_

    def lookup(self, hashes: Sequence[bytes]) -> list[int]:
        """The blocks holding the longest cached prefix of the hash chain (nothing is referenced yet)."""
        found = []
        for h in hashes:
            block = self._cached.get(h) if self.caching else None
            if block is None:
                break
            found.append(block)
        return found

    def take(self, block: int) -> None:
        """Reference a cached block for one more request (taking it off the free list if needed)."""
        if self._refs[block] == 0:
            del self._free[block]
        self._refs[block] += 1

    def _forget(self, block: int) -> None:
        old = self._hash_of.pop(block, None)
        if old is not None:
            del self._cached[old]

    def reset_cache(self) -> None:
        """Forget every hash (the blocks' reference counts are unchanged)."""
        self._hash_of.clear()
        self._cached.clear()
