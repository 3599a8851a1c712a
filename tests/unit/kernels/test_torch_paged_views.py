"""SequenceBlocks' one-op views equal the gathered keys, for consecutive and scattered blocks."""

from __future__ import annotations

import torch

from internvl_serve.kernels import SequenceBlocks


def test_views_equal_the_gathered_keys():
    cache = torch.randn(12, 4, 2, 8)  # [blocks, block_size, Hkv, D]
    tables = torch.tensor([[3, 4, 5], [7, 2, 9]], dtype=torch.int32)  # consecutive, then scattered
    blocks = SequenceBlocks.of(torch.tensor([10, 9]), tables, block_size=4)
    for i in range(2):
        keys = cache[tables[i].long()].view(-1, 2, 8)[: blocks.lengths[i]].transpose(0, 1)  # gathered
        assert torch.equal(blocks.keys(cache, i), keys)
        assert torch.equal(blocks.keys(cache, i, transposed=True), keys.transpose(1, 2))
    assert blocks.first_block == [3, -1]
