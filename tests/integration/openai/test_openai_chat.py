"""The official openai client against the running decoder: the same greedy chat gives the same text over HTTP
and gRPC (and transformers' tokens), streams concatenate to the unary reply, logprobs and structured output
come through, /v1/models and /health answer."""

from __future__ import annotations

import json
import urllib.request

import jsonschema
import pytest

from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_testing.generate_requests import generate_request
from internvl_testing.openai_http import openai_messages

MAX_NEW = 12
SCHEMA = {
    "type": "object",
    "properties": {"landmark": {"enum": ["liberty", "bridge"]}, "year": {"type": "integer", "minimum": 1800}},
    "required": ["landmark", "year"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def expected(oracle, model_card_chats):
    return {n: oracle.generate(c, max_new_tokens=MAX_NEW)[0] for n, c in model_card_chats.items()}


def greedy(client, model, chat, **extra):
    return client.chat.completions.create(
        model=model, messages=openai_messages(chat), temperature=0, max_tokens=MAX_NEW, **extra
    )


@pytest.mark.parametrize("name", ["text only", "one image", "several images", "video"])
def test_greedy_text_equals_grpc_and_transformers(
    name, client, model_name, gen_stub, engine, model_card_chats, oracle, expected
):
    chat = model_card_chats[name]
    reply = greedy(client, model_name, chat)
    grpc_reply = gen_stub.Generate(generate_request(chat, max_new_tokens=MAX_NEW))
    choice = reply.choices[0]
    assert choice.message.content == grpc_reply.text == oracle.decode(expected[name])
    assert choice.message.role == "assistant"
    assert (
        choice.finish_reason
        == {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}[grpc_reply.finish_reason]
    )
    assert reply.usage.prompt_tokens == grpc_reply.usage.input_tokens
    assert reply.usage.completion_tokens == len(expected[name])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.model == model_name
    assert reply.id.startswith("chatcmpl-")
    assert choice.logprobs is None


def test_stream_concatenates_to_the_unary_reply_and_ends_with_usage(client, model_name, engine, model_card_chats):
    chat = model_card_chats["one image"]
    unary = greedy(client, model_name, chat)
    chunks = list(greedy(client, model_name, chat, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.choices[0].message.content
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == [unary.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == unary.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1
    plain = list(greedy(client, model_name, chat, stream=True))
    assert all(c.usage is None for c in plain)


def test_logprobs_equal_grpc_logprobs(client, model_name, gen_stub, engine, model_card_chats):
    chat = model_card_chats["text only"]
    reply = greedy(client, model_name, chat, logprobs=True, top_logprobs=3)
    grpc_reply = gen_stub.Generate(generate_request(chat, max_new_tokens=MAX_NEW, logprobs=True, top_logprobs=3))
    content = reply.choices[0].logprobs.content
    assert len(content) == len(grpc_reply.logprobs) == len(grpc_reply.token_ids)
    for entry, ref in zip(content, grpc_reply.logprobs):
        assert entry.token == ref.token
        assert entry.logprob == pytest.approx(ref.logprob, abs=1e-6)
        assert entry.bytes == list(ref.token_bytes)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx([t.logprob for t in ref.top_logprobs])
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6
    streamed = list(greedy(client, model_name, chat, stream=True, logprobs=True))
    tokens = [e.token for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert tokens == [e.token for e in content]


def test_json_schema_response_format_validates(client, model_name, engine, model_card_chats):
    fmt = {"type": "json_schema", "json_schema": {"name": "landmark", "schema": SCHEMA, "strict": True}}
    for temperature in (0, 1.2):
        reply = client.chat.completions.create(
            model=model_name,
            messages=openai_messages(model_card_chats["several images"]),
            response_format=fmt,
            temperature=temperature,
            seed=5,
            max_tokens=80,
        )
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)


def test_json_object_response_format_parses_and_streams(client, model_name, engine):
    """Any JSON object is unbounded, so random weights often run out of tokens; every one that ends parses."""
    messages = [{"role": "user", "content": "Reply in JSON."}]
    finished = []
    for seed in range(6):
        chunks = client.chat.completions.create(
            model=model_name,
            messages=messages,
            response_format={"type": "json_object"},
            stream=True,
            max_tokens=60,
            temperature=1.0,
            seed=seed,
        )
        chunks = [c for c in chunks if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text.startswith("{")
        if chunks[-1].choices[0].finish_reason == "stop":
            finished.append(json.loads(text))
    assert finished and all(isinstance(obj, dict) for obj in finished)


def test_models_and_health(client, model_name, base_url):
    assert [m.id for m in client.models.list().data] == [model_name]
    with urllib.request.urlopen(f"{base_url}/health", timeout=10) as response:
        assert response.status == 200
        assert json.load(response) == {"status": "serving"}
