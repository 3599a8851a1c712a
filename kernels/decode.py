"""Split-KV paged decode (flash-decoding): one query token per sequence.

Program (sequence, KV head, split) reads its share of the sequence's keys once for the whole GQA group of
that head (the group's query heads are the rows of one tile), and writes a partial output and its
log-sum-exp. A second kernel merges the splits. With a single split the first kernel writes the output
directly. Every split writes its scratch row, an empty one too (lse = -inf), so the merge never reads
memory left over from an earlier call. The split count is a runtime argument: a new count does not
compile a new kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .backend import needs_upcast
from .config import DecodeConfig, next_pow2
from .prefill import LOG2E, dot_precision


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    out_ptr,
    part_out_ptr,
    part_lse_ptr,
    qk_scale,
    num_splits,
    stride_qs,
    stride_qh,
    stride_os,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    stride_ps,
    stride_ph,
    stride_pk,
    stride_ls,
    stride_lh,
    GROUP: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIRECT: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    # Splits are cut at tile borders, so only a sequence's last tile is partial.
    num_tiles = tl.cdiv(seq_len, BLOCK_N)
    tiles_per_split = tl.cdiv(num_tiles, num_splits)
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, seq_len)

    rows = tl.arange(0, BLOCK_H)
    heads = kv_head * GROUP + rows
    row_valid = rows < GROUP
    dims = tl.arange(0, HEAD_DIM)
    q = tl.load(
        q_ptr + seq.to(tl.int64) * stride_qs + heads[:, None] * stride_qh + dims[None, :],
        mask=row_valid[:, None],
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)

    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head = k_cache_ptr + kv_head * stride_kh
    v_head = v_cache_ptr + kv_head * stride_vh
    m_i = tl.full([BLOCK_H], -1.0e30, tl.float32)  # finite: no inf - inf
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    for tile in range(start, end, BLOCK_N):
        keys = tile + tl.arange(0, BLOCK_N)
        in_seq = keys < end
        # int64 before multiplying: block * stride overflows int32 on a large cache.
        blocks = tl.load(bt_row + keys // BLOCK_SIZE, mask=in_seq, other=0).to(tl.int64)
        k_off = blocks * stride_kb + (keys % BLOCK_SIZE) * stride_ks
        v_off = blocks * stride_vb + (keys % BLOCK_SIZE) * stride_vs
        # other=0: slots past the sequence may hold anything (NaN); 0 * NaN would leak into acc.
        k = tl.load(k_head + k_off[None, :] + dims[:, None], mask=in_seq[None, :], other=0.0)
        v = tl.load(v_head + v_off[:, None] + dims[None, :], mask=in_seq[:, None], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(in_seq[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]  # an empty split leaves acc = 0
    if DIRECT:  # a single split: no scratch, no merge
        tl.store(
            out_ptr + seq.to(tl.int64) * stride_os + heads[:, None] * stride_oh + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_valid[:, None],
        )
    else:
        part = part_out_ptr + seq.to(tl.int64) * stride_ps + heads * stride_ph + split * stride_pk
        tl.store(part[:, None] + dims[None, :], out, mask=row_valid[:, None])
        lse = tl.where(has_keys, m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        lse_ptr = part_lse_ptr + seq.to(tl.int64) * stride_ls + heads * stride_lh + split
        tl.store(lse_ptr, lse, mask=row_valid)


@triton.jit
def _decode_merge_kernel(
    out_ptr,
    part_out_ptr,
    part_lse_ptr,
    num_splits,
    stride_os,
    stride_oh,
    stride_ps,
    stride_ph,
    stride_pk,
    stride_ls,
    stride_lh,
    BLOCK_S: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, BLOCK_S)
    dims = tl.arange(0, HEAD_DIM)
    used = splits < num_splits
    lse = tl.load(part_lse_ptr + seq * stride_ls + head * stride_lh + splits, mask=used, other=float("-inf"))
    part = tl.load(
        part_out_ptr + seq * stride_ps + head * stride_ph + splits[:, None] * stride_pk + dims[None, :],
        mask=used[:, None],
        other=0.0,
    )
    has_keys = lse > float("-inf")
    lse_max = tl.max(tl.where(has_keys, lse, -1.0e30), 0)
    weight = tl.where(has_keys, tl.math.exp2(lse - lse_max), 0.0)
    total = tl.sum(weight, 0)
    out = tl.sum(part * weight[:, None], 0) / tl.where(total > 0.0, total, 1.0)  # no keys at all: 0
    tl.store(out_ptr + seq * stride_os + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty))


def launch_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    out: torch.Tensor,
    part_out: torch.Tensor | None,
    part_lse: torch.Tensor | None,
    num_splits: int,
    cfg: DecodeConfig,
) -> None:
    """Launch on arguments already checked by api.decode_attention.

    part_out fp32 [>= num_seqs, num_q_heads, >= num_splits, head_dim] and part_lse fp32
    [>= num_seqs, num_q_heads, >= num_splits] (last dims dense) are needed when num_splits > 1.
    """
    num_seqs, num_q_heads, head_dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    if num_splits == 1:
        part_out = part_lse = out  # unused by the kernel; any tensor fills the pointer slots
        part_strides = (0, 0, 0, 0, 0)
    else:
        part_strides = (
            part_out.stride(0),
            part_out.stride(1),
            part_out.stride(2),
            part_lse.stride(0),
            part_lse.stride(1),
        )
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        seq_lens,
        block_tables,
        out,
        part_out,
        part_lse,
        scale * LOG2E,
        num_splits,
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
        *part_strides,
        GROUP=group,
        BLOCK_H=max(16, next_pow2(group)),
        BLOCK_N=cfg.block_n,
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        DIRECT=num_splits == 1,
        UPCAST=needs_upcast(q.dtype),
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if num_splits == 1:
        return
    _decode_merge_kernel[(num_seqs, num_q_heads)](
        out,
        part_out,
        part_lse,
        num_splits,
        out.stride(0),
        out.stride(1),
        *part_strides,
        BLOCK_S=next_pow2(num_splits),
        HEAD_DIM=head_dim,
        num_warps=4 if head_dim * next_pow2(num_splits) >= 2048 else 1,
    )
