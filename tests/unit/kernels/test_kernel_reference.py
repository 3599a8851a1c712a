"""The references themselves, against an independent oracle (dense torch SDPA with an explicit mask)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from internvl_serve.kernels import decode_attention_ref, prefill_attention_ref, write_kv_cache_ref
from internvl_serve.kernels.reference import gather_kv
from internvl_testing.paged_testing import build_paged_kv, max_abs_diff, packed_queries


def _sdpa_one(q, k, v, scale):
    """q [q_len, Hq, D] at the last positions of k/v [kv_len, Hkv, D]; bottom-right causal mask."""
    q_len, kv_len = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    visible = torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=kv_len - q_len)
    out = F.scaled_dot_product_attention(
        q.double().transpose(0, 1),
        k.double().repeat_interleave(group, 1).transpose(0, 1),
        v.double().repeat_interleave(group, 1).transpose(0, 1),
        attn_mask=visible,
        scale=scale,
    )
    return out.transpose(0, 1)


@pytest.mark.parametrize("heads", [(4, 2), (5, 1), (7, 1)])
def test_prefill_ref_matches_dense_sdpa(heads, gen):
    num_q_heads, num_kv_heads = heads
    q_lens, contexts = [5, 1, 23], [0, 40, 9]
    seq_lens = [a + b for a, b in zip(q_lens, contexts)]
    kv = build_paged_kv(seq_lens, num_kv_heads, 32, torch.float32, generator=gen)
    q, cu = packed_queries(q_lens, num_q_heads, 32, torch.float32, generator=gen)
    out = prefill_attention_ref(q, kv.k_cache, kv.v_cache, cu, kv.seq_lens, kv.block_tables, 0.2)
    for i, n in enumerate(seq_lens):
        k = gather_kv(kv.k_cache, kv.block_tables[i], n)
        v = gather_kv(kv.v_cache, kv.block_tables[i], n)
        want = _sdpa_one(q[cu[i] : cu[i + 1]], k, v, 0.2)
        assert max_abs_diff(out[cu[i] : cu[i + 1]], want) < 1e-5  # fp32 vs fp64 oracle


def test_decode_ref_is_prefill_ref_with_one_query(gen):
    kv = build_paged_kv([1, 37, 64], 2, 64, torch.float32, generator=gen)
    q, cu = packed_queries([1, 1, 1], 4, 64, torch.float32, generator=gen)
    want = prefill_attention_ref(q, kv.k_cache, kv.v_cache, cu, kv.seq_lens, kv.block_tables, 0.125)
    got = decode_attention_ref(q, kv.k_cache, kv.v_cache, kv.seq_lens, kv.block_tables, 0.125)
    assert torch.equal(got, want)


def test_write_kv_cache_ref_skips_negative_slots(gen):
    k_cache = torch.zeros(4, 8, 2, 16)
    v_cache = torch.zeros(4, 8, 2, 16)
    k = torch.randn(3, 2, 16, generator=gen)
    v = torch.randn(3, 2, 16, generator=gen)
    write_kv_cache_ref(k, v, k_cache, v_cache, torch.tensor([9, -1, 31]))
    assert torch.equal(k_cache[1, 1], k[0]) and torch.equal(v_cache[3, 7], v[2])
    assert k_cache.count_nonzero() == 2 * 2 * 16  # token 1 was not written anywhere


def test_refs_reject_lengths_that_cannot_hold_the_queries(gen):
    kv = build_paged_kv([4], 1, 16, torch.float32, generator=gen)
    q, cu = packed_queries([5], 1, 16, torch.float32, generator=gen)
    with pytest.raises(ValueError, match="seq_len 4 < query length 5"):
        prefill_attention_ref(q, kv.k_cache, kv.v_cache, cu, kv.seq_lens, kv.block_tables, 1.0)
