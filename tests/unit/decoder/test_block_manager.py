"""BlockManager: allocation all-or-nothing, tables in position order, every block back on free."""

from __future__ import annotations

import pytest

from internvl_serve.decoder.block_manager import BlockManager, OutOfBlocks


def test_grow_allocates_whole_blocks_in_position_order():
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.grow(1, 1)
    assert len(bm.block_table(1)) == 1 and bm.num_free_blocks == 7
    bm.grow(1, 4)  # still fits the first block
    assert len(bm.block_table(1)) == 1
    bm.grow(1, 9)
    table = bm.block_table(1)
    assert len(table) == 3 and len(set(table)) == 3
    assert bm.capacity(1) == 12 and bm.num_free_blocks == 5
    assert bm.block_table(1)[:1] == table[:1]  # growing never reorders earlier blocks


def test_sequences_never_share_a_block():
    bm = BlockManager(num_blocks=6, block_size=2)
    bm.grow(1, 5)
    bm.grow(2, 6)
    assert not set(bm.block_table(1)) & set(bm.block_table(2))
    assert bm.num_free_blocks == 0


def test_exhaustion_is_all_or_nothing():
    bm = BlockManager(num_blocks=3, block_size=4)
    bm.grow(1, 8)
    assert not bm.can_grow(2, 8) and bm.can_grow(2, 4)
    with pytest.raises(OutOfBlocks):
        bm.grow(2, 8)
    assert bm.block_table(2) == [] and bm.num_free_blocks == 1
    assert bm.max_tokens(1) == 12 and bm.max_tokens(2) == 4


def test_free_returns_every_block():
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.grow(1, 7)
    bm.grow(2, 3)
    assert bm.free(1) == 2 and bm.free(2) == 1
    assert bm.free(3) == 0  # freeing a sequence without blocks is harmless
    assert bm.num_free_blocks == bm.num_total_blocks == 4 and bm.num_sequences == 0
    bm.grow(3, 16)  # the whole pool is usable again
    assert sorted(bm.block_table(3)) == [0, 1, 2, 3]


def test_blocks_for_rounds_up():
    bm = BlockManager(num_blocks=1, block_size=16)
    assert [bm.blocks_for(n) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]
    assert bm.num_new_blocks(9, 17) == 2
