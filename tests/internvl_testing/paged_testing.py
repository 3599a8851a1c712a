"""Builders for paged-KV test inputs: shuffled block tables, NaN wherever a kernel must not read."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedKV:
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks]
    seq_lens: torch.Tensor  # int32 [num_seqs]


def build_paged_kv(
    seq_lens: list[int],
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    block_size: int = 16,
    spare_blocks: int = 3,
    generator: torch.Generator | None = None,
) -> PagedKV:
    """A cache holding random K/V for each sequence's positions, blocks assigned in shuffled order.

    Every slot no sequence owns (tails of last blocks, spare blocks) is NaN, and the padding entries of
    the block table point at a NaN spare block: reading anything outside a sequence poisons the output.
    """
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    order = torch.randperm(num_blocks, generator=generator).to(torch.int32)
    spare = int(order[-1]) if spare_blocks else 0
    max_blocks = max(blocks_per_seq + [1]) + 1  # one padding column at least
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    block_tables = torch.full((len(seq_lens), max_blocks), spare, dtype=torch.int32)
    used = 0
    for i, (length, count) in enumerate(zip(seq_lens, blocks_per_seq)):
        block_tables[i, :count] = order[used : used + count]
        used += count
        positions = torch.arange(length)
        blocks = block_tables[i, positions // block_size].long()
        offsets = positions % block_size
        k_cache[blocks, offsets] = torch.randn(length, num_kv_heads, head_dim, generator=generator).to(dtype)
        v_cache[blocks, offsets] = torch.randn(length, num_kv_heads, head_dim, generator=generator).to(dtype)
    return PagedKV(k_cache, v_cache, block_tables, torch.tensor(seq_lens, dtype=torch.int32))


def packed_queries(
    q_lens: list[int],
    num_q_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [sum(q_lens), num_q_heads, head_dim] and cu_seqlens_q int32 [len(q_lens) + 1]."""
    total = sum(q_lens)
    q = torch.randn(total, num_q_heads, head_dim, generator=generator).to(dtype)
    cu = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(q_lens, dtype=torch.int32).cumsum(0)
    return q, cu


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
