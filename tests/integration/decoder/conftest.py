"""A real stack in-process: redis-server, an encoder and a decoder on real ports, and a stub to call it."""

from __future__ import annotations

import pytest

from internvl_testing.decoder_server import assert_kv_blocks_free, decoder_config, generation_stub, start_decoder
from internvl_testing.encoder_server import encoder_config, start_encoder
from internvl_testing.redis_server import RedisServer


@pytest.fixture(scope="module")
def stack(tiny_model_dir):
    redis = RedisServer()
    encoder = start_encoder(encoder_config(tiny_model_dir, redis.url))
    decoder = start_decoder(decoder_config(tiny_model_dir, [encoder.address]))
    yield {"redis": redis, "encoder": encoder, "decoder": decoder}
    decoder.close()
    encoder.close()
    redis.stop()


@pytest.fixture(scope="module")
def gen_stub(stack):
    channel, stub = generation_stub(stack["decoder"].address)
    yield stub
    channel.close()


@pytest.fixture
def engine(stack):
    """The decoder's engine; after each test its block pool must be back to full (nothing leaks)."""
    engine = stack["decoder"].server.engine
    yield engine
    assert_kv_blocks_free(engine)
