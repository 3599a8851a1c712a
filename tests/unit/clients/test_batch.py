"""Client-side batching, ordering, per-call deadlines and stream cancellation, checked over real gRPC
against a stand-in GenerationService that echoes each prompt after a delay the prompt chooses.
(What the real decoder answers is tested in tests/integration/clients/test_client_generate.py.)"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc
import pytest

from internvl_serve.clients import AsyncInternVLClient, InternVLClient
from internvl_serve.clients import errors as e
from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb


class EchoServer:
    """Generate/GenerateStream answer the last text part, after sleeping the seconds named by "sleep:X"
    in it; "fail" answers INVALID_ARGUMENT. Records peak concurrency and cancelled streams."""

    def __init__(self):
        self.active = self.peak = 0
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "internvl.v1.GenerationService",
                    {
                        "Generate": grpc.unary_unary_rpc_method_handler(
                            self.generate, pb.GenerateRequest.FromString, pb.GenerateResponse.SerializeToString
                        ),
                        "GenerateStream": grpc.unary_stream_rpc_method_handler(
                            self.stream,
                            pb.GenerateStreamRequest.FromString,
                            pb.GenerateStreamResponse.SerializeToString,
                        ),
                    },
                )
            ]
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def generate(self, request, context):
        text = request.messages[-1].content[-1].text
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if "fail" in text:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"refused {text}")
            if text.startswith("sleep:"):
                time.sleep(float(text.split(":")[1]))
            return pb.GenerateResponse(
                text=text,
                token_ids=[len(text)],
                finish_reason=pb.FINISH_REASON_LENGTH,
                usage=pb.Usage(input_tokens=3, output_tokens=1),
                request_id=request.request_id,
            )
        finally:
            with self.lock:
                self.active -= 1

    def stream(self, request, context):
        finished = []
        # Runs when the call ends; the stream only finishes if every message was taken, so an early end is
        # the client's cancellation.
        context.add_callback(lambda: None if finished else self.cancelled.set())
        for i in range(50):
            yield pb.GenerateStreamResponse(text=f"{i} ", token_ids=[i], request_id="r")
            time.sleep(0.01)
        yield pb.GenerateStreamResponse(finish_reason=pb.FINISH_REASON_STOP, usage=pb.Usage(output_tokens=50))
        finished.append(True)


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.server.stop(0)


def _chat(text):
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


DELAYS = ["sleep:0.6", "sleep:0.1", "sleep:0.4", "sleep:0.0", "sleep:0.3"]


def test_sync_batch_runs_concurrently_and_keeps_order(echo):
    with InternVLClient(echo.address) as client:
        start = time.monotonic()
        results = client.generate([_chat(d) for d in DELAYS], request_id="job")
        elapsed = time.monotonic() - start
    assert [r.text for r in results] == DELAYS
    assert [r.request_id for r in results] == [f"job-{i}" for i in range(5)]
    assert results[0].finish_reason == "length" and results[0].usage.output_tokens == 1
    assert echo.peak >= 3 and elapsed < 1.2, "1.4 s of work run side by side"


def test_async_batch_runs_concurrently_keeps_order_and_respects_max_concurrency(echo):
    async def go():
        async with AsyncInternVLClient(echo.address, max_concurrency=2) as client:
            return await client.generate([_chat(d) for d in DELAYS])

    assert [r.text for r in asyncio.run(go())] == DELAYS
    assert echo.peak == 2


def test_a_failure_in_a_batch_raises_or_is_returned_in_place(echo):
    batch = [_chat("sleep:0.1"), _chat("fail me"), _chat("ok")]
    with InternVLClient(echo.address) as client:
        with pytest.raises(e.InvalidArgumentError, match="refused fail me"):
            client.generate(batch)
        results = client.generate(batch, return_exceptions=True)
    assert results[0].text == "sleep:0.1" and isinstance(results[1], e.InvalidArgumentError) and results[2].text == "ok"

    async def go():
        async with AsyncInternVLClient(echo.address) as client:
            with pytest.raises(e.InvalidArgumentError):
                await client.generate(batch)
            return await client.generate(batch, return_exceptions=True)

    results = asyncio.run(go())
    assert isinstance(results[1], e.InvalidArgumentError) and results[2].text == "ok"


def test_the_timeout_bounds_the_whole_batch(echo):
    with InternVLClient(echo.address) as client:
        with pytest.raises(e.DeadlineExceededError):
            client.generate([_chat("sleep:0.05"), _chat("sleep:2")], timeout=0.5)


def test_leaving_a_stream_early_cancels_it_on_the_server(echo):
    with InternVLClient(echo.address) as client:
        for i, delta in enumerate(client.stream(_chat("x"))):
            assert delta.finish_reason is None and delta.usage is None
            if i == 2:
                break
    assert echo.cancelled.wait(5)


def test_a_stream_read_to_the_end_is_not_cancelled(echo):
    with InternVLClient(echo.address) as client:
        assert len(list(client.stream(_chat("x")))) == 51
    assert not echo.cancelled.wait(0.5)


def test_async_stream_delivers_deltas_then_the_finish(echo):
    async def go():
        async with AsyncInternVLClient(echo.address) as client:
            return [d async for d in client.stream(_chat("x"))]

    deltas = asyncio.run(go())
    assert len(deltas) == 51 and deltas[-1].finish_reason == "stop" and deltas[-1].usage.output_tokens == 50
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert [t for d in deltas for t in d.token_ids] == list(range(50))


def test_an_async_client_outlives_its_event_loop(echo):
    client = AsyncInternVLClient(echo.address)  # made outside any loop; channels open on first use

    async def ask(text):
        return (await client.generate(_chat(text))).text

    assert asyncio.run(ask("first")) == "first"
    assert asyncio.run(ask("second")) == "second", "a new loop gets new channels"
    asyncio.run(client.close())
