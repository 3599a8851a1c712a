"""BlockManager: the only owner of KV-cache block state (which blocks are free, which belong to whom,
which hold cached content).

Prefix caching (DESIGN.md section 9): a full block whose K/V is computed is registered under its content
hash (engine/block_hash.py). Blocks are ref-counted, so sequences with the same prefix share them; a block
whose last reference goes keeps its content in an LRU and still counts as free. New blocks come from
blocks that hold no cached content first; only when none is left is the least recently used cached block
evicted.
"""

from __future__ import annotations

from collections import OrderedDict

# Free blocks left between a new sequence's reserved run and its neighbours.
_HEADROOM = 2


class OutOfBlocks(RuntimeError):
    """An allocation asked for more blocks than are free (the scheduler checks first; this is a bug guard)."""


class BlockManager:
    """Hands out fixed-size blocks of `block_size` token slots and keeps each sequence's block table.

    A sequence's blocks are kept consecutive where the pool allows: a new sequence starts in a free run
    long enough for the tokens it expects (prompt + answer), the rest of that run is reserved for it
    (other new sequences look elsewhere; reserved blocks still count as free and are handed out when
    nothing else is left), and growth takes the next block when it is free. Consecutive blocks are a
    plain slice of the cache, which the CPU attention path reads without gathering them.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._num_blocks = num_blocks
        self._is_free = bytearray(b"\x01") * num_blocks  # unreferenced and holding no cached content
        self._open = bytearray(b"\x01") * num_blocks  # free and not reserved for a sequence
        self._num_free = num_blocks  # blocks marked in _is_free
        self._refs = [0] * num_blocks
        self._tables: dict[int, list[int]] = {}
        self._reserved: dict[int, range] = {}
        self._hash_of: dict[int, bytes] = {}  # cached content of a block
        self._block_of: dict[bytes, int] = {}
        self._lru: OrderedDict[int, None] = OrderedDict()  # unreferenced cached blocks, least recent first
        self._num_registered: dict[int, int] = {}  # full blocks of a sequence already registered
        self.num_evictions = 0

    @property
    def num_total_blocks(self) -> int:
        return self._num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds: empty ones and unreferenced cached ones (evicted when needed)."""
        return self._num_free + len(self._lru)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks holding registered content, referenced or not."""
        return len(self._hash_of)

    @property
    def num_sequences(self) -> int:
        """Sequences that hold at least one block."""
        return len(self._tables)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold num_tokens tokens."""
        return -(-num_tokens // self.block_size)

    def block_table(self, seq_id: int) -> list[int]:
        """A copy of the sequence's block ids, in position order (empty when it holds none)."""
        return list(self._tables.get(seq_id, ()))

    def capacity(self, seq_id: int) -> int:
        """Tokens the sequence's blocks can hold now."""
        return len(self._tables.get(seq_id, ())) * self.block_size

    def num_new_blocks(self, seq_id: int, num_tokens: int) -> int:
        """Blocks the sequence must add to hold num_tokens tokens in all."""
        return max(0, self.blocks_for(num_tokens) - len(self._tables.get(seq_id, ())))

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.num_free_blocks

    def can_grow(self, seq_id: int, num_tokens: int) -> bool:
        return self.can_allocate(self.num_new_blocks(seq_id, num_tokens))

    def max_tokens(self, seq_id: int) -> int:
        """The most tokens the sequence could hold if it took every free block."""
        return self.capacity(seq_id) + self.num_free_blocks * self.block_size

    def grow(self, seq_id: int, num_tokens: int, expected_tokens: int = 0) -> None:
        """Make the sequence's table hold num_tokens tokens in all: all blocks or none. `expected_tokens`
        (its prompt + answer) sizes the run a new sequence is placed in; it reserves, never allocates."""
        needed = self.num_new_blocks(seq_id, num_tokens)
        if needed > self.num_free_blocks:
            raise OutOfBlocks(f"sequence {seq_id} needs {needed} more blocks, {self.num_free_blocks} are free")
        if needed:
            self._evict(needed - self._num_free)
            table = self._tables.setdefault(seq_id, [])
            if table:
                table.extend(self._take(table[-1] + 1, needed))
            else:
                table.extend(self._place(seq_id, needed, max(needed, self.blocks_for(expected_tokens))))

    def free(self, seq_id: int) -> int:
        """Drop the sequence's references; returns how many blocks it held (0 if none). Its cached blocks
        keep their content (the tail's first in line for eviction); the others are empty again."""
        table = self._tables.pop(seq_id, [])
        self._num_registered.pop(seq_id, None)
        for block in reversed(table):
            self._refs[block] -= 1
            if self._refs[block]:
                continue  # another sequence shares it
            if block in self._hash_of:
                self._lru[block] = None
            else:
                self._is_free[block] = 1
                self._open[block] = 1
                self._num_free += 1
        for block in self._reserved.pop(seq_id, ()):
            if self._is_free[block]:
                self._open[block] = 1
        return len(table)

    # ---- prefix caching ---------------------------------------------------------------------------------

    def num_cached_prefix_blocks(self, hashes: list[bytes]) -> int:
        """How many of `hashes` (a sequence's leading full blocks, in order) are cached, from the first on."""
        if not self.enable_prefix_caching:
            return 0
        n = 0
        while n < len(hashes) and hashes[n] in self._block_of:
            n += 1
        return n

    def can_admit(self, hashes: list[bytes], num_tokens: int) -> bool:
        """Whether a sequence that reuses the cached blocks of `hashes` fits with num_tokens tokens in all."""
        idle_hits = sum(1 for h in hashes if self._refs[self._block_of[h]] == 0)
        return self.blocks_for(num_tokens) - len(hashes) + idle_hits <= self.num_free_blocks

    def take_cached_prefix(self, seq_id: int, hashes: list[bytes]) -> None:
        """Start the (block-less) sequence's table with the cached blocks of `hashes`, shared by reference."""
        table = self._tables.setdefault(seq_id, [])
        if table:
            raise ValueError(f"sequence {seq_id} already holds blocks")
        for h in hashes:
            block = self._block_of[h]
            if self._refs[block] == 0:
                del self._lru[block]
            self._refs[block] += 1
            table.append(block)
        self._num_registered[seq_id] = len(hashes)

    def register_full_blocks(self, seq_id: int, hashes: list[bytes]) -> None:
        """Record the content of the sequence's first len(hashes) blocks (full, K/V computed). A block whose
        content another block already holds stays unregistered (it is freed as an empty block)."""
        if not self.enable_prefix_caching:
            return
        table = self._tables.get(seq_id, ())
        done = self._num_registered.get(seq_id, 0)
        for i in range(done, min(len(hashes), len(table))):
            h = hashes[i]
            if h not in self._block_of and table[i] not in self._hash_of:
                self._block_of[h] = table[i]
                self._hash_of[table[i]] = h
        self._num_registered[seq_id] = max(done, min(len(hashes), len(table)))

    def _evict(self, count: int) -> None:
        """Empty the `count` least recently used unreferenced cached blocks (to hand them out)."""
        for _ in range(max(0, count)):
            block, _ = self._lru.popitem(last=False)
            del self._block_of[self._hash_of.pop(block)]
            self._is_free[block] = 1
            self._open[block] = 1
            self._num_free += 1
            self.num_evictions += 1

    def _place(self, seq_id: int, count: int, expected: int) -> list[int]:
        """A new sequence's first blocks, at the start of a run with room for `expected` blocks."""
        start = self._open.find(b"\x01" * (expected + 2 * _HEADROOM))
        if start < 0:
            return self._take(None, count)
        start += _HEADROOM if start else 0
        reserved = range(start + count, start + expected)
        for block in reserved:
            self._open[block] = 0
        self._reserved[seq_id] = reserved
        return self._take(start, count)

    def _take(self, next_block: int | None, count: int) -> list[int]:
        """`count` free blocks (the caller checked there are): from `next_block` on while free, then an
        open run that fits, then any free run that fits, then whatever is free."""
        taken: list[int] = []
        while (
            next_block is not None
            and len(taken) < count
            and next_block < self._num_blocks
            and self._is_free[next_block]
        ):
            taken.append(next_block)
            self._is_free[next_block] = self._open[next_block] = 0  # marked now: the searches below skip it
            next_block += 1
        rest = count - len(taken)
        if rest:
            start = self._open.find(b"\x01" * rest)
            if start < 0:
                start = self._is_free.find(b"\x01" * rest)
            if start >= 0:
                found = list(range(start, start + rest))
            else:  # fragmented: scattered blocks
                found, block = [], -1
                for _ in range(rest):
                    block = self._is_free.find(b"\x01", block + 1)
                    found.append(block)
            for block in found:
                self._is_free[block] = self._open[block] = 0
            taken += found
        self._num_free -= count
        for block in taken:
            self._refs[block] = 1
        return taken
