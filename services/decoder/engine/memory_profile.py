"""KV-cache sizing on CUDA from a measured peak (as vLLM's and nano-vllm's profile runs do), not a guess.

Before the cache exists, one step of the largest shape the scheduler can make (--max-tokens-per-step
prompt tokens, --max-num-seqs rows of logits) runs over a scratch cache; the memory it needed beyond the
weights and that scratch cache is what every later step may need. The cache then gets the rest of
--gpu-memory-fraction of the device (kv_cache.num_kv_blocks). The CPU keeps its fixed budget (--kv-cache-mb).
"""

from __future__ import annotations

import torch

from internvl_serve.decoder.engine.attention import AttentionMetadata
from internvl_serve.decoder.engine.kv_cache import KVCache, KVCacheSpec


def prefill_step_inputs(num_tokens: int, num_logits: int, block_size: int):
    """One sequence of `num_tokens` prompt tokens in blocks 0..n-1 (random ids), sampling the last
    `num_logits` positions: the largest step the scheduler can make."""
    from internvl_serve.decoder.engine.model_runner import StepInputs

    blocks = -(-num_tokens // block_size)
    num_logits = max(1, min(num_logits, num_tokens))
    meta = AttentionMetadata(
        slot_mapping=torch.arange(num_tokens, dtype=torch.int64),
        num_decode_tokens=0,
        decode_seq_lens=torch.zeros(0, dtype=torch.int32),
        decode_block_tables=torch.zeros((0, 1), dtype=torch.int32),
        decode_max_seq_len=0,
        prefill_cu_seqlens=torch.tensor([0, num_tokens], dtype=torch.int32),
        prefill_seq_lens=torch.tensor([num_tokens], dtype=torch.int32),
        prefill_block_tables=torch.arange(blocks, dtype=torch.int32).unsqueeze(0),
    )
    return StepInputs(
        token_ids=torch.randint(0, 1000, (num_tokens,), dtype=torch.int64),
        positions=torch.arange(num_tokens, dtype=torch.int64),
        media_index=torch.zeros(0, dtype=torch.int64),
        media_rows=None,
        logits_indices=torch.arange(num_tokens - num_logits, num_tokens, dtype=torch.int64),
        meta=meta,
    )


def activation_peak_bytes(model, spec: KVCacheSpec, max_tokens: int, max_rows: int, device: torch.device) -> int:
    """CUDA: the memory one largest step needs beyond the weights (measured, then released)."""
    from internvl_serve.decoder.engine.model_runner import ModelRunner

    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    scratch = KVCache(spec, -(-max_tokens // spec.block_size), device)
    logits = ModelRunner(model, scratch, device).execute(prefill_step_inputs(max_tokens, max_rows, spec.block_size))
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base - scratch.nbytes
    del logits, scratch
    torch.cuda.empty_cache()
    return max(0, peak)
