"""Greedy tokens over the real stack (decoder -> encoder -> Redis) equal transformers' generate."""

from __future__ import annotations

import concurrent.futures

import pytest

from internvl_serve.common.embedding_cache import CacheSettings
from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
from internvl_testing.generate_requests import generate_request, stream_request

MAX_NEW = 12


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


def _text(t):
    return {"type": "text", "text": t}


@pytest.fixture(scope="module")
def chats(model_card_chats):
    return model_card_chats


@pytest.fixture(scope="module")
def expected(oracle, chats):
    return {name: oracle.generate(chat, max_new_tokens=MAX_NEW)[0] for name, chat in chats.items()}


@pytest.mark.parametrize("name", ["text only", "one image", "several images", "video"])
def test_unary_greedy_equals_transformers(gen_stub, engine, oracle, chats, expected, name):
    reply = gen_stub.Generate(generate_request(chats[name], max_new_tokens=MAX_NEW))
    assert list(reply.token_ids) == expected[name]
    assert reply.text == oracle.decode(expected[name])
    assert reply.usage.output_tokens == len(expected[name])
    assert reply.usage.input_tokens == len(oracle.prepare(chats[name]).prompt_ids(0))
    assert reply.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    if name != "text only":
        assert reply.usage.image_tokens > 0


def test_model_card_mixed_batch_sent_concurrently(gen_stub, engine, chats, expected):
    """The card's image+video batch: two landmarks, a video, an image, plus text, all at once."""
    names = ["several images", "video", "one image", "text only"]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        replies = list(pool.map(lambda n: gen_stub.Generate(generate_request(chats[n], max_new_tokens=MAX_NEW)), names))
    for name, reply in zip(names, replies):
        assert list(reply.token_ids) == expected[name], name


def test_stream_concatenates_to_the_unary_answer(gen_stub, engine, chats):
    unary = gen_stub.Generate(generate_request(chats["one image"], max_new_tokens=MAX_NEW))
    deltas = list(gen_stub.GenerateStream(stream_request(chats["one image"], max_new_tokens=MAX_NEW)))
    assert "".join(d.text for d in deltas) == unary.text
    assert [t for d in deltas for t in d.token_ids] == list(unary.token_ids)
    assert deltas[-1].finish_reason == unary.finish_reason
    last, whole = deltas[-1].usage, unary.usage  # cached_tokens depends on what ran before
    assert (last.input_tokens, last.output_tokens, last.image_tokens) == (
        whole.input_tokens,
        whole.output_tokens,
        whole.image_tokens,
    )
    assert all(d.finish_reason == pb.FINISH_REASON_UNSPECIFIED for d in deltas[:-1])


def test_media_id_from_an_earlier_encode(stack, gen_stub, engine, chats, expected, media_dir):
    from internvl_testing.encode_requests import image, request
    from internvl_testing.encoder_server import encoder_stub

    channel, enc = encoder_stub(stack["encoder"].address)
    media_id = enc.Encode(request(image((media_dir / "view.jpg").read_bytes()), embeddings=False)).media[0].media_id
    channel.close()
    chat = _user({"type": "image", "media_id": media_id}, _text("Write a haiku for this image"))
    reply = gen_stub.Generate(generate_request(chat, max_new_tokens=MAX_NEW))
    assert list(reply.token_ids) == expected["one image"]
    assert reply.usage.media_cache_hits == 1


def test_seeded_sampling_is_reproducible(gen_stub, engine, chats):
    sampling = {"max_new_tokens": 8, "temperature": 0.9, "top_p": 0.9, "top_k": 50, "seed": 1234}
    a = gen_stub.Generate(generate_request(chats["text only"], **sampling))
    b = gen_stub.Generate(generate_request(chats["text only"], **sampling))
    assert list(a.token_ids) == list(b.token_ids)


def test_media_ids_resolve_from_redis_without_an_encoder(tiny_model_dir, media_dir, chats, expected):
    """With --redis-url the decoder reads media_id entries itself: they keep working with the encoder gone."""
    from internvl_testing.decoder_server import decoder_config, generation_stub, start_decoder
    from internvl_testing.encode_requests import image, request
    from internvl_testing.encoder_server import encoder_config, encoder_stub, start_encoder
    from internvl_testing.redis_server import RedisServer

    redis = RedisServer()
    encoder = start_encoder(encoder_config(tiny_model_dir, redis.url))
    config = decoder_config(
        tiny_model_dir, [encoder.address], cache=CacheSettings(url=redis.url), encoder_timeout_s=2.0
    )
    decoder = start_decoder(config)
    channel, stub = generation_stub(decoder.address)
    try:
        enc_channel, enc = encoder_stub(encoder.address)
        media_id = enc.Encode(request(image((media_dir / "view.jpg").read_bytes()), embeddings=False)).media[0].media_id
        enc_channel.close()
        chat = _user({"type": "image", "media_id": media_id}, _text("Write a haiku for this image"))
        first = stub.Generate(generate_request(chat, max_new_tokens=MAX_NEW))  # via the encoder: learns its fingerprint
        encoder.close()
        again = stub.Generate(generate_request(chat, max_new_tokens=MAX_NEW))  # straight from Redis
        assert list(first.token_ids) == list(again.token_ids) == expected["one image"]
        assert again.usage.media_cache_hits == 1
        import grpc

        with pytest.raises(grpc.RpcError) as err:  # new bytes still need an encoder
            stub.Generate(generate_request(chats["one image"], max_new_tokens=2))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
        decoder.close()
        redis.stop()
