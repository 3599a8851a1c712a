"""A real in-process encoder over a real redis-server for the client's tests, and the decoder's address.

`decoder_address` is a placeholder until the decoder service exists: it skips the generate tests. Replace
it with a real stack: a decoder (same checkpoint as `tiny_model_dir`, fp32 on CPU, greedy parity with the
oracle) whose encoder is the `encoder` fixture below, so media ids from encode() resolve in Generate.
"""

from __future__ import annotations

import pytest

from internvl_testing.encoder_server import encoder_config, start_encoder
from internvl_testing.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def encoder(tiny_model_dir, redis_server):
    thread = start_encoder(encoder_config(tiny_model_dir, redis_server.url))
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def decoder_address(tiny_model_dir, encoder):
    """HOST:PORT of a real in-process decoder (tiny checkpoint, fp32 on CPU) whose vision encoder is the
    `encoder` fixture (itself on the real `redis_server`)."""
    from internvl_testing.decoder_server import decoder_config, start_decoder

    thread = start_decoder(decoder_config(tiny_model_dir, [encoder.address], device="cpu", dtype="float32"))
    yield thread.address
    thread.close()
