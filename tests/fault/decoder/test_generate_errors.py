"""Bad input to Generate gets INVALID_ARGUMENT with an actionable message; a missing encoder gets
UNAVAILABLE; cancellation and deadlines free the KV blocks at once; the server keeps answering."""

from __future__ import annotations

import time

import grpc
import pytest

from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import media_pb2
from internvl_testing.decoder_server import decoder_config, generation_stub, start_decoder
from internvl_testing.encoder_server import encoder_config, start_encoder
from internvl_testing.generate_requests import generate_request, stream_request
from internvl_testing.media import image_bytes, noise_image
from internvl_testing.redis_server import free_port

PNG = image_bytes(noise_image(40, 40, 1), "PNG")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def servers(tiny_model_dir):
    encoder = start_encoder(encoder_config(tiny_model_dir, None))
    decoder = start_decoder(
        decoder_config(tiny_model_dir, [encoder.address], max_media_per_request=2, max_context_len=512)
    )
    channel, stub = generation_stub(decoder.address)
    yield decoder, stub
    channel.close()
    decoder.close()
    encoder.close()


def _img():
    return pb.Part(media=media_pb2.Media(image=media_pb2.Image(data=PNG)))


def _msg(role, *parts):
    return pb.Message(role=role, content=list(parts))


def _text(t):
    return pb.Part(text=t)


CASES = [
    ("no messages", pb.GenerateRequest(), INVALID, "messages"),
    ("unknown role", pb.GenerateRequest(messages=[_msg("robot", _text("hi"))]), INVALID, "role"),
    ("empty content", pb.GenerateRequest(messages=[_msg("user")]), INVALID, "content"),
    ("empty part", pb.GenerateRequest(messages=[_msg("user", pb.Part())]), INVALID, "content[0] is empty"),
    (
        "empty media",
        pb.GenerateRequest(messages=[_msg("user", pb.Part(media=media_pb2.Media()))]),
        INVALID,
        "none of image",
    ),
    (
        "too many media",
        pb.GenerateRequest(messages=[_msg("user", _img(), _img(), _img(), _text("x"))]),
        INVALID,
        "at most 2",
    ),
    (
        "media token in text",
        pb.GenerateRequest(messages=[_msg("user", _text("look <IMG_CONTEXT>"))]),
        INVALID,
        "<IMG_CONTEXT>",
    ),
    (
        "bad image bytes",
        pb.GenerateRequest(
            messages=[_msg("user", pb.Part(media=media_pb2.Media(image=media_pb2.Image(data=b"nope"))))]
        ),
        INVALID,
        "media[0]",
    ),
    (
        "bad second image beside a good one",
        pb.GenerateRequest(
            messages=[
                _msg("user", _img(), pb.Part(media=media_pb2.Media(image=media_pb2.Image(data=b"nope"))), _text("x"))
            ]
        ),
        INVALID,
        "media[1]",  # the items are encoded concurrently, one call each: the error still names its item
    ),
    (
        "prompt longer than the context",
        pb.GenerateRequest(messages=[_msg("user", _text("word " * 2000))]),
        INVALID,
        "context",
    ),
    (
        "max_new_tokens past the context",
        pb.GenerateRequest(messages=[_msg("user", _text("hi"))], sampling=pb.SamplingParams(max_new_tokens=100_000)),
        INVALID,
        "context",
    ),
    (
        "bad temperature",
        pb.GenerateRequest(messages=[_msg("user", _text("hi"))], sampling=pb.SamplingParams(temperature=-1)),
        INVALID,
        "temperature",
    ),
    (
        "bad request id",
        pb.GenerateRequest(messages=[_msg("user", _text("hi"))], request_id="has space"),
        INVALID,
        "request_id",
    ),
]


@pytest.mark.parametrize("name, request_, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(servers, name, request_, code, words):
    decoder, stub = servers
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request_)
    assert err.value.code() == code, err.value.details()
    assert words in err.value.details() and "Traceback" not in err.value.details()
    engine = decoder.server.engine
    assert engine.num_free_blocks == engine.num_total_blocks
    ok = stub.Generate(
        pb.GenerateRequest(messages=[_msg("user", _text("hi"))], sampling=pb.SamplingParams(max_new_tokens=2))
    )
    assert ok.usage.output_tokens >= 1, "server still up"


def _wait_pool_full(engine, timeout=5.0):
    deadline = time.monotonic() + timeout
    while engine.num_free_blocks != engine.num_total_blocks and time.monotonic() < deadline:
        time.sleep(0.01)
    return engine.num_free_blocks == engine.num_total_blocks


def test_cancelled_stream_frees_its_blocks(servers):
    decoder, stub = servers
    chat = [{"role": "user", "content": [{"type": "text", "text": "tell me a long story"}]}]
    call = stub.GenerateStream(stream_request(chat, max_new_tokens=400, ignore_eos=True))
    first = next(call)
    assert first.token_ids
    engine = decoder.server.engine
    assert engine.num_free_blocks < engine.num_total_blocks, "the request holds blocks while it runs"
    call.cancel()
    assert _wait_pool_full(engine)


def test_deadline_frees_blocks_and_says_so(servers):
    decoder, stub = servers
    chat = [{"role": "user", "content": [{"type": "text", "text": "tell me a long story"}]}]
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(generate_request(chat, max_new_tokens=400, ignore_eos=True), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _wait_pool_full(decoder.server.engine)


def test_unreachable_encoder_is_unavailable(tiny_model_dir):
    """No encoder up for the whole bound: UNAVAILABLE without a client deadline (after
    --encoder-timeout-s), DEADLINE_EXCEEDED when the client's deadline is the shorter."""
    config = decoder_config(tiny_model_dir, [f"127.0.0.1:{free_port()}"], encoder_timeout_s=1.0)
    decoder = start_decoder(config)
    channel, stub = generation_stub(decoder.address)
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(pb.GenerateRequest(messages=[_msg("user", _img(), _text("x"))]))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "--encoder-timeout-s" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(pb.GenerateRequest(messages=[_msg("user", _img(), _text("x"))]), timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        text_only = stub.Generate(
            pb.GenerateRequest(messages=[_msg("user", _text("hi"))], sampling=pb.SamplingParams(max_new_tokens=2))
        )
        assert text_only.usage.output_tokens >= 1, "text still works without an encoder"
    finally:
        channel.close()
        decoder.close()
