"""A binary buddy allocator: how contiguous KV-cache reservations were placed before paging.

The vLLM paper's Orca baselines keep each request's cache in one contiguous chunk and place it with
a buddy allocator (section 6.1). A buddy allocator hands out blocks of 2^k slots: a request for n
slots gets the smallest power of two >= n, found by splitting a larger free block in halves
("buddies"); a freed block merges with its buddy when that is free too. Two kinds of waste follow,
which the paper's Fig. 2 counts as "external fragmentation & others":

* rounding: a 600-slot reservation occupies a 1024-slot block;
* fragmentation: free slots split into blocks too small, or not aligned, for the next request.

The memory need not be a power of two: it is cut into aligned blocks of at most ``max_block`` slots
(15,700 slots with max_block 2048: seven blocks of 2048, then 1024, 256, 64, 16 and 4), and blocks
never merge across those pieces.
"""

from __future__ import annotations


def block_size_for(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    if n < 1:
        raise ValueError(f"A reservation needs at least 1 slot, got {n}.")
    return 1 << (n - 1).bit_length()


class BuddyAllocator:
    """Blocks of power-of-two slots inside `capacity` slots; addresses are slot offsets."""

    def __init__(self, capacity: int, max_block: int):
        if capacity < 1 or max_block < 1 or max_block & (max_block - 1):
            raise ValueError(f"Need capacity >= 1 and a power-of-two max_block, got {capacity} and {max_block}.")
        self.capacity, self.max_block = capacity, max_block
        self.free_blocks: dict[int, set[int]] = {}  # block size -> start addresses of free blocks
        self.used: dict[int, int] = {}  # start address -> size of each allocated block
        addr, size = 0, max_block
        while size:  # aligned pieces, largest first: each starts at a multiple of its size
            while addr + size <= capacity:
                self.free_blocks.setdefault(size, set()).add(addr)
                addr += size
            size //= 2

    def allocate(self, n: int) -> int | None:
        """Start address of a block of block_size_for(n) slots, or None when no free block is large enough."""
        size = block_size_for(n)
        if size > self.max_block:
            raise ValueError(f"{n} slots exceed the largest block ({self.max_block}).")
        have = size
        while have <= self.max_block and not self.free_blocks.get(have):
            have *= 2
        if have > self.max_block:
            return None
        addr = min(self.free_blocks[have])  # lowest address first: deterministic
        self.free_blocks[have].remove(addr)
        while have > size:  # split: keep the lower half, free the upper (its buddy)
            have //= 2
            self.free_blocks.setdefault(have, set()).add(addr + have)
        self.used[addr] = size
        return addr

    def free(self, addr: int) -> None:
        """Return a block; merge it with its buddy while the buddy is free (never beyond max_block)."""
        if addr not in self.used:
            raise ValueError(f"No allocated block starts at {addr}.")
        size = self.used.pop(addr)
        while size < self.max_block and (addr ^ size) in self.free_blocks.get(size, ()):
            self.free_blocks[size].remove(addr ^ size)
            addr, size = min(addr, addr ^ size), size * 2
        self.free_blocks.setdefault(size, set()).add(addr)

    @property
    def slots_in_use(self) -> int:
        return sum(self.used.values())
