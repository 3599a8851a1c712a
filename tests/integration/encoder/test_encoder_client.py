"""The decoder's encoder client: one round_robin channel, retry on UNAVAILABLE, deadlines, pass-through of
errors. (Failover under SIGKILL and SIGTERM of real encoder processes: tests/fault/encoder/test_failover.py.)"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from internvl_serve.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from internvl_serve.decoder.service.encoder_client import EncoderClient
from internvl_testing.encode_requests import embeddings, image, request
from internvl_testing.media import image_bytes, noise_image
from internvl_testing.redis_server import free_port

PNG = image_bytes(noise_image(70, 50, 3), "PNG")


def _run(coro_fn):
    async def body():
        return await coro_fn()

    return asyncio.run(body())


def test_skips_a_dead_replica_and_returns_the_embeddings(encoder, encode_stub):
    dead = f"127.0.0.1:{free_port()}"

    async def go():
        client = EncoderClient([dead, encoder.address], backoff_s=0.01)
        try:
            return [await client.encode([image(PNG)]) for _ in range(3)]
        finally:
            await client.close()

    results = _run(go)
    expected = embeddings(encode_stub.Encode(request(image(PNG))).media[0])
    for (result,) in results:
        assert torch.equal(result.embeddings, expected) and not result.is_video
        assert result.num_tiles * result.tokens_per_tile == result.embeddings.shape[0]


def test_no_replica_up_for_the_whole_bound_is_unavailable():
    """The call waits for an encoder to come up (gRPC's wait-for-ready), within --encoder-timeout-s."""

    async def go():
        client = EncoderClient([f"127.0.0.1:{free_port()}"], attempts=2, backoff_s=0.01, timeout_s=1.0)
        try:
            await client.encode([image(PNG)])
        finally:
            await client.close()

    with pytest.raises(Unavailable, match="no vision encoder answered within --encoder-timeout-s=1"):
        _run(go)


def test_the_encoders_verdict_on_bad_media_passes_through(encoder):
    async def go():
        client = EncoderClient([encoder.address])
        try:
            await client.encode([image(b"not an image")])
        finally:
            await client.close()

    with pytest.raises(InvalidArgument, match="media\\[0\\]"):
        _run(go)


def test_a_passed_deadline_is_not_retried(encoder):
    async def go():
        client = EncoderClient([encoder.address])
        try:
            await client.encode([image(PNG)], deadline=time.monotonic() - 1)
        finally:
            await client.close()

    with pytest.raises(DeadlineExceeded):
        _run(go)


def test_one_name_with_several_replicas_spreads_the_calls(tiny_model_dir, encoder):
    """Compose replicas share one DNS name; the client must round-robin over its addresses."""
    from internvl_testing.encoder_server import encoder_config, start_encoder

    second = start_encoder(encoder_config(tiny_model_dir, None))
    first_engine, second_engine = encoder.server.engine, second.server.engine
    before = (first_engine.computed, second_engine.computed)
    target = f"ipv4:127.0.0.1:{encoder.port},127.0.0.1:{second.port}"  # one name, two addresses

    async def go():
        client = EncoderClient([target])
        try:
            for seed in range(6):
                await client.encode([image(image_bytes(noise_image(30, 30, 500 + seed), "PNG"))])
        finally:
            await client.close()

    try:
        _run(go)
        assert first_engine.computed > before[0] and second_engine.computed > before[1]
    finally:
        second.close()
