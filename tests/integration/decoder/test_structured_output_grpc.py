"""Structured output and logprobs over gRPC: SamplingParams.json_schema / regex constrain Generate and
GenerateStream; bad constraints are INVALID_ARGUMENT before any work; logprobs come one per token."""

from __future__ import annotations

import json
import re

import grpc
import jsonschema
import pytest

from internvl_testing.generate_requests import generate_request, stream_request

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "confidence": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}


def test_json_schema_over_unary_and_stream(gen_stub, engine, model_card_chats):
    chat = model_card_chats["one image"]
    sampling = {"max_new_tokens": 60, "json_schema": json.dumps(SCHEMA), "logprobs": True}
    reply = gen_stub.Generate(generate_request(chat, **sampling))
    jsonschema.validate(json.loads(reply.text), SCHEMA)
    assert [e.token_id for e in reply.logprobs] == list(reply.token_ids)
    deltas = list(gen_stub.GenerateStream(stream_request(chat, **sampling)))
    assert "".join(d.text for d in deltas) == reply.text
    assert [e.token_id for d in deltas for e in d.logprobs] == list(reply.token_ids)


def test_regex_over_unary(gen_stub, engine, model_card_chats):
    reply = gen_stub.Generate(
        generate_request(model_card_chats["text only"], max_new_tokens=30, regex=r"(red|blue)-\d")
    )
    assert re.fullmatch(r"(red|blue)-\d", reply.text), reply.text


@pytest.mark.parametrize(
    ("sampling", "fragment"),
    [({"json_schema": '{"type": 3}'}, "json_schema cannot be used"), ({"regex": "(unclosed"}, "regex cannot be used")],
)
def test_bad_constraints_are_invalid_argument(gen_stub, engine, model_card_chats, sampling, fragment):
    steps = engine.stats().num_steps
    with pytest.raises(grpc.RpcError) as info:
        gen_stub.Generate(generate_request(model_card_chats["one image"], **sampling))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.details()
    assert engine.stats().num_steps == steps  # refused before the image was encoded or anything ran
