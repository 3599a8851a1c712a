"""CLIENT spans for gRPC calls, with the trace context sent in the call's metadata (W3C traceparent).

Optional: without opentelemetry installed every helper is a no-op and calls carry no extra metadata.
With opentelemetry but no tracer provider configured, spans are the API's no-op ones, and a trace context
already active in the caller (for example from its own incoming request) is still propagated.

    span = client_span(tracer, "internvl.v1.GenerationService/Generate", "localhost:50051")
    try:
        reply = stub.Generate(request, metadata=span.metadata)
    except grpc.RpcError as exc:
        span.finish(exc.code(), exc)
        raise
    span.finish(grpc.StatusCode.OK)
"""

from __future__ import annotations

from typing import Any

import grpc

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the client library works without opentelemetry
    trace = None

SCOPE = "internvl_serve.clients"
GENERATE = "internvl.v1.GenerationService/Generate"
GENERATE_STREAM = "internvl.v1.GenerationService/GenerateStream"
ENCODE = "internvl.v1.VisionEncoderService/Encode"


def get_tracer(tracer_provider: Any = None) -> Any:
    """A tracer from `tracer_provider` (default: the global one); None without opentelemetry."""
    if trace is None:
        return None
    return trace.get_tracer(SCOPE, tracer_provider=tracer_provider)


def current_context() -> Any:
    """The caller's trace context, to hand to work that runs in another thread; None without opentelemetry."""
    return None if trace is None else otel_context.get_current()


def rpc_attributes(full_method: str) -> dict[str, Any]:
    """Semantic-convention attributes of a gRPC call, `full_method` as "package.Service/Method"."""
    service = full_method.rpartition("/")[0]
    # rpc.system.name and a fully-qualified rpc.method are the current conventions; rpc.system and
    # rpc.service are kept for the tools (Jaeger, older collectors) that still read them.
    return {"rpc.system.name": "grpc", "rpc.system": "grpc", "rpc.method": full_method, "rpc.service": service}


def _peer_attributes(target: str) -> dict[str, Any]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return {"server.address": target}
    return {"server.address": host.strip("[]"), "server.port": int(port)}


class ClientSpan:
    """One outgoing call's span. `metadata` goes into the call; `finish` records its status and ends it.
    As a context manager it finishes with OK, the gRPC error's status, or CANCELLED for anything else."""

    def __init__(self, span: Any, metadata: tuple[tuple[str, str], ...] | None):
        self.span = span
        self.metadata = metadata
        self._ended = False

    def __enter__(self) -> ClientSpan:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.finish(grpc.StatusCode.OK)
        elif isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
            self.finish(exc.code(), exc)
        else:  # the caller went away (cancelled, left a stream early, interrupted)
            self.finish(None)

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        if self.span is not None:
            self.span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def finish(self, code: grpc.StatusCode | None = None, error: BaseException | None = None) -> None:
        """End the span with gRPC status `code` (None: the call was cancelled or abandoned by the caller)."""
        if self.span is None or self._ended:
            return
        self._ended = True
        code = grpc.StatusCode.CANCELLED if code is None else code
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        self.span.set_attribute("rpc.response.status_code", code.name)
        if code is not grpc.StatusCode.OK:  # on the client every non-OK status is an error
            self.span.set_attribute("error.type", code.name)
            details = error.details() if isinstance(error, grpc.RpcError) and hasattr(error, "details") else None
            self.span.set_status(Status(StatusCode.ERROR, details or code.name))
        self.span.end()


def client_span(
    tracer: Any, full_method: str, target: str, attributes: dict[str, Any] | None = None, parent: Any = None
) -> ClientSpan:
    """Start a CLIENT span named `full_method` (a child of `parent`, default the current context) and the
    metadata carrying its context. The span is not made current, so it can end in another frame or thread."""
    if tracer is None:
        return ClientSpan(None, None)
    attrs = {**rpc_attributes(full_method), **_peer_attributes(target), **(attributes or {})}
    attrs = {k: v for k, v in attrs.items() if v is not None}
    span = tracer.start_span(full_method, context=parent, kind=SpanKind.CLIENT, attributes=attrs)
    if span.get_span_context().is_valid:
        ctx = trace.set_span_in_context(span, parent)
    else:  # a no-op span has no context of its own: pass on whatever trace the caller is part of
        ctx = parent or otel_context.get_current()
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return ClientSpan(span, tuple(carrier.items()) or None)


def request_attributes(params: Any, stream: bool) -> dict[str, Any]:
    """GenAI attributes of a generation call, from its SamplingParams proto (0 = server default: not sent)."""
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.stream": stream,
        "gen_ai.request.max_tokens": params.max_new_tokens or None,
    }


def generation_attributes(reply: Any, stream: bool) -> dict[str, Any]:
    """GenAI attributes from a GenerateResponse (or the last GenerateStreamResponse)."""
    from internvl_serve.clients.results import _FINISH

    finish = _FINISH.get(reply.finish_reason)
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.stream": stream,
        "gen_ai.response.model": reply.model or None,
        "gen_ai.response.id": reply.request_id or None,
        "gen_ai.response.finish_reasons": [finish] if finish else None,
        "gen_ai.usage.input_tokens": reply.usage.input_tokens,
        "gen_ai.usage.output_tokens": reply.usage.output_tokens,
        "internvl.image_tokens": reply.usage.image_tokens,
        "internvl.media_cache_hits": reply.usage.media_cache_hits,
    }
