"""Telemetry test helpers: per-service providers with in-memory exporters, a local OTLP/gRPC receiver, and
one plain shape for spans from either (so the trace assertions are written once)."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc


def in_memory_telemetry(service: str, spans, reader=None):
    """A service's Telemetry exporting spans to `spans` (an InMemorySpanExporter) and metrics to `reader`."""
    from internvl_serve.common.telemetry import TelemetrySettings, setup_telemetry

    # env={}: whatever OTEL_* the test runner has, these providers export only to the test's exporter/reader
    return setup_telemetry(
        service,
        span_exporters=[spans],
        metric_readers=[reader] if reader else [],
        settings=TelemetrySettings.from_env(service, env={}),
    )


@dataclass
class SpanRecord:
    name: str
    kind: str  # "SERVER", "CLIENT", "INTERNAL", ...
    trace_id: str
    span_id: str
    parent_id: str | None
    service: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # linked span ids
    status: str = "UNSET"  # "UNSET", "OK", "ERROR"


def from_sdk(span) -> SpanRecord:
    """An opentelemetry.sdk ReadableSpan (InMemorySpanExporter) as a SpanRecord."""
    ctx, parent = span.get_span_context(), span.parent
    return SpanRecord(
        name=span.name,
        kind=span.kind.name,
        trace_id=f"{ctx.trace_id:032x}",
        span_id=f"{ctx.span_id:016x}",
        parent_id=None if parent is None else f"{parent.span_id:016x}",
        service=str(span.resource.attributes.get("service.name")),
        attributes=dict(span.attributes or {}),
        events=[(e.name, dict(e.attributes or {})) for e in span.events],
        links=[f"{link.context.span_id:016x}" for link in span.links],
        status=span.status.status_code.name,
    )


def _any_value(v) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attrs(kvs) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs}


_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def from_otlp(requests) -> list[SpanRecord]:
    """Spans of OTLP ExportTraceServiceRequests as SpanRecords."""
    out = []
    for request in requests:
        for rs in request.resource_spans:
            service = str(_attrs(rs.resource.attributes).get("service.name"))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append(
                        SpanRecord(
                            name=s.name,
                            kind=_KINDS.get(s.kind, str(s.kind)),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex() or None,
                            service=service,
                            attributes=_attrs(s.attributes),
                            events=[(e.name, _attrs(e.attributes)) for e in s.events],
                            links=[link.span_id.hex() for link in s.links],
                            status=_STATUS.get(s.status.code, "UNSET"),
                        )
                    )
    return out


def metric_points(requests) -> dict[str, list[tuple[str, dict[str, Any], Any]]]:
    """OTLP ExportMetricsServiceRequests as {metric name: [(service, attributes, data point)]}."""
    out: dict[str, list] = {}
    for request in requests:
        for rm in request.resource_metrics:
            service = str(_attrs(rm.resource.attributes).get("service.name"))
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    data = getattr(m, m.WhichOneof("data"))
                    for p in data.data_points:
                        out.setdefault(m.name, []).append((service, _attrs(p.attributes), p))
    return out


class OtlpReceiver:
    """An OTLP/gRPC collector stand-in on a free loopback port: keeps every trace and metrics export."""

    def __init__(self):
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.trace_requests: list = []
        self.metric_requests: list = []
        self._lock = threading.Lock()
        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                with receiver._lock:
                    receiver.trace_requests.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):
                with receiver._lock:
                    receiver.metric_requests.append(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[SpanRecord]:
        with self._lock:
            return from_otlp(list(self.trace_requests))

    def metrics(self) -> dict[str, list]:
        with self._lock:
            return metric_points(list(self.metric_requests))

    def stop(self) -> None:
        self.server.stop(0)


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05):
    """Poll until predicate() is truthy (spans end and are exported just after a reply is sent)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


def only(spans: list[SpanRecord], **match) -> SpanRecord:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (
        f"expected one span with {match}, found {len(found)}: {[(s.name, s.kind, s.service) for s in spans]}"
    )
    return found[0]


def children(spans: list[SpanRecord], parent: SpanRecord, **match) -> list[SpanRecord]:
    return [s for s in spans if s.parent_id == parent.span_id and all(getattr(s, k) == v for k, v in match.items())]


def assert_no_text(spans: list[SpanRecord], secret: str) -> None:
    """`secret` appears in no span name, attribute or event attribute."""
    for s in spans:
        values = [s.name, *map(str, s.attributes.values())]
        for name, attrs in s.events:
            values += [name, *map(str, attrs.values())]
        leaked = [v for v in values if secret in v]
        assert not leaked, f"span {s.name} ({s.service}) carries the prompt text: {leaked[:1]}"
