"""One lifecycle for both services: listen with health NOT_SERVING, load, warm up, SERVING; on stop,
NOT_SERVING, drain, stop the gRPC server, close, flush telemetry.

A service subclasses `ServiceServer` and fills in three steps: `load` (build and warm its engine),
`drain` (let in-flight work finish within the grace period, then stop the gRPC server), and `close`
(release what it holds). Tests drive a server in-process (start / stop); the CLI runs it until a signal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from internvl_serve.common.grpc_server import bind, create_server
from internvl_serve.common.logs import log_event
from internvl_serve.common.telemetry import Telemetry, setup_telemetry


class ServiceServer:
    """`config` needs host, port, grace_s, max_receive_bytes, max_send_bytes and telemetry (settings)."""

    kind = "service"  # "encoder" or "decoder": the log events' prefix and the tracer/meter scope

    def __init__(self, config: Any, service_names: list[str], telemetry: Telemetry | None = None):
        """`telemetry`: default, providers from `config.telemetry`, shut down (flushed) by stop()."""
        self.config = config
        self.draining = asyncio.Event()
        self._owns_telemetry = telemetry is None
        self.telemetry = telemetry or setup_telemetry(settings=config.telemetry)
        self.log = logging.getLogger(f"internvl_serve.{self.kind}")
        self.server, self.health = create_server(
            service_names,
            max_receive_bytes=config.max_receive_bytes,
            max_send_bytes=config.max_send_bytes,
            telemetry=self.telemetry,
        )
        self.port = bind(self.server, config.host, config.port)

    @property
    def scope(self) -> str:
        """The instrumentation scope of this service's spans and metrics."""
        return f"internvl_serve.{self.kind}"

    async def start(self) -> None:
        await self.health.set(False)
        await self.server.start()  # health answers NOT_SERVING while the model loads
        try:
            await self.load()
        except BaseException:  # a bad checkpoint: release the port and what was built, then report it
            try:
                await self.server.stop(0)
                await self.close()
            finally:
                await self._shutdown_telemetry()
            raise
        await self.health.set(True)
        log_event(self.log, f"{self.kind}_serving", host=self.config.host, port=self.port, **self.serving_fields())

    async def stop(self, grace_s: float | None = None) -> None:
        """Close and the telemetry flush run, and `*_stopped` is logged, even if a step before them raised
        (the error then propagates)."""
        self.draining.set()
        try:
            await self.health.set(False)
            await self.drain(self.config.grace_s if grace_s is None else grace_s)
        except BaseException:
            await self.server.stop(0)  # a failed drain still releases the port
            raise
        finally:
            try:
                await self.close()
            finally:
                await self._shutdown_telemetry()
                log_event(self.log, f"{self.kind}_stopped", port=self.port)

    async def _shutdown_telemetry(self) -> None:
        if self._owns_telemetry:
            await asyncio.to_thread(self.telemetry.shutdown)  # export what is buffered before the process ends

    # ---- what each service fills in ---------------------------------------------------------------------

    async def load(self) -> None:
        """Load the model off the event loop and warm it up; the servicer answers once this returns."""
        raise NotImplementedError

    async def drain(self, grace_s: float) -> None:
        """Default: gRPC's own graceful stop (in-flight calls get `grace_s`)."""
        await self.server.stop(grace_s)

    async def close(self) -> None:
        """Release engines, channels and caches."""

    def serving_fields(self) -> dict[str, Any]:
        """Extra fields for the `*_serving` log event."""
        return {}
