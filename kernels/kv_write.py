"""Write new tokens' K/V into the paged cache: token t goes to slot_mapping[t] (block * block_size + offset)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import next_pow2


@triton.jit
def _write_kv_cache_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kc_b,
    stride_kc_s,
    stride_kc_h,
    stride_vc_b,
    stride_vc_s,
    stride_vc_h,
    num_kv_heads,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token)  # int64: slots of a large cache overflow int32
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, HEAD_DIM)
    # A negative slot marks a padding token (vLLM's convention): nothing is stored.
    mask = (heads[:, None] < num_kv_heads) & (slot >= 0)
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE

    src_k = k_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :]
    src_v = v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :]
    dst_k = k_cache_ptr + block * stride_kc_b + offset * stride_kc_s + heads[:, None] * stride_kc_h + dims[None, :]
    dst_v = v_cache_ptr + block * stride_vc_b + offset * stride_vc_s + heads[:, None] * stride_vc_h + dims[None, :]
    tl.store(dst_k, tl.load(src_k, mask=mask), mask=mask)
    tl.store(dst_v, tl.load(src_v, mask=mask), mask=mask)


def launch_write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Launch on arguments already checked by api.write_kv_cache."""
    num_tokens, num_kv_heads, head_dim = k.shape
    block_size = k_cache.shape[1]
    _write_kv_cache_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        num_kv_heads,
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        BLOCK_H=next_pow2(num_kv_heads),
        num_warps=4 if num_kv_heads * head_dim >= 1024 else 1,
    )
