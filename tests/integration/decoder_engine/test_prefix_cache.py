"""Automatic prefix caching keeps every answer token-exact while reusing KV blocks (DESIGN.md section 9).

Every test ends with the block pool back to full (conftest's run_engine): cached but unreferenced blocks
count as free.
"""

from __future__ import annotations

import asyncio

import pytest

from internvl_serve.oracle.embeddings import media_embeddings
from internvl_testing.engine_testing import MAX_NEW, text, user
from internvl_testing.media import noise_image

NAMES = ["text only", "one image", "several images", "video"]


def _twice(request_for, names):
    async def test(engine):
        first = [await engine.generate_full(request_for(n)) for n in names]
        second = [await engine.generate_full(request_for(n)) for n in names]
        return first, second, engine.stats()

    return test


def test_model_card_chats_twice_in_a_row_reuse_their_prompts(run_engine, request_for, expected, runtime):
    first, second, stats = run_engine(_twice(request_for, NAMES))
    block = runtime.config.block_size
    for name, a, b in zip(NAMES, first, second, strict=True):
        assert a.token_ids == b.token_ids == expected[name], name
        assert a.usage.cached_tokens == 0, name
        prompt = b.usage.input_tokens
        # Every full block but the one holding the last prompt token is served from the cache.
        assert b.usage.cached_tokens == (prompt - 1) // block * block, name
    assert stats.num_cached_prompt_tokens == sum(b.usage.cached_tokens for b in second)
    assert stats.num_cached_blocks > 0


def test_mixed_batch_concurrently_over_cached_prefixes(run_engine, request_for, oracle, chats):
    order = ["several images", "video", "one image", "text only"]
    reference = oracle.generate([chats[n] for n in order], max_new_tokens=MAX_NEW)

    async def test(engine):
        await asyncio.gather(*(engine.generate_full(request_for(n)) for n in order))  # warm the cache
        return await asyncio.gather(*(engine.generate_full(request_for(n)) for n in order))

    results = run_engine(test)
    assert [r.token_ids for r in results] == reference
    # The text chat (15 tokens) fills no block; every other reuses all its full blocks.
    assert [r.usage.cached_tokens for r in results] == [(r.usage.input_tokens - 1) // 16 * 16 for r in results]
    assert sum(r.usage.cached_tokens for r in results) > 0


def _warm_then_concurrent(request_for, warm_names=NAMES, names=NAMES):
    async def test(engine):
        for name in warm_names:  # one at a time: nothing competes for blocks while the cache fills
            await engine.generate_full(request_for(name))
        results = await asyncio.gather(*(engine.generate_full(request_for(n)) for n in names))
        return results, engine.stats()

    return test


def test_chunked_prefill_over_cached_prefixes(run_engine, request_for, expected):
    # 16 tokens a step: what is not cached is prefilled in chunks beside running decodes.
    results, stats = run_engine(_warm_then_concurrent(request_for), max_tokens_per_step=16, max_num_seqs=4)
    assert [r.token_ids for r in results] == [expected[n] for n in NAMES]
    assert sum(r.usage.cached_tokens for r in results) > 0


def test_preemption_over_cached_prefixes(run_engine, request_for, expected):
    # 10 blocks of 16: the image chat (133 prompt tokens) reuses its 8 cached blocks and takes a 9th, the
    # text chat's prompt 1; the text chat's 17th token needs one more: it is preempted mid-decode.
    names = ["one image", "text only"]
    test = _warm_then_concurrent(request_for, ["one image"], names)
    results, stats = run_engine(test, num_kv_blocks=10, max_tokens_per_step=32, max_num_seqs=4)
    assert stats.num_preemptions > 0
    assert [r.token_ids for r in results] == [expected[n] for n in names]
    assert results[0].usage.cached_tokens == 128


def test_prefix_caching_off_reuses_nothing(run_engine, request_for, expected):
    first, second, stats = run_engine(_twice(request_for, ["one image"]), enable_prefix_caching=False)
    assert first[0].token_ids == second[0].token_ids == expected["one image"]
    assert second[0].usage.cached_tokens == 0 and stats.num_cached_blocks == 0


@pytest.fixture(scope="module")
def twin_images(tmp_path_factory):
    """Two different images of the same size: the same placeholder tokens, different content."""
    root = tmp_path_factory.mktemp("twins")
    paths = []
    for seed in (11, 12):
        path = root / f"twin{seed}.jpg"
        noise_image(96, 96, seed).save(path, quality=92)
        paths.append(str(path))
    return paths


def test_two_images_with_the_same_placeholders_never_share_kv(run_engine, oracle, twin_images, runtime):
    from internvl_serve.decoder.engine import GenerationRequest, SamplingParams

    chats = [user({"type": "image", "image": p}, text("Describe this image in detail.")) for p in twin_images]
    requests = [
        GenerationRequest(chat, media_embeddings(oracle, chat), SamplingParams(max_new_tokens=MAX_NEW))
        for chat in chats
    ]
    first_ids = runtime.prompt_builder.build(requests[0].messages, requests[0].media)
    second_ids = runtime.prompt_builder.build(requests[1].messages, requests[1].media)
    assert first_ids.token_ids == second_ids.token_ids  # the prompts differ only in the media rows
    expected = [oracle.generate(chat, max_new_tokens=MAX_NEW)[0] for chat in chats]
    assert expected[0] != expected[1]

    async def test(engine):
        return [await engine.generate_full(r) for r in requests]

    results = run_engine(test)
    assert [r.token_ids for r in results] == expected
    block = runtime.config.block_size
    before_image = first_ids.media_positions[0] // block * block  # full blocks of text before the image
    assert results[1].usage.cached_tokens == before_image


def test_a_second_turn_about_an_image_reuses_the_first_turns_kv(run_engine, request_for, oracle, chats, media):
    from internvl_serve.decoder.engine import GenerationRequest, SamplingParams

    first_turn = chats["one image"]

    async def test(engine):
        first = await engine.generate_full(request_for("one image"))
        second_chat = [
            *first_turn,
            {"role": "assistant", "content": [text(first.text)]},
            *user(text("Now say it in one line.")),
        ]
        second = await engine.generate_full(
            GenerationRequest(second_chat, media["one image"], SamplingParams(max_new_tokens=MAX_NEW))
        )
        return first, second, second_chat

    first, second, second_chat = run_engine(test)
    assert second.token_ids == oracle.generate(second_chat, max_new_tokens=MAX_NEW)[0]
    # The whole first prompt (image included) but its last partial block is reused.
    assert second.usage.cached_tokens >= (first.usage.input_tokens - 1) // 16 * 16
