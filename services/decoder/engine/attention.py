"""Paged attention over the KV cache for one flat step: decode tokens first, then prefill chunks.

The Triton kernels run on CUDA; everywhere else the batched PyTorch paths (kernels/torch_paged.py, tested
against the `*_ref` references) run. The choice follows the tensors' device, never the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from internvl_serve.kernels import (
    SequenceBlocks,
    decode_attention,
    decode_attention_torch,
    prefill_attention,
    prefill_attention_torch,
    write_kv_cache,
    write_kv_cache_ref,
)


@dataclass
class AttentionMetadata:
    """Where each of the step's tokens lives in the paged cache and which keys it may attend to.

    Tokens [0, num_decode_tokens) are single-token sequences (one query at the sequence's last position);
    the rest are the prefill chunks, packed by `prefill_cu_seqlens`. Seq lens count every cached token of
    a sequence, this step's included.
    """

    slot_mapping: torch.Tensor  # int64 [num_tokens]
    num_decode_tokens: int
    decode_seq_lens: torch.Tensor  # int32 [num_decode_tokens]
    decode_block_tables: torch.Tensor  # int32 [num_decode_tokens, max_blocks]
    decode_max_seq_len: int  # host-side bound, so split-KV needs no device sync
    prefill_cu_seqlens: torch.Tensor  # int32 [num_prefill_seqs + 1], offsets into the prefill part
    prefill_seq_lens: torch.Tensor  # int32 [num_prefill_seqs]
    prefill_block_tables: torch.Tensor  # int32 [num_prefill_seqs, max_blocks]
    # CPU path: block ids per sequence, computed by the first layer and reused by the others
    cpu_blocks: dict[str, SequenceBlocks] = field(default_factory=dict)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """Store this step's k/v [T, Hkv, D] in the cache, then attend with q [T, Hq, D]; returns [T, Hq, D].

    use_triton None: the Triton kernels on CUDA tensors, the references otherwise (tests pass True to run
    the kernels under the Triton interpreter on CPU tensors).
    """
    if use_triton is None:
        use_triton = q.device.type == "cuda"
    d = meta.num_decode_tokens
    total = q.shape[0]
    if use_triton:
        write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        if d:
            decode_attention(
                q[:d],
                k_cache,
                v_cache,
                meta.decode_seq_lens,
                meta.decode_block_tables,
                scale,
                max_seq_len=meta.decode_max_seq_len,
                out=out[:d],
            )
        if total > d:
            prefill_attention(
                q[d:],
                k_cache,
                v_cache,
                meta.prefill_cu_seqlens,
                meta.prefill_seq_lens,
                meta.prefill_block_tables,
                scale,
                out=out[d:],
            )
        return out
    write_kv_cache_ref(k, v, k_cache, v_cache, meta.slot_mapping)
    if not meta.cpu_blocks:
        block_size = k_cache.shape[1]
        meta.cpu_blocks["decode"] = SequenceBlocks.of(meta.decode_seq_lens, meta.decode_block_tables, block_size)
        meta.cpu_blocks["prefill"] = SequenceBlocks.of(meta.prefill_seq_lens, meta.prefill_block_tables, block_size)
    parts = []
    if d:
        parts.append(
            decode_attention_torch(
                q[:d],
                k_cache,
                v_cache,
                meta.decode_seq_lens,
                meta.decode_block_tables,
                scale,
                blocks=meta.cpu_blocks["decode"],
            )
        )
    if total > d:
        parts.append(
            prefill_attention_torch(
                q[d:],
                k_cache,
                v_cache,
                meta.prefill_cu_seqlens,
                meta.prefill_seq_lens,
                meta.prefill_block_tables,
                scale,
                blocks=meta.cpu_blocks["prefill"],
            )
        )
    return parts[0] if len(parts) == 1 else torch.cat(parts)
