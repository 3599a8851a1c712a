"""The client's CLIENT spans and trace propagation: the call's metadata carries the span's context; with no
tracer provider configured a caller's active trace still propagates; without opentelemetry nothing is sent."""

from __future__ import annotations

import grpc

from internvl_serve.clients import tracing


def _traceparent(metadata) -> str:
    return dict(metadata or ())["traceparent"]


def test_span_context_goes_into_the_metadata_and_status_onto_the_span():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = tracing.client_span(tracing.get_tracer(provider), tracing.GENERATE, "decoder.local:50052")
    ctx = span.span.get_span_context()
    version, trace_id, span_id, flags = _traceparent(span.metadata).split("-")
    assert (trace_id, span_id) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}") and int(flags, 16) & 1  # sampled
    span.finish(grpc.StatusCode.RESOURCE_EXHAUSTED)
    span.finish(grpc.StatusCode.OK)  # a second finish is a no-op
    (done,) = exporter.get_finished_spans()
    assert done.name == "internvl.v1.GenerationService/Generate" and done.kind.name == "CLIENT"
    assert done.attributes["server.address"] == "decoder.local" and done.attributes["server.port"] == 50052
    assert done.attributes["rpc.response.status_code"] == "RESOURCE_EXHAUSTED"
    assert done.status.status_code.name == "ERROR"


def test_without_a_provider_the_callers_trace_still_propagates():
    from opentelemetry import context, trace

    caller = trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(1))
    token = context.attach(trace.set_span_in_context(trace.NonRecordingSpan(caller)))
    try:
        span = tracing.client_span(tracing.get_tracer(trace.NoOpTracerProvider()), tracing.ENCODE, "enc:1")
    finally:
        context.detach(token)
    assert _traceparent(span.metadata) == f"00-{0xABC:032x}-{0xDEF:016x}-01"
    with span:  # finishing a no-op span is harmless
        pass
    assert tracing.client_span(tracing.get_tracer(trace.NoOpTracerProvider()), tracing.ENCODE, "enc:1").metadata is None


def test_without_opentelemetry_calls_carry_no_metadata(monkeypatch):
    monkeypatch.setattr(tracing, "trace", None)
    tracer = tracing.get_tracer()
    assert tracer is None and tracing.current_context() is None
    span = tracing.client_span(tracer, tracing.GENERATE, "localhost:50052")
    assert span.metadata is None
    with span:
        span.set_attributes({"gen_ai.usage.output_tokens": 3})
