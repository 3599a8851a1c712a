"""Chunked prefill and preemption change when tokens are computed, never which tokens come out."""

from __future__ import annotations

import asyncio

NAMES = ["several images", "video", "one image", "text only"]


def _all_concurrently(request_for, names=NAMES):
    async def test(engine):
        results = await asyncio.gather(*(engine.generate_full(request_for(n)) for n in names))
        return [r.token_ids for r in results], engine.stats()

    return test


def test_chunked_prefill_keeps_tokens(run_engine, request_for, expected, runtime):
    # 16 tokens per step: every prompt (15 to 243 tokens) is prefilled in chunks beside running decodes.
    tokens, stats = run_engine(_all_concurrently(request_for), max_tokens_per_step=16, max_num_seqs=4)
    assert tokens == [expected[n] for n in NAMES]
    prompt_tokens = sum(
        len(runtime.prompt_builder.build(r.messages, r.media).token_ids) for r in (request_for(n) for n in NAMES)
    )
    assert stats.num_steps >= prompt_tokens // 16  # the prompts really were split


def test_preemption_keeps_tokens(run_engine, request_for, expected):
    # 24 blocks of 16 tokens: each request fits alone (the largest needs 16), all four together need 41.
    tokens, stats = run_engine(_all_concurrently(request_for), num_kv_blocks=24)
    assert stats.num_preemptions > 0
    assert tokens == [expected[n] for n in NAMES]


def test_preemption_and_chunked_prefill_together(run_engine, request_for, expected):
    # 10 blocks of 16: the image chat (133 prompt tokens) holds 9 throughout and the text chat's prompt 1;
    # the text chat's 17th token needs a second block: it is preempted mid-decode and recomputed later.
    names = ["one image", "text only"]
    tokens, stats = run_engine(
        _all_concurrently(request_for, names), num_kv_blocks=10, max_tokens_per_step=32, max_num_seqs=4
    )
    assert stats.num_preemptions > 0
    assert tokens == [expected[n] for n in names]
