"""An in-process encoder (real gRPC port) over a real redis-server, and a stub to call it."""

from __future__ import annotations

import pytest

from internvl_testing.encoder_server import encoder_config, encoder_stub, start_encoder
from internvl_testing.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer("--enable-debug-command", "yes")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def encoder(tiny_model_dir, redis_server):
    thread = start_encoder(encoder_config(tiny_model_dir, redis_server.url))
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def encode_stub(encoder):
    channel, stub = encoder_stub(encoder.address)
    yield stub
    channel.close()
