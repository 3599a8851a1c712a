"""Run one of our asyncio gRPC servers in a background thread, on a real port, for in-process tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any


class ServerThread:
    """Builds the server inside its own event loop (grpc.aio objects belong to one loop), starts it, and
    stops it on close(). `call(coro_fn)` runs a coroutine function on the server's loop."""

    def __init__(self, factory: Callable[[], Any], start_timeout: float = 120.0):
        self._factory = factory
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: Any = None
        self._stopping: Any = None  # the future of stop_soon()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name="test-server")
        self._thread.start()
        if not self._ready.wait(start_timeout):
            raise TimeoutError("server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.server = self._factory()
            self._loop.run_until_complete(self.server.start())
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def call(self, coro_fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(timeout)

    def stop_soon(self, grace_s: float) -> concurrent.futures.Future:
        """Start `server.stop(grace_s)` on the server's loop and return at once; close() then only ends the loop."""
        self._stopping = asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self._loop)
        return self._stopping

    def close(self, grace_s: float = 1.0) -> None:
        if self._stopping is not None:
            self._stopping.result(60)
        elif self.server is not None and self._error is None:
            self.call(lambda: self.server.stop(grace_s))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


def fake_service_config(**overrides):
    """The settings ServiceServer reads, for a service with no model (lifecycle tests)."""
    from types import SimpleNamespace

    from internvl_serve.common.telemetry import TelemetrySettings
    from internvl_serve.common.tls import ServerTls

    settings = dict(
        host="127.0.0.1",
        port=0,
        grace_s=0.1,
        drain_notice_s=0.0,
        max_receive_bytes=1 << 20,
        max_send_bytes=1 << 20,
        max_in_flight=8,
        tls=ServerTls(),
        auth_tokens_file=None,
        metrics_port=None,
        telemetry=TelemetrySettings.off("internvl-fake"),
    )
    return SimpleNamespace(**(settings | overrides))
