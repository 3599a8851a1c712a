"""Paged, packed variable-length causal prefill (flash-attention style, online softmax in exp2 form).

Each program owns BLOCK_Q query tokens of one sequence for one KV head, with the whole GQA group of that
head packed into the rows of its tiles (row = token * GROUP + head-in-group), so K/V tiles are loaded once
per group. Keys are read through the block table: the cached prefix (chunked prefill, prefix reuse) and
the chunk's own tokens alike.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .backend import needs_upcast
from .config import PrefillConfig

LOG2E = 1.4426950408889634


@triton.jit
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    cu_seqlens_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    qk_scale,
    num_seqs,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)

    # Sequence i owns program ids from cu[i] // BLOCK_Q + i on (at least cdiv(q_len, BLOCK_Q) of them),
    # so the grid needs no host-side max length and no device sync. Binary search for this id's owner.
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(cu_seqlens_ptr + mid) // BLOCK_Q + mid <= q_block:
            lo = mid + 1
        else:
            hi = mid
    seq = lo - 1
    q_start = tl.load(cu_seqlens_ptr + seq)
    q_len = tl.load(cu_seqlens_ptr + seq + 1) - q_start
    local = q_block - (q_start // BLOCK_Q + seq)
    if local * BLOCK_Q >= q_len:
        return  # spare program id of this sequence
    context = tl.load(seq_lens_ptr + seq) - q_len

    rows = tl.arange(0, BLOCK_M)
    row_q = local * BLOCK_Q + rows // GROUP
    row_head = kv_head * GROUP + rows % GROUP
    row_valid = (rows < BLOCK_Q * GROUP) & (row_q < q_len)
    row_pos = context + row_q  # position in the sequence = key index it may see up to
    dims = tl.arange(0, HEAD_DIM)

    q_rows = (q_start + row_q).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qt + row_head[:, None] * stride_qh + dims[None, :],
        mask=row_valid[:, None],
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)

    first_pos = context + local * BLOCK_Q
    kv_end = context + tl.minimum(local * BLOCK_Q + BLOCK_Q, q_len)
    # Keys up to first_pos are visible to every row: whole tiles below it skip the mask. Tiles past
    # kv_end are fully masked for every row and are never visited.
    full_end = (first_pos + 1) // BLOCK_N * BLOCK_N

    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head = k_cache_ptr + kv_head * stride_kh
    v_head = v_cache_ptr + kv_head * stride_vh
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: no inf - inf on a fully masked tile
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    for stage in tl.static_range(2):
        if stage == 0:
            tile_lo = 0
            tile_hi = full_end
        else:
            tile_lo = full_end
            tile_hi = kv_end
        for start in range(tile_lo, tile_hi, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            in_seq = keys < kv_end
            if stage == 0:
                blocks = tl.load(bt_row + keys // BLOCK_SIZE)
            else:
                blocks = tl.load(bt_row + keys // BLOCK_SIZE, mask=in_seq, other=0)
            # int64 before multiplying: block * stride overflows int32 on a large cache.
            blocks = blocks.to(tl.int64)
            k_off = blocks * stride_kb + (keys % BLOCK_SIZE) * stride_ks
            v_off = blocks * stride_vb + (keys % BLOCK_SIZE) * stride_vs
            if stage == 0:
                k = tl.load(k_head + k_off[None, :] + dims[:, None])
                v = tl.load(v_head + v_off[:, None] + dims[None, :])
            else:
                # other=0: a slot past the sequence may hold anything (NaN); 0 * NaN would leak into acc.
                k = tl.load(k_head + k_off[None, :] + dims[:, None], mask=in_seq[None, :], other=0.0)
                v = tl.load(v_head + v_off[:, None] + dims[None, :], mask=in_seq[:, None], other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)

            s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
            if stage == 1:
                s = tl.where(keys[None, :] <= row_pos[:, None], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

    l_i = tl.where(l_i > 0.0, l_i, 1.0)  # rows that are not stored; keeps the division quiet
    out = acc / l_i[:, None]
    tl.store(
        out_ptr + q_rows[:, None] * stride_ot + row_head[:, None] * stride_oh + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_valid[:, None],
    )


def dot_precision(dtype: torch.dtype) -> str | None:
    """fp32 inputs get exact fp32 products (tl.dot would use tf32); 16-bit inputs keep the default."""
    return "ieee" if dtype == torch.float32 else None


def launch_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    out: torch.Tensor,
    cfg: PrefillConfig,
) -> None:
    """Launch on arguments already checked by api.prefill_attention."""
    total_q, num_q_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    num_seqs = seq_lens.shape[0]
    group = num_q_heads // num_kv_heads
    block_q = cfg.block_q(group)
    # Sequence i's programs start at cu[i] // block_q + i: this bounds the last one without a sync.
    grid = (total_q // block_q + num_seqs, num_kv_heads)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        cu_seqlens_q,
        seq_lens,
        block_tables,
        scale * LOG2E,
        num_seqs,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        GROUP=group,
        BLOCK_M=cfg.block_m,
        BLOCK_Q=block_q,
        BLOCK_N=cfg.block_n,
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        UPCAST=needs_upcast(q.dtype),
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
