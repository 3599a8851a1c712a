"""Seeded sampling, streaming, stop strings, eos ids and length limits through the engine."""

from __future__ import annotations

import asyncio
import dataclasses

from internvl_serve.decoder.engine import FinishReason

SAMPLED = {"temperature": 1.5, "top_p": 0.95, "top_k": 50}


def test_seeded_sampling_is_reproducible_alone_or_in_a_batch(run_engine, request_for):
    async def test(engine):
        alone = await engine.generate_full(request_for("one image", seed=5, **SAMPLED))
        again = await engine.generate_full(request_for("one image", seed=5, **SAMPLED))
        batch = await asyncio.gather(
            engine.generate_full(request_for("video", seed=1, **SAMPLED)),
            engine.generate_full(request_for("one image", seed=5, **SAMPLED)),
            engine.generate_full(request_for("text only")),
        )
        other_seed = await engine.generate_full(request_for("one image", seed=6, **SAMPLED))
        return alone, again, batch[1], other_seed

    alone, again, in_batch, other_seed = run_engine(test)
    assert alone.token_ids == again.token_ids == in_batch.token_ids
    assert other_seed.token_ids != alone.token_ids


def test_streaming_deltas_concatenate_to_the_unary_answer(run_engine, request_for):
    async def test(engine):
        unary = await engine.generate_full(request_for("several images", max_new_tokens=20, ignore_eos=True))
        deltas = [d async for d in engine.generate(request_for("several images", max_new_tokens=20, ignore_eos=True))]
        return unary, deltas

    unary, deltas = run_engine(test)
    assert "".join(d.text for d in deltas) == unary.text
    assert [t for d in deltas for t in d.token_ids] == unary.token_ids
    assert all(len(d.token_ids) == 1 for d in deltas)  # one token per step
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert all(d.usage is None for d in deltas[:-1])
    assert deltas[-1].finish_reason is FinishReason.LENGTH and deltas[-1].usage == unary.usage
    usage = unary.usage
    assert usage.output_tokens == 20 and usage.image_tokens == 14 * 16 and usage.input_tokens > usage.image_tokens


def test_stop_string_cuts_the_text_and_is_not_emitted(run_engine, request_for):
    async def test(engine):
        full = await engine.generate_full(request_for("text only", max_new_tokens=20, ignore_eos=True))
        windows = [full.text[i : i + 3] for i in range(len(full.text) // 2, len(full.text) - 3)]
        stop = next(w for w in windows if "\ufffd" not in w)  # a 3-character piece from the middle
        deltas = [
            d async for d in engine.generate(request_for("text only", max_new_tokens=20, ignore_eos=True, stop=(stop,)))
        ]
        return full, stop, deltas

    full, stop, deltas = run_engine(test)
    text = "".join(d.text for d in deltas)
    ids = [t for d in deltas for t in d.token_ids]
    assert text == full.text[: full.text.index(stop)]
    assert stop not in text and all(stop not in d.text for d in deltas)
    assert deltas[-1].finish_reason is FinishReason.STOP
    assert ids == full.token_ids[: len(ids)] and len(ids) < 20  # up to the token that completed the stop


def test_eos_ids_stop_generation_unless_ignored(run_engine, request_for, runtime, expected):
    # Pretend the greedy answer's third token is an eos id, as generation_config.json would list it.
    tokens = expected["one image"]
    rt = dataclasses.replace(runtime, eos_token_ids=frozenset({tokens[2], 10**6}))

    async def test(engine):
        stopped = await engine.generate_full(request_for("one image"))
        ignored = await engine.generate_full(request_for("one image", ignore_eos=True))
        return stopped, ignored

    stopped, ignored = run_engine(test, runtime_=rt)
    assert stopped.token_ids == tokens[:3] and stopped.finish_reason is FinishReason.STOP
    assert ignored.token_ids == tokens and ignored.finish_reason is FinishReason.LENGTH


def test_checkpoint_eos_ids_come_from_generation_config(runtime):
    assert runtime.eos_token_ids == frozenset({1026, 1024})  # the tiny checkpoint lists two


def test_default_max_new_tokens_and_the_context_end(run_engine, request_for, runtime):
    prompt_len = len(runtime.prompt_builder.build(request_for("text only").messages, []).token_ids)

    async def default_length(engine):
        return await engine.generate_full(request_for("text only", max_new_tokens=0, ignore_eos=True))

    result = run_engine(default_length, default_max_new_tokens=5)
    assert len(result.token_ids) == 5 and result.finish_reason is FinishReason.LENGTH

    rt = dataclasses.replace(runtime, context_len=prompt_len + 3)
    result = run_engine(default_length, runtime_=rt)  # the default is capped by the context
    assert len(result.token_ids) == 3 and result.finish_reason is FinishReason.LENGTH
