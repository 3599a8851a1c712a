"""CUDA graphs for decode steps: one graph per batch-size bucket, replayed with static input buffers.

A decode step of n sequences is padded to the smallest bucket >= n (1, 2, 4, 8, 16, 32, ... up to
--max-num-seqs): padding rows have token 0, position 0, slot -1 (the KV write skips them) and seq_len 0
(the decode kernel gives them zeros), so the real rows' logits are those of the eager step. The graph of a
bucket is captured once, at warm-up, with the decode kernel's split count fixed by `max_seq_len` (the
context length); each replay first copies the step's tensors into the buffers. Prefill and mixed steps
stay eager (their shapes vary too much to capture).

The bucket choice, the padding and the buffer bookkeeping are plain functions tested on the CPU; only
capture() and replay need CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from internvl_serve.decoder.engine.attention import AttentionMetadata
from internvl_serve.decoder.engine.kv_cache import KVCache


def graph_buckets(max_num_seqs: int) -> list[int]:
    """Powers of two up to max_num_seqs, and max_num_seqs itself: [1, 2, 4, ..., max]."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    buckets, size = [], 1
    while size < max_num_seqs:
        buckets.append(size)
        size *= 2
    return [*buckets, max_num_seqs]


def bucket_for(n: int, buckets: list[int]) -> int | None:
    """The smallest bucket that holds n rows (None: more rows than the largest bucket)."""
    return next((b for b in buckets if b >= n), None)


@dataclass
class DecodeBuffers:
    """The static tensors a captured graph reads, sized for the largest bucket (a bucket uses a prefix)."""

    token_ids: torch.Tensor  # int64 [max_bs]
    positions: torch.Tensor  # int64 [max_bs]
    slot_mapping: torch.Tensor  # int64 [max_bs]
    seq_lens: torch.Tensor  # int32 [max_bs]
    block_tables: torch.Tensor  # int32 [max_bs, max_blocks]
    logits_indices: torch.Tensor  # int64 [max_bs]: arange (every decode row is sampled)

    @classmethod
    def allocate(cls, max_bs: int, max_blocks: int, device: torch.device | str) -> DecodeBuffers:
        def zeros(*shape, dtype):
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(
            token_ids=zeros(max_bs, dtype=torch.int64),
            positions=zeros(max_bs, dtype=torch.int64),
            slot_mapping=torch.full((max_bs,), -1, dtype=torch.int64, device=device),
            seq_lens=zeros(max_bs, dtype=torch.int32),
            block_tables=zeros(max_bs, max_blocks, dtype=torch.int32),
            logits_indices=torch.arange(max_bs, dtype=torch.int64, device=device),
        )

    @property
    def max_blocks(self) -> int:
        return self.block_tables.shape[1]

    def fill(self, inputs, bucket: int) -> None:
        """Copy a pure decode step's tensors into rows [0, n) and pad rows [n, bucket)."""
        meta = inputs.meta
        n = meta.num_decode_tokens
        width = meta.decode_block_tables.shape[1]
        if width > self.max_blocks:
            raise ValueError(f"block tables of {width} blocks exceed the captured {self.max_blocks}")
        self.token_ids[:n].copy_(inputs.token_ids, non_blocking=True)
        self.positions[:n].copy_(inputs.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(meta.decode_seq_lens, non_blocking=True)
        self.block_tables[:n, :width].copy_(meta.decode_block_tables, non_blocking=True)
        self.block_tables[:n, width:].zero_()
        self.token_ids[n:bucket].zero_()
        self.positions[n:bucket].zero_()
        self.slot_mapping[n:bucket].fill_(-1)
        self.seq_lens[n:bucket].zero_()
        self.block_tables[n:bucket].zero_()

    def meta(self, bucket: int, max_seq_len: int) -> AttentionMetadata:
        """The metadata of a bucket-sized step over the buffers (views: a replay sees the latest fill)."""
        device = self.token_ids.device
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bucket],
            num_decode_tokens=bucket,
            decode_seq_lens=self.seq_lens[:bucket],
            decode_block_tables=self.block_tables[:bucket],
            decode_max_seq_len=max_seq_len,
            prefill_cu_seqlens=torch.zeros(1, dtype=torch.int32, device=device),
            prefill_seq_lens=torch.zeros(0, dtype=torch.int32, device=device),
            prefill_block_tables=torch.zeros((0, 1), dtype=torch.int32, device=device),
        )


def graphable(inputs, max_bs: int, max_blocks: int) -> bool:
    """A step a graph can run: decode tokens only, no media rows, within the largest bucket and width."""
    meta = inputs.meta
    n = meta.num_decode_tokens
    return (
        0 < n <= max_bs
        and inputs.token_ids.shape[0] == n
        and inputs.media_rows is None
        and inputs.logits_indices.shape[0] == n
        and meta.decode_block_tables.shape[1] <= max_blocks
    )


class DecodeGraphs:
    """Captured decode graphs over one model and KV cache (CUDA)."""

    def __init__(self, model, kv_cache: KVCache, device: torch.device | str, max_num_seqs: int, max_seq_len: int):
        self.model = model
        self.kv_cache = kv_cache
        self.device = torch.device(device)
        self.buckets = graph_buckets(max_num_seqs)
        self.max_seq_len = max_seq_len
        max_blocks = -(-max_seq_len // kv_cache.spec.block_size)
        self.buffers = DecodeBuffers.allocate(self.buckets[-1], max_blocks, self.device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}

    @property
    def captured(self) -> bool:
        return bool(self._graphs)

    def _forward(self, bucket: int) -> torch.Tensor:
        b = self.buffers
        with torch.inference_mode():
            embeds = self.model.embed(b.token_ids[:bucket])
            return self.model(
                embeds,
                b.positions[:bucket],
                self.kv_cache.layers,
                b.meta(bucket, self.max_seq_len),
                b.logits_indices[:bucket],
            )

    def capture(self) -> None:
        """One graph per bucket, largest first, sharing one memory pool (as vLLM does)."""
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        pool = None
        for bucket in reversed(self.buckets):
            self.buffers.fill(_empty_decode(), bucket)  # every row padding: writes nothing
            for _ in range(2):  # warm up: Triton autotuning and cuBLAS workspaces, outside the capture
                self._forward(bucket)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._forward(bucket)
            pool = graph.pool()
            self._graphs[bucket], self._outputs[bucket] = graph, out
        torch.cuda.synchronize(self.device)

    def can_run(self, inputs) -> bool:
        return self.captured and graphable(inputs, self.buckets[-1], self.buffers.max_blocks)

    def run(self, inputs) -> torch.Tensor:
        """fp32 logits [n, vocab] of a graphable step (a view of the graph's output, valid until the next run)."""
        n = inputs.meta.num_decode_tokens
        bucket = bucket_for(n, self.buckets)
        self.buffers.fill(inputs, bucket)  # host-to-device copies into the captured addresses
        self._graphs[bucket].replay()
        return self._outputs[bucket][:n]


def _empty_decode():
    """A zero-row decode step: filling the buffers with it pads every row."""
    from types import SimpleNamespace

    empty64, empty32 = torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int32)
    meta = SimpleNamespace(
        num_decode_tokens=0,
        slot_mapping=empty64,
        decode_seq_lens=empty32,
        decode_block_tables=torch.zeros((0, 1), dtype=torch.int32),
    )
    return SimpleNamespace(token_ids=empty64, positions=empty64, meta=meta)
