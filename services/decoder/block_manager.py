"""BlockManager: the only owner of KV-cache block state (which blocks are free, which belong to whom)."""

from __future__ import annotations

from collections import deque


class OutOfBlocks(RuntimeError):
    """An allocation asked for more blocks than are free (the scheduler checks first; this is a bug guard)."""


class BlockManager:
    """Hands out fixed-size blocks of `block_size` token slots and keeps each sequence's block table."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1")
        self.block_size = block_size
        self._num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._tables: dict[int, list[int]] = {}

    @property
    def num_total_blocks(self) -> int:
        return self._num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

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
        return num_blocks <= len(self._free)

    def can_grow(self, seq_id: int, num_tokens: int) -> bool:
        return self.can_allocate(self.num_new_blocks(seq_id, num_tokens))

    def max_tokens(self, seq_id: int) -> int:
        """The most tokens the sequence could hold if it took every free block."""
        return self.capacity(seq_id) + len(self._free) * self.block_size

    def grow(self, seq_id: int, num_tokens: int) -> None:
        """Make the sequence's table hold num_tokens tokens in all: all blocks or none."""
        needed = self.num_new_blocks(seq_id, num_tokens)
        if needed > len(self._free):
            raise OutOfBlocks(f"sequence {seq_id} needs {needed} more blocks, {len(self._free)} are free")
        if needed:
            table = self._tables.setdefault(seq_id, [])
            table.extend(self._free.popleft() for _ in range(needed))

    def free(self, seq_id: int) -> int:
        """Return every block of the sequence to the pool; returns how many (0 if it held none)."""
        table = self._tables.pop(seq_id, [])
        self._free.extend(table)
        return len(table)
