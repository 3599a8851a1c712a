"""BlockManager: allocation all-or-nothing, tables in position order, every block back on free."""

from __future__ import annotations

import pytest

from internvl_serve.decoder.engine.block_manager import BlockManager, OutOfBlocks


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


def test_sequences_get_consecutive_blocks_and_grow_in_place():
    bm = BlockManager(num_blocks=200, block_size=4)
    bm.grow(1, 40, expected_tokens=60)  # 10 blocks now, 15 expected: the run is reserved for it
    bm.grow(2, 40, expected_tokens=40)
    for seq in (1, 2):
        table = bm.block_table(seq)
        assert table == list(range(table[0], table[0] + 10)), "a new sequence gets one run"
    bm.grow(1, 60)  # decode growth into its reservation: still consecutive
    table = bm.block_table(1)
    assert table == list(range(table[0], table[0] + 15))
    assert not set(table) & set(bm.block_table(2))
    bm.free(1)
    bm.free(2)
    assert bm.num_free_blocks == 200
    bm.grow(3, 800)  # reservations are released with their sequences: the whole pool is one run again
    assert bm.block_table(3) == list(range(200))


def test_fragmented_pool_still_allocates_every_free_block():
    bm = BlockManager(num_blocks=12, block_size=1)
    for seq in range(12):
        bm.grow(seq, 1)
    assert bm.num_free_blocks == 0
    freed = set()
    for seq in range(0, 12, 2):  # free every other sequence: the free blocks are scattered
        freed |= set(bm.block_table(seq))
        bm.free(seq)
    bm.grow(100, 6)
    assert set(bm.block_table(100)) == freed and bm.num_free_blocks == 0
