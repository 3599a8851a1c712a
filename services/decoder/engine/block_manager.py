"""BlockManager: the only owner of KV-cache block state (which blocks are free, which belong to whom)."""

from __future__ import annotations

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

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1")
        self.block_size = block_size
        self._num_blocks = num_blocks
        self._is_free = bytearray(b"\x01") * num_blocks
        self._open = bytearray(b"\x01") * num_blocks  # free and not reserved for a sequence
        self._num_free = num_blocks
        self._tables: dict[int, list[int]] = {}
        self._reserved: dict[int, range] = {}

    @property
    def num_total_blocks(self) -> int:
        return self._num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self._num_free

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
        return num_blocks <= self._num_free

    def can_grow(self, seq_id: int, num_tokens: int) -> bool:
        return self.can_allocate(self.num_new_blocks(seq_id, num_tokens))

    def max_tokens(self, seq_id: int) -> int:
        """The most tokens the sequence could hold if it took every free block."""
        return self.capacity(seq_id) + self._num_free * self.block_size

    def grow(self, seq_id: int, num_tokens: int, expected_tokens: int = 0) -> None:
        """Make the sequence's table hold num_tokens tokens in all: all blocks or none. `expected_tokens`
        (its prompt + answer) sizes the run a new sequence is placed in; it reserves, never allocates."""
        needed = self.num_new_blocks(seq_id, num_tokens)
        if needed > self._num_free:
            raise OutOfBlocks(f"sequence {seq_id} needs {needed} more blocks, {self._num_free} are free")
        if needed:
            table = self._tables.setdefault(seq_id, [])
            if table:
                table.extend(self._take(table[-1] + 1, needed))
            else:
                table.extend(self._place(seq_id, needed, max(needed, self.blocks_for(expected_tokens))))

    def free(self, seq_id: int) -> int:
        """Return every block of the sequence to the pool; returns how many (0 if it held none)."""
        table = self._tables.pop(seq_id, [])
        for block in table:
            self._is_free[block] = 1
            self._open[block] = 1
        for block in self._reserved.pop(seq_id, ()):
            if self._is_free[block]:
                self._open[block] = 1
        self._num_free += len(table)
        return len(table)

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
        return taken
