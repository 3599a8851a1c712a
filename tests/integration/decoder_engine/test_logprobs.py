"""Logprobs are the log-softmax of the raw logits, equal to transformers' within 1e-3, whatever the sampling
settings; the top alternatives are the most likely tokens, in order."""

from __future__ import annotations

import contextlib

import pytest

from internvl_testing.engine_testing import MAX_NEW

TOL = 1e-3
TOP = 5


@pytest.mark.parametrize("name", ["text only", "one image", "video"])
def test_greedy_logprobs_equal_transformers(name, run_engine, request_for, oracle, chats, runtime):
    tokens, reference = oracle.greedy_logprobs(chats[name], MAX_NEW)
    result = run_engine(lambda engine: engine.generate_full(request_for(name, logprobs=True, top_logprobs=TOP)))
    assert result.token_ids == tokens
    assert [e.token_id for e in result.logprobs] == tokens
    for step, entry in enumerate(result.logprobs):
        assert abs(entry.logprob - float(reference[step, entry.token_id])) < TOL
        assert entry.token == runtime.tokenizer.decode([entry.token_id], skip_special_tokens=False)
        assert entry.token_bytes.decode("utf-8", "replace") == entry.token or "\ufffd" in entry.token
        assert len(entry.top) == TOP
        values, _ = reference[step].topk(TOP)
        for alt, value in zip(entry.top, values.tolist()):
            assert abs(alt.logprob - value) < TOL
            assert abs(alt.logprob - float(reference[step, alt.token_id])) < TOL
        assert entry.top[0].token_id == entry.token_id  # greedy picks the most likely token


def test_logprobs_ignore_temperature_and_penalty(run_engine, request_for, oracle, chats):
    reference = oracle.logits(chats["one image"])[0, -1].float().log_softmax(-1)
    sampling = {"temperature": 3.0, "top_k": 4, "repetition_penalty": 1.7, "seed": 11, "logprobs": True}
    result = run_engine(lambda engine: engine.generate_full(request_for("one image", **sampling)))
    first = result.logprobs[0]
    assert first.token_id == result.token_ids[0]
    assert abs(first.logprob - float(reference[first.token_id])) < TOL
    assert first.top == ()


def test_stream_deltas_carry_one_entry_per_token_and_none_when_not_asked(run_engine, request_for):
    async def test(engine):
        pairs = []
        async with contextlib.aclosing(engine.generate(request_for("text only", logprobs=True))) as deltas:
            async for delta in deltas:
                pairs.append((delta.token_ids, [e.token_id for e in delta.logprobs]))
        plain = await engine.generate_full(request_for("text only"))
        return pairs, plain

    pairs, plain = run_engine(test)
    assert all(ids == entries for ids, entries in pairs)
    assert plain.logprobs is None


def test_token_bytes_are_exact_even_inside_a_character(runtime):
    """A byte-level token that ends inside a multi-byte character: the text shows U+FFFD, the bytes are the
    real ones, and the bytes of consecutive tokens join into the characters."""
    from internvl_serve.decoder.engine.logprobs import TokenTexts

    texts = TokenTexts(runtime.tokenizer)
    ids = runtime.tokenizer.encode("猫がピンク", add_special_tokens=False)
    pieces = [texts(i) for i in ids]
    assert b"".join(b for _, b in pieces).decode("utf-8") == "猫がピンク"
    im_end = runtime.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert texts(im_end) == ("<|im_end|>", b"<|im_end|>")
