"""Requests that end early free their blocks at once; overload and bad input fail with the right error."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
import torch

from internvl_serve.common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from internvl_serve.decoder.engine import GenerationRequest, MediaEmbedding, SamplingParams

LONG = {"max_new_tokens": 1000, "ignore_eos": True}  # would run for seconds: only an early end stops it


def pool_is_full(engine) -> bool:
    return engine.num_free_blocks == engine.num_total_blocks and engine.block_manager.num_sequences == 0


def test_closing_the_stream_frees_blocks_at_once(run_engine, request_for):
    async def test(engine):
        stream = engine.generate(request_for("video", **LONG))
        await stream.__anext__()
        await stream.__anext__()
        assert engine.num_free_blocks < engine.num_total_blocks
        await stream.aclose()  # what a client disconnect does to the servicer's iteration
        assert pool_is_full(engine) and engine.stats().num_running == 0

    run_engine(test)


def test_cancelling_the_consumer_task_frees_blocks_at_once(run_engine, request_for):
    async def test(engine):
        got_one = asyncio.Event()

        async def consume():
            async for _ in engine.generate(request_for("several images", **LONG)):
                got_one.set()

        task = asyncio.create_task(consume())
        await got_one.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool_is_full(engine)

    run_engine(test)


def test_deadline_ends_the_request_and_frees_blocks(run_engine, request_for):
    async def test(engine):
        request = request_for("one image", **LONG)
        request.deadline = time.monotonic() + 0.3
        tokens = []
        with pytest.raises(DeadlineExceeded, match="deadline passed after"):
            async for delta in engine.generate(request):
                tokens += delta.token_ids
        assert 0 < len(tokens) < 1000
        assert pool_is_full(engine)

    run_engine(test)


def test_cancelled_request_does_not_disturb_its_neighbours(run_engine, request_for, expected):
    async def test(engine):
        victim = engine.generate(request_for("video", **LONG))
        await victim.__anext__()
        survivor = asyncio.create_task(engine.generate_full(request_for("one image")))
        await asyncio.sleep(0.05)
        await victim.aclose()
        return await survivor

    assert run_engine(test).token_ids == expected["one image"]


def test_full_queue_answers_resource_exhausted(run_engine, request_for):
    async def test(engine):
        running = engine.generate(request_for("text only", **LONG))
        await running.__anext__()  # holds the only running slot
        waiting = engine.generate(request_for("text only"))
        waiting_task = asyncio.create_task(waiting.__anext__())
        while engine.stats().num_waiting < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(ResourceExhausted, match=r"overloaded \(1 requests waiting, limit 1\)"):
            await engine.generate_full(request_for("text only"))
        await running.aclose()
        await waiting_task  # admitted once the slot frees
        await waiting.aclose()

    run_engine(test, max_num_seqs=1, max_tokens_per_step=64, max_queue=1)


def test_bad_requests_are_refused_before_any_work(run_engine, request_for):
    async def test(engine):
        with pytest.raises(InvalidArgument, match="messages is empty"):
            await engine.generate_full(GenerationRequest([]))
        with pytest.raises(InvalidArgument, match="role is 'robot'"):
            await engine.generate_full(GenerationRequest([{"role": "robot", "content": "hi"}]))
        with pytest.raises(InvalidArgument, match="temperature"):
            await engine.generate_full(request_for("text only", temperature=-1.0))
        with pytest.raises(
            InvalidArgument, match=r"max_new_tokens 5000 plus the prompt's \d+ tokens exceeds the context length 4096"
        ):
            await engine.generate_full(request_for("text only", max_new_tokens=5000))
        wrong = MediaEmbedding.image(torch.zeros(7 * 16, 32), 7)  # encoded for a model with hidden 32
        request = request_for("one image")
        with pytest.raises(InvalidArgument, match="hidden size is 64"):
            await engine.generate_full(dataclasses.replace(request, media=[wrong]))
        assert engine.stats().num_steps == 0

    run_engine(test)


def test_prompt_longer_than_the_context(run_engine, request_for, runtime):
    async def test(engine):
        with pytest.raises(InvalidArgument, match=r"the prompt is 1\d\d tokens .* the context holds 100 tokens"):
            await engine.generate_full(request_for("one image"))

    run_engine(test, runtime_=dataclasses.replace(runtime, context_len=100))


def test_too_many_media_items(run_engine, request_for, runtime):
    from internvl_serve.decoder.engine.prompt import PromptBuilder

    rt = dataclasses.replace(runtime, prompt_builder=PromptBuilder(runtime.tokenizer, max_media=1))

    async def test(engine):
        with pytest.raises(InvalidArgument, match="2 media items; at most 1"):
            await engine.generate_full(request_for("several images"))

    run_engine(test, runtime_=rt)


def test_close_fails_unfinished_requests_with_unavailable(runtime, request_for):
    from internvl_serve.decoder.engine import Engine

    async def main():
        engine = Engine(runtime)
        stream = engine.generate(request_for("text only", **LONG))
        await stream.__anext__()
        await engine.close()
        assert pool_is_full(engine)
        with pytest.raises(Unavailable, match="shut down"):
            async for _ in stream:
                pass
        with pytest.raises(Unavailable, match="shutting down"):
            await engine.generate_full(request_for("text only"))

    asyncio.run(main())


def test_warmup_leaves_the_pool_full(run_engine):
    async def test(engine):
        await engine.warmup()
        return engine.stats().num_steps

    assert run_engine(test) >= 1


def test_sampling_params_default_to_greedy(run_engine, chats, media, expected):
    async def test(engine):
        return await engine.generate_full(
            GenerationRequest(chats["video"], media["video"], SamplingParams(max_new_tokens=12))
        )

    assert run_engine(test).token_ids == expected["video"]
