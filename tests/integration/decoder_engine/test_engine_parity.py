"""Greedy tokens of the engine are transformers' generate tokens, alone and in a batch (DESIGN.md 4)."""

from __future__ import annotations

import asyncio

import pytest

from internvl_serve.decoder.engine import FinishReason
from internvl_testing.engine_testing import MAX_NEW

NAMES = ["text only", "one image", "several images", "video"]


@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_equal_transformers(name, run_engine, request_for, expected, runtime):
    result = run_engine(lambda engine: engine.generate_full(request_for(name)))
    assert result.token_ids == expected[name]
    assert result.text == runtime.tokenizer.decode(expected[name], skip_special_tokens=True)
    assert result.finish_reason is (FinishReason.STOP if len(expected[name]) < MAX_NEW else FinishReason.LENGTH)


def test_answers_depend_on_the_media(expected):
    assert len({tuple(t) for t in expected.values()}) == len(expected)  # a parity test that can fail


def test_model_card_mixed_batch_sent_concurrently(run_engine, request_for, oracle, chats):
    order = ["several images", "video", "one image", "text only"]
    reference = oracle.generate([chats[n] for n in order], max_new_tokens=MAX_NEW)

    async def test(engine):
        return await asyncio.gather(*(engine.generate_full(request_for(n)) for n in order))

    results = run_engine(test)
    assert [r.token_ids for r in results] == reference


def test_tokens_are_the_same_when_joining_a_running_batch(run_engine, request_for, expected):
    async def test(engine):
        others = [engine.generate(request_for(n, max_new_tokens=30, ignore_eos=True)) for n in ("video", "text only")]
        for stream in others:  # both are decoding before the new request arrives
            await stream.__anext__()
            await stream.__anext__()
        assert engine.stats().num_running == 2
        joined = await engine.generate_full(request_for("one image"))
        for stream in others:
            async for _ in stream:
                pass
        return joined

    assert run_engine(test).token_ids == expected["one image"]


@pytest.mark.parametrize("name", ["text only", "several images"])
def test_first_step_logits_match_transformers(name, run_engine, request_for, oracle, chats):
    from internvl_serve.decoder.engine.sequence_factory import new_sequence

    reference = oracle.logits(chats[name])[0, -1]

    async def test(engine):
        request = request_for(name)
        prompt = engine._build_prompt(request)
        seq = new_sequence(0, request, prompt, engine.runtime, engine.config)
        engine.scheduler.add(seq)
        out = engine.scheduler.schedule()
        tables = [engine.block_manager.block_table(c.seq.seq_id) for c in out.chunks]
        logits = engine.runner.execute(engine.runner.prepare(out.chunks, tables))
        engine.scheduler.finish(seq)
        return logits[0]

    logits = run_engine(test)
    assert (logits - reference).abs().max().item() < 1e-4
