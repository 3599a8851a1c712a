"""CLIENT spans for the calls a service makes to another (the decoder's Encode calls), with the span's
trace context injected into the call's metadata so the callee's SERVER span joins the same trace.

The client library has its own helper (clients/tracing.py, optional opentelemetry); services always
have the SDK, so this one is simpler and they import nothing from clients/.
"""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode


def rpc_attributes(full_method: str) -> dict[str, Any]:
    """Semantic-convention attributes of a gRPC call, `full_method` as "package.Service/Method"."""
    service = full_method.rpartition("/")[0]
    # rpc.system.name and a fully-qualified rpc.method are the current conventions; rpc.system and
    # rpc.service are kept for the tools (Jaeger, older collectors) that still read them.
    return {"rpc.system.name": "grpc", "rpc.system": "grpc", "rpc.method": full_method, "rpc.service": service}


def _server_attributes(target: str) -> dict[str, Any]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return {"server.address": target}
    return {"server.address": host.strip("[]"), "server.port": int(port)}


class OutboundSpan:
    """One outgoing call's span: `metadata` goes into the call, `finish` records the status and ends it."""

    def __init__(self, span: trace.Span, metadata: tuple[tuple[str, str], ...] | None):
        self.span = span
        self.metadata = metadata
        self._ended = False

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self.span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def finish(self, code: grpc.StatusCode | None, error: BaseException | None = None) -> None:
        """End with gRPC status `code`; None: the caller cancelled or abandoned the call."""
        if self._ended:
            return
        self._ended = True
        code = grpc.StatusCode.CANCELLED if code is None else code
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        self.span.set_attribute("rpc.response.status_code", code.name)
        if code is not grpc.StatusCode.OK:  # on the calling side every non-OK status is an error
            self.span.set_attribute("error.type", code.name)
            details = error.details() if isinstance(error, grpc.RpcError) and hasattr(error, "details") else None
            self.span.set_status(Status(StatusCode.ERROR, details or code.name))
        self.span.end()


def outbound_span(
    tracer: trace.Tracer, full_method: str, target: str, attributes: dict[str, Any] | None = None
) -> OutboundSpan:
    """Start a CLIENT span named `full_method` under the current context, and the metadata carrying it.
    The span is not made current, so it may end in another frame."""
    attrs = {**rpc_attributes(full_method), **_server_attributes(target), **(attributes or {})}
    span = tracer.start_span(
        full_method, kind=SpanKind.CLIENT, attributes={k: v for k, v in attrs.items() if v is not None}
    )
    if span.get_span_context().is_valid:
        ctx = trace.set_span_in_context(span)
    else:  # a no-op span has no context of its own: pass on whatever trace the caller is part of
        ctx = otel_context.get_current()
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return OutboundSpan(span, tuple(carrier.items()) or None)
