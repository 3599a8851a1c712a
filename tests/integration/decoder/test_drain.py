"""Draining waits for calls that are not in the engine yet: a call whose media is still being encoded when
stop() begins gets the grace period too, not the 1 s the gRPC server's own stop would give it."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from internvl_testing.decoder_server import decoder_config, generation_stub, start_decoder
from internvl_testing.encoder_server import encoder_config, start_encoder
from internvl_testing.generate_requests import generate_request

HELD_S = 1.5  # past the 1 s the gRPC server gives what is still running when the drain ends


def test_a_call_still_encoding_its_media_finishes_during_the_drain(tiny_model_dir, media_dir):
    encoder = start_encoder(encoder_config(tiny_model_dir, None))
    decoder = start_decoder(decoder_config(tiny_model_dir, [encoder.address], grace_s=30.0))
    channel, stub = generation_stub(decoder.address)
    try:
        server = decoder.server
        entered, release = threading.Event(), asyncio.Event()
        real_encode = server.encoders.encode

        async def held_encode(media, deadline=None, tenant="default"):  # waits until the test lets it go
            entered.set()
            await release.wait()
            return await real_encode(media, deadline, tenant)

        server.encoders.encode = held_encode
        chat = [
            {
                "role": "user",
                "content": [{"type": "image", "url": str(media_dir / "view.jpg")}, {"type": "text", "text": "Hi"}],
            }
        ]
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(stub.Generate, generate_request(chat, max_new_tokens=4), timeout=60)
            assert entered.wait(30), "the call never reached the encoder"
            assert server.servicer.in_flight == 1 and not server.engine.scheduler.has_work()
            stopping = decoder.stop_soon(30.0)
            time.sleep(HELD_S)
            assert not reply.done() and not stopping.done(), "the drain did not wait for the encoding call"
            assert server.draining.is_set()
            decoder.call(_set(release))
            answer = reply.result(60)
            stopping.result(60)
        assert answer.usage.output_tokens == 4 and answer.usage.image_tokens > 0
        assert server.servicer.in_flight == 0
        try:  # the stopped server takes no new call
            stub.Generate(generate_request(chat, max_new_tokens=1), timeout=5)
            raise AssertionError("a stopped decoder answered")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
        decoder.close()
        encoder.close()


def _set(event: asyncio.Event):
    async def set_it() -> None:
        event.set()

    return set_it
