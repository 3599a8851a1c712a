"""Constrained decoding (json_schema, regex) on the random-weight checkpoint: the reply always parses and
validates, alone, sampled, batched with unconstrained requests, streamed and served from the prefix cache."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import jsonschema
import pytest

from internvl_serve.common.errors import InvalidArgument
from internvl_serve.decoder.engine import FinishReason, SamplingParams

# Every value is bounded, so even random weights finish the document well inside max_new_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "animal": {"enum": ["cat", "dog", "panda"]},
        "name": {"type": "string", "maxLength": 20},  # bounded strings: where xgrammar 0.2.9 let control chars in
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "cute": {"type": "boolean"},
    },
    "required": ["animal", "name", "count", "tags", "cute"],
    "additionalProperties": False,
}
MAX_NEW = 120


def constrained(request_for, name, **sampling):
    sampling.setdefault("json_schema", json.dumps(SCHEMA))
    return request_for(name, max_new_tokens=MAX_NEW, **sampling)


def assert_valid(result):
    assert result.finish_reason is FinishReason.STOP, result.text
    jsonschema.validate(json.loads(result.text), SCHEMA)


@pytest.mark.parametrize("name", ["text only", "one image"])
def test_greedy_reply_validates_against_the_schema(name, run_engine, request_for):
    assert_valid(run_engine(lambda engine: engine.generate_full(constrained(request_for, name))))


def test_sampled_replies_validate(run_engine, request_for):
    async def test(engine):
        return await asyncio.gather(
            *(
                engine.generate_full(constrained(request_for, "text only", temperature=1.5, seed=seed))
                for seed in range(12)
            )
        )

    results = run_engine(test)
    for result in results:
        assert_valid(result)
    assert len({r.text for r in results}) > 1  # the mask constrains the draw; it does not fix it


def test_regex_reply_matches_as_a_whole(run_engine, request_for):
    pattern = r"[a-z]{3}-\d{2}"
    result = run_engine(lambda engine: engine.generate_full(request_for("video", max_new_tokens=40, regex=pattern)))
    assert result.finish_reason is FinishReason.STOP
    assert re.fullmatch(pattern, result.text), result.text


def test_constraints_do_not_leak_into_other_rows_of_the_batch(run_engine, request_for, expected):
    async def test(engine):
        return await asyncio.gather(
            engine.generate_full(constrained(request_for, "several images")),
            engine.generate_full(request_for("one image")),
            engine.generate_full(constrained(request_for, "text only", temperature=1.0, seed=3)),
        )

    first, plain, third = run_engine(test)
    assert plain.token_ids == expected["one image"]
    assert_valid(first)
    assert_valid(third)


def test_stream_concatenates_to_the_unary_reply_and_prefix_cache_still_hits(run_engine, request_for):
    async def test(engine):
        full = await engine.generate_full(constrained(request_for, "one image"))
        text = []
        async with contextlib.aclosing(engine.generate(constrained(request_for, "one image"))) as deltas:
            async for delta in deltas:
                text.append(delta.text)
                last = delta
        return full, "".join(text), last

    full, streamed, last = run_engine(test)
    assert_valid(full)
    assert streamed == full.text
    assert last.usage.cached_tokens > 0


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ({"json_schema": '{"type": "objec"}'}, "json_schema cannot be used"),
        ({"json_schema": "{not json"}, "not valid JSON"),
        ({"json_schema": "[1, 2]"}, "must be a JSON object"),
        ({"regex": "[a-"}, "regex cannot be used"),
        ({"regex": "a", "json_schema": "{}"}, "cannot both be set"),
        ({"regex": "a", "ignore_eos": True}, "ignore_eos cannot be combined"),
        ({"top_logprobs": 3}, "needs sampling.logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs must lie in [0, 20]"),
    ],
)
def test_bad_constraints_are_refused_before_any_work(sampling, message, run_engine, chats):
    async def test(engine):
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            await engine.validate(chats["text only"], SamplingParams(**sampling))
        assert engine.stats().num_steps == 0

    run_engine(test)
