"""Paged varlen prefill kernel vs prefill_attention_ref, under the Triton interpreter.

Every cache slot no sequence owns is NaN (see paged_testing), so a masking or addressing error shows up
as NaN in the output rather than as a small numeric drift.
"""

from __future__ import annotations

import pytest
import torch

from internvl_serve.kernels import PrefillConfig, prefill_attention, prefill_attention_ref, write_kv_cache
from internvl_testing.paged_testing import build_paged_kv, max_abs_diff, packed_queries

# Tolerances against the fp32 reference: fp32 kernels differ only by summation order; fp16/bf16
# kernels round P to 16 bits before P @ V and round the output (bf16 has 8 mantissa bits).
# (atol, rtol) for torch.testing.assert_close; |got - want| <= atol + rtol * |want| elementwise.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def _check(q_lens, contexts, heads, head_dim, dtype, gen, block_size=16, config=None):
    num_q_heads, num_kv_heads = heads
    seq_lens = [q + c for q, c in zip(q_lens, contexts)]
    kv = build_paged_kv(seq_lens, num_kv_heads, head_dim, dtype, block_size, generator=gen)
    q, cu = packed_queries(q_lens, num_q_heads, head_dim, dtype, generator=gen)
    scale = head_dim**-0.5
    args = (q, kv.k_cache, kv.v_cache, cu, kv.seq_lens, kv.block_tables, scale)
    got = prefill_attention(*args, config=config)
    want = prefill_attention_ref(*args)
    assert got.shape == q.shape and got.dtype == q.dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)  # NaN fails too
    return got


@pytest.mark.parametrize(
    "heads, head_dim, dtype",
    [
        ((4, 2), 64, torch.float32),
        ((5, 1), 128, torch.float32),  # group 5 (InternVL3-14B: 40/8)
        ((7, 1), 64, torch.float16),  # group 7 (InternVL3-1B: 14/2)
        ((4, 4), 64, torch.float16),  # group 1
    ],
)
def test_mixed_batch_fresh_and_cached(heads, head_dim, dtype, gen):
    # fresh prefill, long cached prefix, a single new token, lengths off the block and tile grid
    _check([37, 20, 1, 9], [0, 70, 45, 16], heads, head_dim, dtype, gen)


def test_group7_d128_chunk_after_prefix(gen):
    _check([33, 18], [200, 0], (28, 4), 128, torch.float16, gen)  # long cached prefix


def test_many_sequences_of_mixed_lengths(gen):
    q_lens = [1, 5, 16, 17, 2, 31, 1, 8, 12, 3, 40, 1]
    contexts = [0, 11, 0, 32, 90, 1, 15, 0, 7, 60, 0, 0]
    _check(q_lens, contexts, (4, 2), 64, torch.float32, gen)


def test_sequences_without_new_tokens_are_skipped(gen):
    _check([6, 0, 9], [3, 20, 0], (4, 2), 64, torch.float32, gen)


def test_length_one_sequences_only(gen):
    _check([1, 1, 1], [0, 1, 47], (7, 1), 64, torch.float32, gen)


def test_bf16_is_upcast_under_the_interpreter(gen):
    _check([19, 4], [0, 30], (5, 1), 64, torch.bfloat16, gen)


@pytest.mark.parametrize(
    "block_size, config",
    [
        (32, PrefillConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)),  # tile < cache block
        (16, PrefillConfig(block_m=64, block_n=64, num_warps=4, num_stages=1)),  # tile spans 4 blocks
        (8, PrefillConfig(block_m=16, block_n=32, num_warps=4, num_stages=1)),  # group 7 -> 2 tokens/tile
    ],
)
def test_tile_and_block_sizes(block_size, config, gen):
    _check([25, 3, 50], [10, 40, 0], (7, 1), 64, torch.float32, gen, block_size, config)


def test_chunked_prefill_equals_one_shot(gen):
    """Writing a prompt in two chunks (K/V via write_kv_cache, then attention) matches one pass."""
    num_q_heads, num_kv_heads, head_dim, length, split = 4, 2, 64, 45, 29
    kv = build_paged_kv([length], num_kv_heads, head_dim, torch.float32, generator=gen)
    q, _ = packed_queries([length], num_q_heads, head_dim, torch.float32, generator=gen)
    k_new, v_new = kv.k_cache.clone(), kv.v_cache.clone()
    k_src = torch.stack([kv.k_cache[kv.block_tables[0, p // 16], p % 16] for p in range(length)])
    v_src = torch.stack([kv.v_cache[kv.block_tables[0, p // 16], p % 16] for p in range(length)])
    slots = kv.block_tables[0, torch.arange(length) // 16].long() * 16 + torch.arange(length) % 16
    k_new.fill_(float("nan"))
    v_new.fill_(float("nan"))
    outs = []
    for lo, hi in [(0, split), (split, length)]:
        write_kv_cache(k_src[lo:hi], v_src[lo:hi], k_new, v_new, slots[lo:hi])
        cu = torch.tensor([0, hi - lo], dtype=torch.int32)
        seq_lens = torch.tensor([hi], dtype=torch.int32)
        outs.append(prefill_attention(q[lo:hi], k_new, v_new, cu, seq_lens, kv.block_tables, 0.125))
    cu = torch.tensor([0, length], dtype=torch.int32)
    whole = prefill_attention(q, kv.k_cache, kv.v_cache, cu, kv.seq_lens, kv.block_tables, 0.125)
    assert max_abs_diff(torch.cat(outs), whole) < 1e-5  # fp32, same math on the same keys


def test_out_buffer_and_empty_batch(gen):
    kv = build_paged_kv([12], 2, 64, torch.float32, generator=gen)
    q, cu = packed_queries([12], 4, 64, torch.float32, generator=gen)
    out = torch.full_like(q, float("nan"))
    got = prefill_attention(q, kv.k_cache, kv.v_cache, cu, kv.seq_lens, kv.block_tables, 0.125, out=out)
    assert got is out and not out.isnan().any()
    empty = prefill_attention(
        q[:0],
        kv.k_cache,
        kv.v_cache,
        torch.zeros(2, dtype=torch.int32),
        torch.zeros(1, dtype=torch.int32),
        kv.block_tables,
        0.125,
    )
    assert empty.shape == (0, 4, 64)
