"""A stub to call the session's in-process encoder (the `encoder` fixture of tests/conftest.py)."""

from __future__ import annotations

import pytest

from internvl_testing.encoder_server import encoder_stub


@pytest.fixture(scope="module")
def encode_stub(encoder):
    channel, stub = encoder_stub(encoder.address)
    yield stub
    channel.close()
