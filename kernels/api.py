"""The public kernel entry points: check every argument, pick a launch config, launch.

Triton is imported on the first launch, not with this module: triton decides interpreter vs compiler
for its own library when it is first imported, so importing the package for the reference path (the
decoder on a CPU) must not import it before a test has set TRITON_INTERPRET.
"""

from __future__ import annotations

import torch

from . import checks
from .backend import interpreting
from .config import DecodeConfig, PrefillConfig, choose_num_splits, decode_config, num_sms, prefill_config
from .workspace import DecodeWorkspace


def write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store k/v [num_tokens, num_kv_heads, head_dim] into the paged caches in place.

    slot_mapping int64 [num_tokens]: slot = block * block_size + offset; a negative slot skips the token.
    k and v may be strided views (slices of a fused QKV output) with a dense last dimension.
    """
    checks.check_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    _, _, num_kv_heads, head_dim = checks.check_cache(k_cache, v_cache)
    layout = "[num_tokens, num_kv_heads, head_dim]"
    checks.check_ndim("k", k, 3, layout)
    checks.check_ndim("v", v, 3, layout)
    if k.shape != v.shape or tuple(k.shape[1:]) != (num_kv_heads, head_dim):
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [num_tokens, {num_kv_heads}, {head_dim}]")
    if k.dtype != k_cache.dtype or v.dtype != k_cache.dtype:
        raise ValueError(f"k/v ({k.dtype}/{v.dtype}) must have the cache dtype {k_cache.dtype}")
    checks.check_last_contiguous("k", k)
    checks.check_last_contiguous("v", v)
    checks.check_vector("slot_mapping", slot_mapping, k.shape[0], torch.int64)
    if k.shape[0] == 0:
        return
    from .kv_write import launch_write_kv_cache

    launch_write_kv_cache(k, v, k_cache, v_cache, slot_mapping)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    *,
    out: torch.Tensor | None = None,
    config: PrefillConfig | None = None,
) -> torch.Tensor:
    """Causal attention of packed queries q [total_q, num_q_heads, head_dim] over the paged cache.

    cu_seqlens_q int32 [num_seqs + 1]; seq_lens int32 [num_seqs] counts every cached token of a sequence,
    the new ones included (write their K/V first), so sequence i's queries are its last cu[i+1] - cu[i]
    positions. block_tables int32 [num_seqs, max_blocks]. Returns a tensor like q (or fills `out`).
    Values (lengths, block ids) are the caller's contract: checking them would need a device sync.
    """
    checks.check_device(
        q=q, k_cache=k_cache, v_cache=v_cache, cu_seqlens_q=cu_seqlens_q, seq_lens=seq_lens, block_tables=block_tables
    )
    _, _, num_kv_heads, head_dim = checks.check_cache(k_cache, v_cache)
    total_q, num_q_heads = checks.check_query(q, k_cache, "q", "total_q")
    num_seqs = checks.check_seq_lens(seq_lens)
    checks.check_vector("cu_seqlens_q", cu_seqlens_q, num_seqs + 1, torch.int32)
    checks.check_block_tables(block_tables, num_seqs)
    scale = checks.check_scale(scale)
    out = checks.check_out(out, q)
    if total_q == 0 or num_seqs == 0:
        return out
    group = num_q_heads // num_kv_heads
    cfg = config or prefill_config(head_dim, group, interpreting())
    checks.check_prefill_config(cfg, group)
    from .prefill import launch_prefill

    launch_prefill(q, k_cache, v_cache, cu_seqlens_q, seq_lens, block_tables, scale, out, cfg)
    return out


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    *,
    workspace: DecodeWorkspace | None = None,
    num_splits: int | None = None,
    max_seq_len: int | None = None,
    out: torch.Tensor | None = None,
    config: DecodeConfig | None = None,
) -> torch.Tensor:
    """One query per sequence, q [num_seqs, num_q_heads, head_dim], over seq_lens[i] cached tokens.

    Split-KV: `num_splits` (default: choose_num_splits of batch, KV heads, `max_seq_len` and the SM
    count) programs share each (sequence, KV head); their partials live in `workspace` (allocated
    per call when None). For CUDA-graph capture pass a workspace and `num_splits` or `max_seq_len`;
    without them the length bound is the block table width (no device sync either way).
    A sequence with seq_len 0 (a padding slot of a captured batch) gets zeros.
    """
    device = checks.check_device(q=q, k_cache=k_cache, v_cache=v_cache, seq_lens=seq_lens, block_tables=block_tables)
    _, block_size, num_kv_heads, head_dim = checks.check_cache(k_cache, v_cache)
    num_seqs, num_q_heads = checks.check_query(q, k_cache, "q", "num_seqs")
    checks.check_vector("seq_lens", seq_lens, num_seqs, torch.int32)
    checks.check_block_tables(block_tables, num_seqs)
    scale = checks.check_scale(scale)
    out = checks.check_out(out, q)
    if num_seqs == 0:
        return out
    if workspace is not None:
        workspace.check(num_seqs, num_q_heads, head_dim, device)
    max_splits = workspace.max_splits if workspace is not None else None
    if num_splits is None:
        bound = max_seq_len if max_seq_len is not None else block_tables.shape[1] * block_size
        kwargs = {} if max_splits is None else {"max_splits": max_splits}
        num_splits = choose_num_splits(num_seqs, num_kv_heads, bound, num_sms(device), **kwargs)
    elif num_splits < 1 or (max_splits is not None and num_splits > max_splits):
        raise ValueError(f"num_splits must be in [1, {max_splits or 'any'}], got {num_splits}")
    part_out = part_lse = None
    if num_splits > 1:
        if workspace is None:
            workspace = DecodeWorkspace.allocate(num_seqs, num_q_heads, head_dim, num_splits, device)
        part_out, part_lse = workspace.partial_out, workspace.partial_lse
    cfg = config or decode_config(head_dim, interpreting())
    from .decode import launch_decode

    launch_decode(q, k_cache, v_cache, seq_lens, block_tables, scale, out, part_out, part_lse, num_splits, cfg)
    return out
