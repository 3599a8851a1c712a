"""Limits a small machine survives, each with its code and a message naming the flag: calls in flight
(RESOURCE_EXHAUSTED past --max-in-flight, health still answering), media bytes per request, and the gRPC
request size sized to the media limit by default."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from internvl_serve.common.service_settings import DEFAULT_REQUEST_MEDIA_BYTES, REQUEST_OVERHEAD_BYTES, receive_limit
from internvl_testing.decoder_server import decoder_config, generation_stub, start_decoder
from internvl_testing.encode_requests import image, request
from internvl_testing.encoder_server import encoder_config, encoder_stub, start_encoder
from internvl_testing.load import image_chat
from internvl_testing.media import image_bytes, noise_image


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    server = start_encoder(encoder_config(tiny_model_dir, None, max_request_media_bytes=40_000))
    yield server
    server.close()


def test_calls_past_max_in_flight_are_refused_and_health_still_answers(tiny_model_dir, encoder):
    decoder = start_decoder(decoder_config(tiny_model_dir, [encoder.address], max_in_flight=2))
    channel, stub = generation_stub(decoder.address)
    server = decoder.server
    entered, release = threading.Semaphore(0), asyncio.Event()
    real_encode = server.encoders.encode

    async def held_encode(media, deadline=None, tenant="default"):
        entered.release()
        await release.wait()
        return await real_encode(media, deadline, tenant)

    server.encoders.encode = held_encode
    try:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(stub.Generate, image_chat(seed), timeout=60) for seed in range(2)]
            assert entered.acquire(timeout=30) and entered.acquire(timeout=30)
            with pytest.raises(grpc.RpcError) as err:
                stub.Generate(image_chat(7), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-in-flight 2" in err.value.details()
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            decoder.call(_set(release))
            assert all(f.result(60).usage.output_tokens > 0 for f in held)
        assert stub.Generate(image_chat(8), timeout=60).usage.output_tokens > 0  # slots are given back
    finally:
        channel.close()
        decoder.close()


def _set(event: asyncio.Event):
    async def go():
        event.set()

    return go


def test_too_many_media_bytes_in_one_request(tiny_model_dir, encoder):
    big = image_bytes(noise_image(150, 150, 3), "PNG")  # ~67 KB of noise
    assert len(big) > 40_000
    decoder = start_decoder(decoder_config(tiny_model_dir, [encoder.address], max_request_media_bytes=32_768))
    channel, stub = generation_stub(decoder.address)
    try:
        assert stub.Generate(image_chat(1_000), timeout=30).usage.output_tokens > 0  # small images pass
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(_chat_with(big), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-request-media-mb" in err.value.details()
    finally:
        channel.close()
        decoder.close()
    enc_channel, enc = encoder_stub(encoder.address)
    small = image_bytes(noise_image(30, 30, 4), "PNG")
    try:
        with pytest.raises(grpc.RpcError) as err:
            enc.Encode(request(image(small), image(big)), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-request-media-mb" in err.value.details()
    finally:
        enc_channel.close()


def _chat_with(png: bytes):
    from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb
    from internvl_serve.pb.internvl.v1 import media_pb2

    part = pb.Part(media=media_pb2.Media(image=media_pb2.Image(data=png)))
    return pb.GenerateRequest(
        messages=[pb.Message(role="user", content=[part, pb.Part(text="x")])],
        sampling=pb.SamplingParams(max_new_tokens=1),
    )


def test_the_grpc_request_limit_is_sized_to_the_media_limit(tiny_model_dir, encoder):
    config = decoder_config(tiny_model_dir, [encoder.address])
    assert receive_limit(config) == DEFAULT_REQUEST_MEDIA_BYTES + REQUEST_OVERHEAD_BYTES  # not 512 MiB
    small = decoder_config(tiny_model_dir, [encoder.address], max_request_media_bytes=64 << 10)
    assert receive_limit(small) == (64 << 10) + REQUEST_OVERHEAD_BYTES
    decoder = start_decoder(decoder_config(tiny_model_dir, [encoder.address], max_receive_bytes=32 << 10))
    channel, stub = generation_stub(decoder.address)
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(_chat_with(b"\x89PNG" + b"\0" * (64 << 10)), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Generate(image_chat(3), timeout=60).usage.output_tokens > 0  # and it still answers
    finally:
        channel.close()
        decoder.close()
