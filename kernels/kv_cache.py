"""Write new tokens' K/V into the paged cache: token t goes to slot_mapping[t] (block * block_size + offset)."""

from __future__ import annotations

import torch
import triton.language as tl

from . import checks
from .config import next_pow2
from .jit import mode_jit


@mode_jit
def _write_kv_cache_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kc_b, stride_kc_s, stride_kc_h,
    stride_vc_b, stride_vc_s, stride_vc_h,
    num_kv_heads,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
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


def write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store k/v [num_tokens, num_kv_heads, head_dim] into k_cache/v_cache in place.

    slot_mapping is int64 [num_tokens]; a negative slot skips that token. k and v may be strided views
    (e.g. slices of a fused QKV projection) as long as the head dimension is dense.
    """
    checks.check_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    _, block_size, num_kv_heads, head_dim = checks.check_cache(k_cache, v_cache)
    layout = "[num_tokens, num_kv_heads, head_dim]"
    checks.check_ndim("k", k, 3, layout)
    checks.check_ndim("v", v, 3, layout)
    if k.shape != v.shape or tuple(k.shape[1:]) != (num_kv_heads, head_dim):
        raise ValueError(
            f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be [num_tokens, {num_kv_heads}, {head_dim}]"
        )
    if k.dtype != k_cache.dtype or v.dtype != v_cache.dtype:
        raise ValueError(f"k/v ({k.dtype}/{v.dtype}) must have the cache dtype {k_cache.dtype}")
    checks.check_last_contiguous("k", k)
    checks.check_last_contiguous("v", v)
    num_tokens = k.shape[0]
    checks.check_vector("slot_mapping", slot_mapping, num_tokens, torch.int64)
    if num_tokens == 0:
        return

    _write_kv_cache_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        num_kv_heads,
        BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_H=next_pow2(num_kv_heads),
        num_warps=4 if num_kv_heads * head_dim >= 1024 else 1,
    )
