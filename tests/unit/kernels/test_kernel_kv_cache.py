"""KV-cache write kernel vs write_kv_cache_ref, under the Triton interpreter."""

from __future__ import annotations

import pytest
import torch

from internvl_serve.kernels import write_kv_cache, write_kv_cache_ref


def _caches(num_blocks, block_size, num_kv_heads, head_dim, dtype):
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)
    return k_cache, k_cache.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_kv_heads, head_dim", [(2, 64), (5, 128), (1, 64)])
def test_matches_reference_and_skips_negative_slots(dtype, num_kv_heads, head_dim, gen):
    num_blocks, block_size, num_tokens = 6, 16, 21
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[3, 10, 20]] = -1  # padding tokens
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(dtype)
    got_k, got_v = _caches(num_blocks, block_size, num_kv_heads, head_dim, dtype)
    want_k, want_v = _caches(num_blocks, block_size, num_kv_heads, head_dim, dtype)
    write_kv_cache(k, v, got_k, got_v, slots)
    write_kv_cache_ref(k, v, want_k, want_v, slots)
    # A copy is exact; NaN slots (never written) must stay NaN in the same places.
    assert torch.equal(got_k.nan_to_num(7.0), want_k.nan_to_num(7.0))
    assert torch.equal(got_v.nan_to_num(7.0), want_v.nan_to_num(7.0))
    assert got_k.isnan().sum() == (num_blocks * block_size - (num_tokens - 3)) * num_kv_heads * head_dim


def test_strided_views_of_a_fused_qkv_output(gen):
    """k/v sliced out of a [tokens, (Hq + 2 Hkv) * D] projection are strided views: no copy needed."""
    num_tokens, num_q_heads, num_kv_heads, head_dim = 9, 4, 2, 64
    qkv = torch.randn(num_tokens, (num_q_heads + 2 * num_kv_heads) * head_dim, generator=gen)
    q_size, kv_size = num_q_heads * head_dim, num_kv_heads * head_dim
    k = qkv[:, q_size : q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    v = qkv[:, q_size + kv_size :].view(num_tokens, num_kv_heads, head_dim)
    assert not k.is_contiguous()
    slots = torch.arange(num_tokens, dtype=torch.int64) * 3
    got_k, got_v = _caches(4, 8, num_kv_heads, head_dim, torch.float32)
    want_k, want_v = _caches(4, 8, num_kv_heads, head_dim, torch.float32)
    write_kv_cache(k, v, got_k, got_v, slots)
    write_kv_cache_ref(k.contiguous(), v.contiguous(), want_k, want_v, slots)
    assert torch.equal(got_k.nan_to_num(7.0), want_k.nan_to_num(7.0))
    assert torch.equal(got_v.nan_to_num(7.0), want_v.nan_to_num(7.0))


def test_no_tokens_is_a_no_op():
    k_cache, v_cache = _caches(2, 4, 1, 16, torch.float32)
    empty = torch.empty(0, 1, 16)
    write_kv_cache(empty, empty, k_cache, v_cache, torch.empty(0, dtype=torch.int64))
    assert k_cache.isnan().all()
