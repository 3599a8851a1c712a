"""One lifecycle for both services: listen with health NOT_SERVING, load, warm up, SERVING; on stop,
NOT_SERVING, drain, stop the gRPC server, close, flush telemetry.

With --metrics-port, Prometheus `/metrics` (common/prometheus.py) is bound with the gRPC port, on the same
--host, served from start() on (while the model loads too) and closed last, before the telemetry flush.

A service subclasses `ServiceServer` and fills in three steps: `load` (build and warm its engine),
`drain` (let in-flight work finish within the grace period, then stop the gRPC server), and `close`
(release what it holds). Tests drive a server in-process (start / stop); the CLI runs it until a signal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from internvl_serve.common.admission import InFlightLimit
from internvl_serve.common.auth import AuthInterceptor
from internvl_serve.common.errors import StartupError
from internvl_serve.common.grpc_server import bind, create_server
from internvl_serve.common.logs import log_event
from internvl_serve.common.prometheus import MetricsServer
from internvl_serve.common.security import Security
from internvl_serve.common.service_settings import receive_limit
from internvl_serve.common.telemetry import Telemetry, setup_telemetry


class ServiceServer:
    """`config` needs host, port, grace_s, drain_notice_s, max_receive_bytes, max_send_bytes, max_in_flight,
    tls, auth_tokens_file, metrics_port and telemetry (settings)."""

    kind = "service"  # "encoder" or "decoder": the log events' prefix and the tracer/meter scope
    # Without tokens, take the tenant callers name in their metadata: true for encoders (behind decoders
    # that act for tenants), false for client-facing services (without tokens there is one tenant).
    trusts_named_tenant = False

    def __init__(self, config: Any, service_names: list[str], telemetry: Telemetry | None = None):
        """`telemetry`: default, providers from `config.telemetry`, shut down (flushed) by stop(); one given
        must have been set up with `prometheus=True` when `config.metrics_port` is set."""
        self.config = config
        self.draining = asyncio.Event()
        self.failed = asyncio.Event()  # set by fail(): serve_until_signal then stops the service, exit 1
        self.failure: str | None = None
        self._owns_telemetry = telemetry is None
        prometheus = config.metrics_port is not None
        self.telemetry = telemetry or setup_telemetry(settings=config.telemetry, prometheus=prometheus)
        self.log = logging.getLogger(f"internvl_serve.{self.kind}")
        self.security = Security.load(config)  # StartupError (exit 2) before anything listens
        self.in_flight = InFlightLimit(config.max_in_flight, self.kind)
        self.server, self.health = create_server(
            service_names,
            max_receive_bytes=receive_limit(config),
            max_send_bytes=config.max_send_bytes,
            max_connection_age_s=getattr(config, "max_connection_age_s", None),
            telemetry=self.telemetry,
            auth=AuthInterceptor(self.security.tokens, self.trusts_named_tenant),
            in_flight=self.in_flight,
        )
        self.port = bind(self.server, config.host, config.port, self.security.credentials)
        self.metrics_server = self._bind_metrics() if prometheus else None
        self.metrics_port = None if self.metrics_server is None else self.metrics_server.port  # the bound one

    def _bind_metrics(self) -> MetricsServer:
        registry = self.telemetry.prometheus_registry
        if registry is None:
            raise ValueError("metrics_port is set but the Telemetry given has no Prometheus reader")
        try:
            return MetricsServer(registry, self.config.host, self.config.metrics_port)
        except OSError as exc:  # in use, or not this machine's address: a usage error (exit 2)
            where = f"{self.config.host}:{self.config.metrics_port}"
            raise StartupError(f"--metrics-port: cannot listen on {where} ({exc.strerror or exc})") from None

    @property
    def scope(self) -> str:
        """The instrumentation scope of this service's spans and metrics."""
        return f"internvl_serve.{self.kind}"

    async def start(self) -> None:
        await self.health.set(False)
        if self.metrics_server is not None:
            self.metrics_server.start()  # scrapable while the model loads (its gauges report nothing yet)
        await self.server.start()  # health answers NOT_SERVING while the model loads
        try:
            await self.load()
        except BaseException:  # a bad checkpoint: release the ports and what was built, then report it
            try:
                await self.server.stop(0)
                await self.close()
            finally:
                await self._stop_metrics()
                await self._shutdown_telemetry()
            raise
        await self.health.set(True)
        log_event(
            self.log,
            f"{self.kind}_serving",
            host=self.config.host,
            port=self.port,
            metrics_port=self.metrics_port,
            tls="mutual" if self.config.tls.client_ca else bool(self.security.credentials),
            auth=self.security.tokens is not None,
            **self.serving_fields(),
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Close and the telemetry flush run, and `*_stopped` is logged, even if a step before them raised
        (the error then propagates)."""
        try:
            # NOT_SERVING first, still answering: clients' health watches move new calls to other replicas
            # during the notice, so no call is refused while another replica is up.
            was_serving = self.health.serving  # only clients that saw SERVING need the drain notice
            await self.health.set(False)
            if self.config.drain_notice_s > 0 and was_serving:
                await asyncio.sleep(self.config.drain_notice_s)
            self.draining.set()
            await self.drain(self.config.grace_s if grace_s is None else grace_s)
        except BaseException:
            await self.server.stop(0)  # a failed drain still releases the port
            raise
        finally:
            try:
                await self.close()
            finally:
                await self._stop_metrics()
                await self._shutdown_telemetry()
                log_event(self.log, f"{self.kind}_stopped", port=self.port)

    def fail(self, reason: str) -> None:
        """A fault the service cannot recover from (a tensor-parallel rank died): health says NOT_SERVING at
        once, and the command stops the service and exits non-zero instead of serving a broken model."""
        if self.failure is not None:
            return
        self.failure = reason
        log_event(self.log, f"{self.kind}_failed", logging.ERROR, reason=reason)
        self._failing = asyncio.get_running_loop().create_task(self.health.set(False))  # held: not collected early
        self.failed.set()

    async def _stop_metrics(self) -> None:
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)

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
