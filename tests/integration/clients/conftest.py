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
def decoder_address(request):
    """HOST:PORT of a real in-process decoder (tiny checkpoint, fp32 on CPU) whose vision encoder is the
    `encoder` fixture and whose cache is `redis_server`; skips while the decoder service does not exist."""
    try:
        from internvl_serve.decoder.config import DecoderConfig
        from internvl_serve.decoder.server import DecoderServer
    except ModuleNotFoundError as exc:
        if exc.name in ("internvl_serve.decoder", "internvl_serve.decoder.server", "internvl_serve.decoder.config"):
            pytest.skip("decoder service not built yet")
        raise
    from internvl_testing.servers import ServerThread

    encoder = request.getfixturevalue("encoder")
    redis_url = request.getfixturevalue("redis_server").url
    model_dir = request.getfixturevalue("tiny_model_dir")
    config = DecoderConfig(model=str(model_dir), port=0, encoders=(encoder.address,), redis_url=redis_url,
                           device="cpu", dtype="float32")  # fmt: skip
    thread = ServerThread(lambda: DecoderServer(config))
    yield thread.address
    thread.close()
