"""The decoder's CPU attention path (kernels/torch_paged.py) against the plain references.

Unused cache slots are NaN (build_paged_kv), so reading outside a sequence poisons the output.
Tolerances: fp32 1e-5 absolute (fused SDPA vs materialised softmax differ by rounding only).
"""

from __future__ import annotations

import pytest
import torch

from internvl_serve.kernels import (
    decode_attention_ref,
    decode_attention_torch,
    prefill_attention_ref,
    prefill_attention_torch,
)
from internvl_testing.paged_testing import build_paged_kv, max_abs_diff, packed_queries

TOL = 1e-5
HEADS = [(4, 4), (5, 1), (14, 2), (10, 2)]  # GQA groups 1, 5, 7, 5


@pytest.mark.parametrize("num_q_heads, num_kv_heads", HEADS)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_matches_reference(num_q_heads, num_kv_heads, head_dim, gen):
    lens = [1, 15, 16, 17, 70, 300, 0, 129]  # block boundaries, a length-1 and an empty (padding) slot
    kv = build_paged_kv(lens, num_kv_heads, head_dim, torch.float32, generator=gen)
    q = torch.randn(len(lens), num_q_heads, head_dim, generator=gen)
    expected = decode_attention_ref(q, kv.k_cache, kv.v_cache, kv.seq_lens, kv.block_tables, head_dim**-0.5)
    got = decode_attention_torch(q, kv.k_cache, kv.v_cache, kv.seq_lens, kv.block_tables, head_dim**-0.5)
    assert not got.isnan().any()
    assert max_abs_diff(got, expected) <= TOL
    assert torch.equal(got[6], torch.zeros_like(got[6])), "seq_len 0 gives zeros"


@pytest.mark.parametrize("num_q_heads, num_kv_heads", HEADS)
def test_prefill_with_and_without_cached_prefix_matches_reference(num_q_heads, num_kv_heads, gen):
    head_dim = 64
    seq_lens = [40, 1, 130, 17]
    q_lens = [40, 1, 30, 5]  # fresh prefill, one token, a chunk after a 100-token prefix, a short chunk
    kv = build_paged_kv(seq_lens, num_kv_heads, head_dim, torch.float32, generator=gen)
    q, cu = packed_queries(q_lens, num_q_heads, head_dim, torch.float32, generator=gen)
    args = (q, kv.k_cache, kv.v_cache, cu, kv.seq_lens, kv.block_tables, head_dim**-0.5)
    got = prefill_attention_torch(*args)
    assert not got.isnan().any()
    assert max_abs_diff(got, prefill_attention_ref(*args)) <= TOL


def test_consecutive_blocks_are_read_as_a_slice_and_agree_with_the_gather(gen):
    """Sequences whose blocks are consecutive take the no-copy path; the answer is the same."""
    from internvl_serve.kernels import SequenceBlocks

    lens, bs, heads, head_dim = [40, 33, 1], 16, 2, 64
    num_blocks = 12
    k_cache = torch.full((num_blocks, bs, heads, head_dim), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    tables = torch.tensor([[2, 3, 4, 0], [7, 5, 6, 0], [10, 0, 0, 0]], dtype=torch.int32)  # 2nd: not consecutive
    for i, n in enumerate(lens):
        for pos in range(n):
            block, off = int(tables[i, pos // bs]), pos % bs
            k_cache[block, off] = torch.randn(heads, head_dim, generator=gen)
            v_cache[block, off] = torch.randn(heads, head_dim, generator=gen)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    blocks = SequenceBlocks.of(seq_lens, tables, bs)
    assert blocks.first_block == [2, -1, 10]
    q = torch.randn(3, 4, head_dim, generator=gen)
    got = decode_attention_torch(q, k_cache, v_cache, seq_lens, tables, 0.125, blocks=blocks)
    expected = decode_attention_ref(q, k_cache, v_cache, seq_lens, tables, 0.125)
    assert max_abs_diff(got, expected) <= TOL
