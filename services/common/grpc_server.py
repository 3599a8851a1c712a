"""What every gRPC server of ours shares: channel options, the error interceptor, tracing and RPC metrics,
health, reflection, and a graceful stop on SIGTERM/SIGINT (DESIGN.md section 7.3-7.4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from internvl_serve.common.admission import InFlightLimit
from internvl_serve.common.auth import AuthInterceptor
from internvl_serve.common.errors import ServiceError, status_for
from internvl_serve.common.logs import log_event
from internvl_serve.common.rpc_telemetry import TelemetryInterceptor
from internvl_serve.common.rpc_wrap import wrap_rpc
from internvl_serve.common.telemetry import Telemetry

log = logging.getLogger("internvl_serve.grpc")

MiB = 1024 * 1024
CONNECTION_AGE_GRACE_MS = 60_000  # calls on a connection past its age get this long to finish


def server_options(
    max_receive_bytes: int, max_send_bytes: int, max_connection_age_s: float | None = None
) -> list[tuple[str, int]]:
    """`max_connection_age_s`: close each client connection after this long (with a grace for the calls
    on it), so clients re-resolve DNS and spread over replicas added since (an encoder scale-up)."""
    age = []
    if max_connection_age_s:
        age = [
            ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_MS),
        ]
    return age + [
        # Requests carry encoded images/videos (default limits 32 MiB per image, 256 MiB per video).
        ("grpc.max_receive_message_length", max_receive_bytes),
        # Encode replies with inline embeddings are large (an InternVL3-14B image: ~34 MB in bf16).
        ("grpc.max_send_message_length", max_send_bytes),
        # Let idle clients keep connections open with keepalive pings every 20 s or more.
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Our own keepalive finds dead peers (for example a client that vanished mid-stream) in ~1.5 min.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    code, message = status_for(exc)
    if not isinstance(exc, ServiceError):
        log_event(log, "rpc_internal_error", logging.ERROR, method=method, error=repr(exc)[:500])
        log.exception("unexpected error in %s", method, exc_info=exc)
        trace.get_current_span().record_exception(exc)  # the RPC's server span: the status alone says INTERNAL
    await context.abort(code, message)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors into their status codes; anything unexpected into INTERNAL without details."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method

        @contextlib.asynccontextmanager
        async def errors_to_status(context):
            try:
                yield
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await _abort(context, exc, method)

        return wrap_rpc(handler, errors_to_status)


class HealthReporter:
    """grpc.health.v1.Health for "" and each service name; NOT_SERVING until mark_serving()."""

    def __init__(self, server: grpc.aio.Server, service_names: Iterable[str]):
        self.servicer = health.aio.HealthServicer()
        self.names = ["", *service_names]
        self.serving = False  # what it last said (the HTTP API's /health says the same)
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def set(self, serving: bool) -> None:
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.names:
            await self.servicer.set(name, status)


def create_server(
    service_full_names: list[str],
    *,
    max_receive_bytes: int,
    max_send_bytes: int,
    max_connection_age_s: float | None = None,
    telemetry: Telemetry | None = None,
    auth: AuthInterceptor | None = None,
    in_flight: InFlightLimit | None = None,
) -> tuple[grpc.aio.Server, HealthReporter]:
    """`telemetry`: trace and count every call but health and reflection (the outermost interceptor, so it
    sees the status the others set). Then `auth` (tokens, the caller's tenant), then `in_flight` (only
    authenticated calls take a slot), then the ErrorInterceptor around the servicer."""
    interceptors = [i for i in (telemetry and TelemetryInterceptor(telemetry), auth, in_flight) if i]
    interceptors.append(ErrorInterceptor())
    options = server_options(max_receive_bytes, max_send_bytes, max_connection_age_s)
    server = grpc.aio.server(interceptors=interceptors, options=options)
    reporter = HealthReporter(server, service_full_names)
    reflection.enable_server_reflection([*service_full_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return server, reporter


def bind(server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind a port (TLS with `credentials`); port 0 picks a free one. Returns the bound port."""
    address = f"{host}:{port}"
    bound = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} (in use or not permitted)")
    return bound


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`; the serve loop then drains and stops."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests run servers in-process)
            pass


FAILED_STOP_S = 5.0  # a failed service's stop gets this long (its steps may be stuck on a dead peer)


async def serve_until_signal(server) -> int:
    """Start `server` (an EncoderServer or DecoderServer), wait for SIGTERM/SIGINT, then stop it gracefully:
    0. Or until the server fails (ServiceServer.fail): then a bounded stop, and 1."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    await server.start()
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(server.failed.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if server.failure is None:
        await server.stop()
        return 0
    # Not wait_for: on timeout it cancels and then waits for the cancelled stop's cleanup, which may be
    # what is stuck (a step blocked on a dead peer). The caller exits without waiting for it.
    stopping = asyncio.ensure_future(server.stop(0.0))
    done, _ = await asyncio.wait({stopping}, timeout=FAILED_STOP_S)
    log = logging.getLogger("internvl_serve")
    if not done:
        log.error("the failed service did not stop within %.0f s; exiting anyway", FAILED_STOP_S)
    elif stopping.exception() is not None:
        log.error("stopping the failed service raised %r", stopping.exception())
    return 1
