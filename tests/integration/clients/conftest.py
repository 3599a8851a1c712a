"""The decoder the client's generate tests call: real, in-process, over the `encoder` fixture (tests/conftest.py),
so media ids from encode() resolve in Generate."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def decoder_address(tiny_model_dir, encoder):
    """HOST:PORT of a real in-process decoder (tiny checkpoint, fp32 on CPU) whose vision encoder is the
    `encoder` fixture (itself on the real `redis_server`)."""
    from internvl_testing.decoder_server import decoder_config, start_decoder

    thread = start_decoder(decoder_config(tiny_model_dir, [encoder.address], device="cpu", dtype="float32"))
    yield thread.address
    thread.close()
