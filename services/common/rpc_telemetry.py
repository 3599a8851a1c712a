"""The server side of tracing and RPC metrics: one SERVER span per call, a child of the caller's span
when the call's metadata carries a W3C traceparent, and request / error counters by method and status.

Installed by create_server as the outermost interceptor, so it sees the status the ErrorInterceptor
chose (read back from the servicer context after the call). Health checks and reflection are neither
traced nor counted. Span status follows the RPC conventions for servers: only statuses that mean the
server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS) mark the span
as an error; a client's bad input (INVALID_ARGUMENT, NOT_FOUND, ...) does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from internvl_serve.common.outbound_span import rpc_attributes
from internvl_serve.common.rpc_wrap import is_infrastructure, wrap_rpc
from internvl_serve.common.telemetry import Telemetry

SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


_DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


class _MetadataGetter:
    """Reads W3C trace headers from grpc.aio invocation metadata (key/value pairs, keys lowercase)."""

    def get(self, carrier, key: str):
        values = [value for k, value in carrier if k == key and isinstance(value, str)]
        return values or None

    def keys(self, carrier):
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


def _peer_attributes(context) -> dict[str, object]:
    """client.address/port from the peer string: "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:..."."""
    try:
        peer = context.peer() or ""
    except Exception:  # not every context can say
        return {}
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return {"network.transport": "unix"} if kind == "unix" else {}
    host, _, port = rest.rpartition(":")
    return {"client.address": host.strip("[]"), "client.port": int(port)} if port.isdigit() else {}


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, telemetry: Telemetry):
        self._tracer = telemetry.tracer("internvl_serve.grpc")
        meter = telemetry.meter("internvl_serve.grpc")
        self._requests = meter.create_counter(
            "internvl.rpc.server.requests", unit="{request}", description="Finished RPCs by method and status code"
        )
        self._errors = meter.create_counter(
            "internvl.rpc.server.errors", unit="{request}", description="RPCs that ended with a status other than OK"
        )
        self._active = meter.create_up_down_counter(
            "internvl.rpc.server.active_requests", unit="{request}", description="RPCs in progress"
        )
        self._duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of incoming RPCs",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_infrastructure(method):
            return handler
        full_method = method.lstrip("/")
        metadata = handler_call_details.invocation_metadata or ()

        @contextlib.asynccontextmanager
        async def traced(context):
            with self._call(full_method, metadata, context):
                yield

        return wrap_rpc(handler, traced)

    @contextlib.contextmanager
    def _call(self, full_method: str, metadata, context):
        parent = propagate.extract(metadata, getter=_GETTER)
        rpc_attrs = rpc_attributes(full_method)
        metric_attrs = {"rpc.system.name": "grpc", "rpc.method": full_method}
        start = time.perf_counter()
        self._active.add(1, metric_attrs)
        code = grpc.StatusCode.OK
        with self._tracer.start_as_current_span(
            full_method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={**rpc_attrs, **_peer_attributes(context)},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
                code = context.code() or grpc.StatusCode.OK
            except grpc.aio.AbortError:  # the ErrorInterceptor (or a servicer) set the status
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                raise
            except BaseException as exc:
                code = grpc.StatusCode.UNKNOWN
                span.record_exception(exc)
                raise
            finally:
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                span.set_attribute("rpc.response.status_code", code.name)
                if code is not grpc.StatusCode.OK:
                    span.set_attribute("error.type", code.name)
                if code in SERVER_ERROR_CODES:
                    span.set_status(Status(StatusCode.ERROR, _details(context) or code.name))
                attrs = {**metric_attrs, "rpc.response.status_code": code.name}
                self._active.add(-1, metric_attrs)
                self._requests.add(1, attrs)
                if code is not grpc.StatusCode.OK:
                    self._errors.add(1, attrs)
                self._duration.record(time.perf_counter() - start, attrs)


def _details(context) -> str:
    try:
        return context.details() or ""
    except Exception:
        return ""
