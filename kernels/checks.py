"""Argument checks run by the wrappers before a launch: a bad shape, dtype, device or stride must be a
ValueError with a message, not a silent out-of-bounds read inside a kernel.

Only metadata is checked (no `.item()`): values such as block ids or lengths would need a device sync.
"""

from __future__ import annotations

import torch

from .backend import use_triton

ATTN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def check_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device, and that device can run the Triton path."""
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"{name} is on {dev}, expected {first} like the other tensors")
    if not use_triton(first):
        raise ValueError(
            f"the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); got {first}. "
            "Use the *_ref functions on this device."
        )
    return first


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        raise ValueError(f"{name} has dtype {t.dtype}, expected one of {names}")


def check_ndim(name: str, t: torch.Tensor, ndim: int, layout: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(t.shape)}")


def check_last_contiguous(name: str, t: torch.Tensor) -> None:
    """Kernels load whole head vectors, so the last dimension must be dense."""
    if t.numel() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have stride 1 in its last dimension, got strides {t.stride()}")


def check_vector(name: str, t: torch.Tensor, length: int, dtype: torch.dtype) -> None:
    check_dtype(name, t, (dtype,))
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must be [{length}], got shape {tuple(t.shape)}")
    if length > 1 and t.stride(0) != 1:
        raise ValueError(f"{name} must be contiguous, got stride {t.stride()}")


def check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, int, int, int]:
    """Returns (num_blocks, block_size, num_kv_heads, head_dim)."""
    layout = "[num_blocks, block_size, num_kv_heads, head_dim]"
    check_ndim("k_cache", k_cache, 4, layout)
    check_ndim("v_cache", v_cache, 4, layout)
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ in shape")
    if k_cache.dtype != v_cache.dtype:
        raise ValueError(f"k_cache ({k_cache.dtype}) and v_cache ({v_cache.dtype}) differ in dtype")
    check_dtype("k_cache", k_cache, ATTN_DTYPES)
    check_last_contiguous("k_cache", k_cache)
    check_last_contiguous("v_cache", v_cache)
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    check_head_dim(head_dim)
    return num_blocks, block_size, num_kv_heads, head_dim


def check_head_dim(head_dim: int) -> None:
    if head_dim < 16 or head_dim > MAX_HEAD_DIM or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two in [16, {MAX_HEAD_DIM}], got {head_dim}")


def check_query(q: torch.Tensor, k_cache: torch.Tensor, name: str, rows: str) -> tuple[int, int]:
    """q [rows, num_q_heads, head_dim] matching the cache; returns (num_rows, num_q_heads)."""
    check_ndim(name, q, 3, f"[{rows}, num_q_heads, head_dim]")
    if q.dtype != k_cache.dtype:
        raise ValueError(f"{name} ({q.dtype}) and the KV cache ({k_cache.dtype}) differ in dtype")
    check_last_contiguous(name, q)
    num_rows, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if head_dim != k_cache.shape[3]:
        raise ValueError(f"{name} head_dim {head_dim} != cache head_dim {k_cache.shape[3]}")
    if num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads {num_q_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    return num_rows, num_q_heads


def check_block_tables(block_tables: torch.Tensor, num_seqs: int) -> None:
    check_dtype("block_tables", block_tables, (torch.int32,))
    check_ndim("block_tables", block_tables, 2, "[num_seqs, max_blocks]")
    if block_tables.shape[0] != num_seqs:
        raise ValueError(f"block_tables has {block_tables.shape[0]} rows, expected num_seqs={num_seqs}")
    check_last_contiguous("block_tables", block_tables)


def check_scale(scale: float) -> float:
    scale = float(scale)
    if not scale > 0.0:
        raise ValueError(f"scale must be positive, got {scale}")
    return scale


def check_out(out: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The caller's output buffer (shape and dtype of q) or a fresh one."""
    if out is None:
        return torch.empty_like(like)
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"out must match q: shape {tuple(like.shape)}, {like.dtype} on {like.device}; "
            f"got {tuple(out.shape)}, {out.dtype} on {out.device}"
        )
    check_last_contiguous("out", out)
    return out


def check_seq_lens(seq_lens: torch.Tensor) -> int:
    """seq_lens int32 [num_seqs]; returns num_seqs."""
    check_ndim("seq_lens", seq_lens, 1, "[num_seqs]")
    check_vector("seq_lens", seq_lens, seq_lens.shape[0], torch.int32)
    return seq_lens.shape[0]


def check_prefill_config(cfg, group: int) -> None:
    def pow2(n: int) -> bool:
        return n >= 16 and not n & (n - 1)

    if not (pow2(cfg.block_m) and pow2(cfg.block_n)) or cfg.block_m < group:
        raise ValueError(f"{cfg}: tiles must be powers of two >= 16 and block_m >= the GQA group ({group})")
