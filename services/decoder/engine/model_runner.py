"""ModelRunner: turns a scheduled batch into tensors and runs the model. No policy decisions.

`prepare` reads sequence state and must run between steps (on the engine's loop); `execute` only touches
the tensors `prepare` built, so it can run in a worker thread while the loop takes new requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from internvl_serve.decoder.engine.attention import AttentionMetadata
from internvl_serve.decoder.engine.kv_cache import KVCache
from internvl_serve.decoder.engine.qwen2 import Qwen2ForCausalLM
from internvl_serve.decoder.engine.scheduler import ScheduledChunk


@dataclass
class StepInputs:
    """One step as flat tensors: decode tokens first, then prefill chunks (host tensors until execute)."""

    token_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    media_index: torch.Tensor  # int64 [M]: flat token indices whose embeddings are media rows
    media_rows: torch.Tensor | None  # [M, hidden] on the model's device
    logits_indices: torch.Tensor  # int64 [S]: the last token of each sampling chunk, in chunk order
    meta: AttentionMetadata


def _int32(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def _block_tables(tables: list[list[int]]) -> torch.Tensor:
    width = max((len(t) for t in tables), default=0) or 1
    out = torch.zeros((len(tables), width), dtype=torch.int32)
    for i, table in enumerate(tables):
        out[i, : len(table)] = torch.tensor(table, dtype=torch.int32)
    return out


class ModelRunner:
    def __init__(self, model: Qwen2ForCausalLM, kv_cache: KVCache, device: torch.device, tp=None, graphs=None):
        """`tp`: rank 0's TPWorkers; each step goes to them before it runs here (tp_workers.py). `graphs`:
        captured DecodeGraphs, replayed for pure decode steps (cuda_graphs.py)."""
        self.tp = tp
        self.graphs = graphs
        self.model = model
        self.kv_cache = kv_cache
        self.device = torch.device(device)
        self.block_size = kv_cache.spec.block_size

    def prepare(self, chunks: list[ScheduledChunk], block_tables: list[list[int]]) -> StepInputs:
        """chunks (decodes first) and each chunk's block table (covering its end) -> StepInputs."""
        bs = self.block_size
        num_decode = 0
        while num_decode < len(chunks) and chunks[num_decode].num_tokens == 1:
            num_decode += 1
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        media_index: list[int] = []
        media_rows: list[torch.Tensor] = []
        logits_indices: list[int] = []
        for chunk, table in zip(chunks, block_tables, strict=True):
            offset = len(token_ids)
            token_ids += chunk.seq.token_ids(chunk.start, chunk.end)
            span = range(chunk.start, chunk.end)
            positions += span
            slots += [table[p // bs] * bs + p % bs for p in span]
            rel, rows = chunk.seq.media_rows(chunk.start, chunk.end)
            if rows is not None:
                media_index += [offset + r for r in rel]
                media_rows.append(rows)
            if chunk.samples:
                logits_indices.append(len(token_ids) - 1)
        decode, prefill = chunks[:num_decode], chunks[num_decode:]
        cu = [0]
        for c in prefill:
            cu.append(cu[-1] + c.num_tokens)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            num_decode_tokens=num_decode,
            decode_seq_lens=_int32([c.end for c in decode]),
            decode_block_tables=_block_tables(block_tables[:num_decode]),
            decode_max_seq_len=max((c.end for c in decode), default=0),
            prefill_cu_seqlens=_int32(cu),
            prefill_seq_lens=_int32([c.end for c in prefill]),
            prefill_block_tables=_block_tables(block_tables[num_decode:]),
        )
        return StepInputs(
            token_ids=torch.tensor(token_ids, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            media_index=torch.tensor(media_index, dtype=torch.int64),
            media_rows=torch.cat(media_rows) if media_rows else None,
            logits_indices=torch.tensor(logits_indices, dtype=torch.int64),
            meta=meta,
        )

    def execute(self, inputs: StepInputs) -> torch.Tensor:
        """Run the model; fp32 logits [len(logits_indices), vocab]."""
        if self.tp is not None:
            self.tp.send_step(inputs)
        if self.graphs is not None and self.graphs.can_run(inputs):
            return self.graphs.run(inputs)
        dev = self.device

        def to_dev(t: torch.Tensor) -> torch.Tensor:
            return t.to(dev, non_blocking=True)

        meta = inputs.meta
        meta = AttentionMetadata(
            slot_mapping=to_dev(meta.slot_mapping),
            num_decode_tokens=meta.num_decode_tokens,
            decode_seq_lens=to_dev(meta.decode_seq_lens),
            decode_block_tables=to_dev(meta.decode_block_tables),
            decode_max_seq_len=meta.decode_max_seq_len,
            prefill_cu_seqlens=to_dev(meta.prefill_cu_seqlens),
            prefill_seq_lens=to_dev(meta.prefill_seq_lens),
            prefill_block_tables=to_dev(meta.prefill_block_tables),
        )
        with torch.inference_mode():
            embeds = self.model.embed(to_dev(inputs.token_ids))
            if inputs.media_rows is not None:
                # to the model's device too: a tensor-parallel worker gets the rows over a pipe, on the CPU
                embeds[to_dev(inputs.media_index)] = inputs.media_rows.to(embeds.device, embeds.dtype)
            return self.model(
                embeds, to_dev(inputs.positions), self.kv_cache.layers, meta, to_dev(inputs.logits_indices)
            )
