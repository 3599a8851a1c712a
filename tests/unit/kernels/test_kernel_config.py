"""Launch-config choice and the decode split heuristic (plain functions, no kernels run)."""

from __future__ import annotations

import pytest

from internvl_serve.kernels import choose_num_splits, decode_config, prefill_config
from internvl_serve.kernels.config import DECODE_PROGRAMS_PER_SM, MIN_TOKENS_PER_SPLIT

H100_SMS = 132


def test_large_batches_do_not_split():
    # 64 sequences x 8 KV heads = 512 programs: ~4 per SM already
    assert choose_num_splits(64, 8, 16384, H100_SMS) == 1
    assert choose_num_splits(256, 2, 4096, H100_SMS) == 1


def test_small_batches_split_long_sequences():
    # one sequence, 8 KV heads: 8 programs for 132 SMs -> split up to the scratch limit
    assert choose_num_splits(1, 8, 16384, H100_SMS, max_splits=32) == 32
    # 32 x 8 = 256 programs; 528 fit in one wave -> 2 splits (3 would start a second wave)
    assert choose_num_splits(32, 8, 4096, H100_SMS) == 2
    assert choose_num_splits(32, 8, 4096, H100_SMS) * 256 <= H100_SMS * DECODE_PROGRAMS_PER_SM
    # InternVL3-1B: 32 x 2 = 64 programs -> 8 splits
    assert choose_num_splits(32, 2, 4096, H100_SMS) == 8


def test_splits_keep_a_minimum_length():
    assert choose_num_splits(1, 8, MIN_TOKENS_PER_SPLIT, H100_SMS) == 1
    assert choose_num_splits(1, 8, 3 * MIN_TOKENS_PER_SPLIT, H100_SMS) == 3
    assert choose_num_splits(1, 2, 1, H100_SMS) == 1


def test_splits_never_exceed_the_workspace():
    for max_splits in (1, 2, 8):
        assert choose_num_splits(1, 1, 1 << 20, H100_SMS, max_splits=max_splits) == max_splits


def test_splits_shrink_as_the_batch_grows():
    counts = [choose_num_splits(b, 8, 8192, H100_SMS) for b in (1, 2, 4, 8, 16, 32, 64, 128)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1] == 1


def test_fewer_sms_split_less():
    assert choose_num_splits(4, 8, 8192, 16) < choose_num_splits(4, 8, 8192, H100_SMS)


@pytest.mark.parametrize("args", [(0, 8, 100, 132), (4, 8, 0, 132), (4, 8, 100, 0)])
def test_degenerate_inputs_give_one_split(args):
    assert choose_num_splits(*args) == 1


@pytest.mark.parametrize("group", [1, 2, 4, 5, 7, 8, 16, 20])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("interpret", [False, True])
def test_prefill_tiles_hold_whole_groups(group, head_dim, interpret):
    cfg = prefill_config(head_dim, group, interpret)
    assert cfg.block_m & (cfg.block_m - 1) == 0 and cfg.block_n & (cfg.block_n - 1) == 0
    assert cfg.block_m >= 16 and cfg.block_n >= 16  # tl.dot's minimum on tensor cores
    assert 1 <= cfg.block_q(group) and cfg.block_q(group) * group <= cfg.block_m
    if not interpret:
        # rows wasted on padding stay small: at most one group's worth
        assert cfg.block_m - cfg.block_q(group) * group < group


def test_decode_config_is_a_power_of_two_tile():
    for interpret in (False, True):
        for head_dim in (64, 128):
            block_n = decode_config(head_dim, interpret).block_n
            assert block_n >= 16 and block_n & (block_n - 1) == 0
