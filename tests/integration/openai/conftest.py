"""A real stack with the OpenAI-compatible HTTP API: redis-server, an encoder, a decoder serving gRPC and HTTP
on real ports, the official `openai` client, and chats with their media as data: URLs."""

from __future__ import annotations

import pytest

from internvl_testing.decoder_server import assert_kv_blocks_free, decoder_config, generation_stub, start_decoder
from internvl_testing.encoder_server import encoder_config, start_encoder
from internvl_testing.redis_server import RedisServer


@pytest.fixture(scope="package")
def openai_stack(tiny_model_dir):
    redis = RedisServer()
    encoder = start_encoder(encoder_config(tiny_model_dir, redis.url))
    decoder = start_decoder(decoder_config(tiny_model_dir, [encoder.address], http_port=0))
    yield {"encoder": encoder, "decoder": decoder, "base_url": f"http://127.0.0.1:{decoder.server.http_port}"}
    decoder.close()
    encoder.close()
    redis.stop()


@pytest.fixture(scope="package")
def base_url(openai_stack):
    return openai_stack["base_url"]


@pytest.fixture(scope="package")
def client(base_url):
    import openai

    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="package")
def model_name(openai_stack):
    return openai_stack["decoder"].server.servicer.model_name


@pytest.fixture(scope="package")
def gen_stub(openai_stack):
    channel, stub = generation_stub(openai_stack["decoder"].address)
    yield stub
    channel.close()


@pytest.fixture
def engine(openai_stack):
    """The decoder's engine; after each test its block pool must be back to full (nothing leaks)."""
    engine = openai_stack["decoder"].server.engine
    yield engine
    assert_kv_blocks_free(engine)
