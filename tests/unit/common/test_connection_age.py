"""--max-connection-age-s: the server closes each client connection after that long (calls on it finish),
so a client with a DNS target reconnects, re-resolves and reaches replicas added since (an encoder
scale-up behind a headless Service)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from internvl_serve.common.grpc_server import bind, create_server


def test_connections_are_recycled_after_their_age():
    async def serve(ready: threading.Event, stop: threading.Event, port: list[int]):
        server, health = create_server([], max_receive_bytes=1 << 20, max_send_bytes=1 << 20, max_connection_age_s=0.5)
        port.append(bind(server, "127.0.0.1", 0))
        await server.start()
        await health.set(True)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await server.stop(0)

    ready, stop, port = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=lambda: asyncio.run(serve(ready, stop, port)), daemon=True)
    thread.start()
    assert ready.wait(10)
    states: list[grpc.ChannelConnectivity] = []
    channel = grpc.insecure_channel(f"127.0.0.1:{port[0]}")
    channel.subscribe(states.append, try_to_connect=True)
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # calls keep working across the recycling
            assert (
                stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            )
            time.sleep(0.05)
    finally:
        channel.close()
        stop.set()
        thread.join(10)
    assert states.count(grpc.ChannelConnectivity.READY) >= 3  # connected, aged out, connected again, ...
