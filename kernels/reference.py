"""PyTorch references for the kernels: plain loops over sequences, fp32 math, any device.

These are the oracle the Triton kernels are tested against and the path the decoder takes on the CPU.
"""

from __future__ import annotations

import torch


def write_kv_cache_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store token t's K/V [num_kv_heads, head_dim] at slot_mapping[t]; negative slots are skipped."""
    block_size = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = k[keep].to(k_cache.dtype)
    v_cache[blocks, offsets] = v[keep].to(v_cache.dtype)


def gather_kv(cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first seq_len positions of one sequence, [seq_len, num_kv_heads, head_dim]."""
    block_size = cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    blocks = block_table_row[:num_blocks].long()
    return cache[blocks].reshape(num_blocks * block_size, *cache.shape[2:])[:seq_len]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of q [q_len, Hq, D] over k/v [kv_len, Hkv, D]; q sits at the last positions."""
    q_len, num_q_heads, _ = q.shape
    kv_len, num_kv_heads, _ = k.shape
    group = num_q_heads // num_kv_heads
    qf = q.float().transpose(0, 1)  # [Hq, q_len, D]
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, kv_len, D]
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = torch.matmul(qf, kf.transpose(1, 2)) * scale  # [Hq, q_len, kv_len]
    q_pos = torch.arange(kv_len - q_len, kv_len, device=q.device)
    k_pos = torch.arange(kv_len, device=q.device)
    scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, vf).transpose(0, 1)  # [q_len, Hq, D]


def prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Packed varlen causal attention; sequence i's queries are its last (cu[i+1]-cu[i]) positions."""
    out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    for i, seq_len in enumerate(lens):
        start, end = cu[i], cu[i + 1]
        if end == start:
            continue
        if seq_len < end - start:
            raise ValueError(f"sequence {i}: seq_len {seq_len} < query length {end - start}")
        k = gather_kv(k_cache, block_tables[i], seq_len)
        v = gather_kv(v_cache, block_tables[i], seq_len)
        out[start:end] = _attend(q[start:end], k, v, scale).to(q.dtype)
    return out


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query per sequence (its last position) over all seq_lens[i] cached positions.

    seq_len 0 (a padding slot of a captured batch) gives zeros, as the kernel does.
    """
    out = torch.zeros_like(q)
    for i, seq_len in enumerate(seq_lens.tolist()):
        if seq_len < 0:
            raise ValueError(f"sequence {i}: seq_len must be >= 0, got {seq_len}")
        if seq_len == 0:
            continue
        k = gather_kv(k_cache, block_tables[i], seq_len)
        v = gather_kv(v_cache, block_tables[i], seq_len)
        out[i] = _attend(q[i : i + 1], k, v, scale)[0].to(q.dtype)
    return out
