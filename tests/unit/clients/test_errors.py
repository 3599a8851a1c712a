"""gRPC statuses -> typed exceptions, checked on real gRPC failures (no server, a silent server) and on
the mapping table; the errors the servers raise are checked against the real encoder in
tests/integration/clients/test_client_encode.py."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import pytest

from internvl_serve.clients import AsyncInternVLClient, InternVLClient
from internvl_serve.clients import errors as e
from internvl_testing.redis_server import free_port

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, e.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, e.NotFoundError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, e.ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, e.UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, e.DeadlineExceededError),
        (grpc.StatusCode.CANCELLED, e.CancelledError),
        (grpc.StatusCode.INTERNAL, e.InternVLError),
        (grpc.StatusCode.PERMISSION_DENIED, e.InternVLError),
    ],
)
def test_each_code_has_its_type_and_keeps_code_and_details(code, kind):
    error = e.error_for_status(code, "media[0]: not an image")
    assert type(error) is kind and isinstance(error, e.InternVLError)
    assert error.code == code and error.details == "media[0]: not an image" and error.code_name == code.name
    assert str(error) == f"{code.name}: media[0]: not an image"


def test_client_side_errors_are_invalid_argument_and_value_errors():
    error = e.MediaError("image file not found: x.jpg")
    assert isinstance(error, e.InputError) and isinstance(error, e.InvalidArgumentError)
    assert isinstance(error, ValueError) and error.code == grpc.StatusCode.INVALID_ARGUMENT


def test_nothing_listening_is_unavailable_after_retries():
    address = f"127.0.0.1:{free_port()}"
    with InternVLClient(address, timeout=20) as client:
        start = time.monotonic()
        with pytest.raises(e.UnavailableError) as err:
            client.generate(MESSAGES)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "connect" in err.value.details.lower()
    assert 0.1 < time.monotonic() - start < 10, "retried with backoff, then gave up well before the deadline"


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers: every call waits for its deadline."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_timeout_is_the_grpc_deadline(silent_server):
    with InternVLClient(silent_server, timeout=30) as client:
        start = time.monotonic()
        with pytest.raises(e.DeadlineExceededError):
            client.generate(MESSAGES, timeout=0.5)
        with pytest.raises(e.DeadlineExceededError):
            list(client.stream(MESSAGES, timeout=0.3))
        with pytest.raises(e.DeadlineExceededError):
            client.encode(b"\x89PNG\r\n\x1a\n....", timeout=0.3)
    assert time.monotonic() - start < 5


def test_async_client_raises_the_same_types(silent_server):
    async def go():
        async with AsyncInternVLClient(silent_server) as client:
            with pytest.raises(e.DeadlineExceededError):
                await client.generate(MESSAGES, timeout=0.3)
            with pytest.raises(e.DeadlineExceededError):
                async for _ in client.stream(MESSAGES, timeout=0.3):
                    pass
        async with AsyncInternVLClient(f"127.0.0.1:{free_port()}") as client:
            with pytest.raises(e.UnavailableError):
                await client.encode(b"GIF89a....")

    asyncio.run(go())


def test_bad_arguments_fail_before_any_call(silent_server):
    with InternVLClient(silent_server) as client:
        with pytest.raises(TypeError, match="accepted: max_new_tokens"):
            client.generate(MESSAGES, max_tokens=3)
        with pytest.raises(TypeError, match="accepted"):
            client.stream(MESSAGES, beam_width=2)
        with pytest.raises(e.InputError, match="one conversation"):
            client.stream([MESSAGES, MESSAGES])
        with pytest.raises(e.MediaError, match="not found"):
            client.stream([{"role": "user", "content": [{"type": "image", "path": "/nonexistent.png"}]}])
