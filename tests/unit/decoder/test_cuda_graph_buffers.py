"""What CUDA-graph decode needs besides capture and replay, on the CPU: the buckets, which steps a graph may
run, and padded static buffers whose forward gives the eager step's logits for the real rows. Also the
profile-run inputs and budget arithmetic of KV-cache sizing on CUDA."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from internvl_serve.decoder.engine.attention import AttentionMetadata
from internvl_serve.decoder.engine.cuda_graphs import DecodeGraphs, bucket_for, graph_buckets, graphable
from internvl_serve.decoder.engine.kv_cache import kv_budget_bytes
from internvl_serve.decoder.engine.memory_profile import prefill_step_inputs
from internvl_serve.decoder.engine.model_runner import ModelRunner, StepInputs

BLOCK = 16


def test_buckets_are_powers_of_two_then_the_maximum():
    assert graph_buckets(1) == [1]
    assert graph_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert graph_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert [bucket_for(n, graph_buckets(48)) for n in (1, 3, 8, 9, 33, 48, 49)] == [1, 4, 8, 16, 48, 48, None]
    with pytest.raises(ValueError):
        graph_buckets(0)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from internvl_serve.decoder.config import DecoderConfig
    from internvl_serve.decoder.engine import load_model

    return load_model(DecoderConfig(model=str(tiny_model_dir), num_kv_blocks=64)).model


def kv_cache(model, num_blocks=64):
    from internvl_serve.decoder.engine.kv_cache import KVCache, KVCacheSpec

    return KVCache(KVCacheSpec.for_model(model.config, BLOCK, torch.float32), num_blocks, "cpu")


def decode_inputs(lengths: list[int], blocks_per_seq: int) -> StepInputs:
    """Sequence i owns blocks [i*blocks_per_seq, (i+1)*blocks_per_seq) and decodes its token lengths[i]-1."""
    tables = torch.tensor([[i * blocks_per_seq + b for b in range(blocks_per_seq)] for i in range(len(lengths))])
    pos = torch.tensor([n - 1 for n in lengths])
    slots = tables[torch.arange(len(lengths)), pos // BLOCK] * BLOCK + pos % BLOCK
    meta = AttentionMetadata(
        slot_mapping=slots.long(),
        num_decode_tokens=len(lengths),
        decode_seq_lens=torch.tensor(lengths, dtype=torch.int32),
        decode_block_tables=tables.int(),
        decode_max_seq_len=max(lengths),
        prefill_cu_seqlens=torch.zeros(1, dtype=torch.int32),
        prefill_seq_lens=torch.zeros(0, dtype=torch.int32),
        prefill_block_tables=torch.zeros((0, 1), dtype=torch.int32),
    )
    return StepInputs(
        token_ids=torch.tensor([7, 11, 13][: len(lengths)]),
        positions=pos.long(),
        media_index=torch.zeros(0, dtype=torch.int64),
        media_rows=None,
        logits_indices=torch.arange(len(lengths)),
        meta=meta,
    )


def test_padded_buffers_give_the_eager_logits_for_the_real_rows(model):
    cache = kv_cache(model)
    for layer in cache.layers:  # some context to attend to
        for t in layer:
            t.normal_()
    inputs = decode_inputs([20, 5, 33], blocks_per_seq=4)
    eager = ModelRunner(model, cache, "cpu").execute(inputs).clone()
    graphs = DecodeGraphs(model, cache, "cpu", max_num_seqs=8, max_seq_len=8 * BLOCK)
    graphs.buffers.fill(inputs, bucket_for(3, graphs.buckets))
    assert graphs.buffers.slot_mapping[3:4].tolist() == [-1] and graphs.buffers.seq_lens[3:4].tolist() == [0]
    padded = graphs._forward(4)  # what a replay computes, without the graph
    assert padded.shape[0] == 4
    assert torch.allclose(padded[:3], eager, atol=1e-5)
    # a second, smaller step reuses the buffers: stale rows are padding again
    small = decode_inputs([9], blocks_per_seq=2)
    graphs.buffers.fill(small, 1)
    assert torch.allclose(graphs._forward(1), ModelRunner(model, cache, "cpu").execute(small), atol=1e-5)


def test_only_pure_decode_steps_within_the_buckets_are_graphable():
    inputs = decode_inputs([20, 5, 33], blocks_per_seq=4)
    assert graphable(inputs, max_bs=4, max_blocks=8)
    assert not graphable(inputs, max_bs=2, max_blocks=8)  # more rows than the largest bucket
    assert not graphable(inputs, max_bs=4, max_blocks=2)  # longer than the captured context
    with_media = dataclasses.replace(inputs, media_rows=torch.zeros(1, 64))
    assert not graphable(with_media, max_bs=4, max_blocks=8)
    mixed = dataclasses.replace(inputs, token_ids=torch.zeros(10, dtype=torch.int64))  # decodes + a prefill chunk
    assert not graphable(mixed, max_bs=4, max_blocks=8)


def test_capture_needs_cuda(model):
    graphs = DecodeGraphs(model, kv_cache(model), "cpu", max_num_seqs=2, max_seq_len=64)
    with pytest.raises(RuntimeError, match="CUDA"):
        graphs.capture()
    assert not graphs.can_run(decode_inputs([5], blocks_per_seq=1))


def test_profile_step_is_the_largest_prefill_and_runs(model):
    inputs = prefill_step_inputs(num_tokens=100, num_logits=8, block_size=BLOCK)
    logits = ModelRunner(model, kv_cache(model, num_blocks=7), "cpu").execute(inputs)
    assert logits.shape == (8, model.config.vocab_size)
    assert inputs.meta.prefill_block_tables.shape == (1, 7)


def test_kv_budget_takes_the_measured_peak_out_of_the_fraction():
    gib = 1 << 30
    assert kv_budget_bytes(80 * gib, 0.9, used=30 * gib, activation_peak=3 * gib, margin=gib // 4) == int(
        72 * gib - 30 * gib - 3 * gib - gib // 4
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cuda_graphs": "yes"}, "--cuda-graphs must be on or off"),
        ({"cuda_graphs": "on", "tensor_parallel_size": 2}, "not supported with --tensor-parallel-size > 1"),
        ({"tensor_parallel_size": 0}, "--tensor-parallel-size must be >= 1"),
    ],
)
def test_bad_graph_and_parallel_settings_are_refused(overrides, message):
    from internvl_serve.decoder.config import DecoderConfig

    with pytest.raises(ValueError, match=message):
        DecoderConfig(model="m", **overrides)
