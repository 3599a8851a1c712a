"""Traces of the `internvl-client` command's own calls, configured from the standard OTEL_* environment.

Client-side only (the client imports nothing from services/): a span is exported when OTEL_TRACES_EXPORTER
names `otlp` or `console`, or when it is unset and an OTLP endpoint is (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). The OTLP exporter reads its endpoint, headers, TLS and timeout from
OTEL_EXPORTER_OTLP_* itself; OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES override the service name.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

SERVICE_NAME = "internvl-client"


def trace_exporters(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The span exporters the environment asks for ("otlp", "console"); empty: none."""
    env = os.environ if env is None else env
    value = env.get("OTEL_TRACES_EXPORTER")
    if value is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return ("otlp",) if endpoint else ()
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    return tuple(dict.fromkeys(n for n in names if n != "none"))


class CliTracing:
    """A tracer provider for one command run; `shutdown` exports its spans, bounded in time."""

    def __init__(self, tracer_provider: Any):
        self.tracer_provider = tracer_provider

    def shutdown(self, timeout_s: float = 5.0) -> None:
        # With the collector down the exporter retries for up to OTEL_EXPORTER_OTLP_TIMEOUT; a command
        # must not hang on that, so what is not exported in time is dropped.
        worker = threading.Thread(target=self.tracer_provider.shutdown, name="otel-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)


def tracing_from_env(env: Mapping[str, str] | None = None) -> CliTracing | None:
    """None when the environment asks for no traces or opentelemetry's SDK is not installed."""
    exporters = trace_exporters(env)
    if not exporters:
        return None
    try:
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return None
    resource = Resource.create({"service.name": SERVICE_NAME, **OTELResourceDetector().detect().attributes})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for name in exporters:
        exporter = _exporter(name, env)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    return CliTracing(provider)


def _exporter(name: str, env: Mapping[str, str] | None):
    env = os.environ if env is None else env
    try:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter()
        if name != "otlp":
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not supported (otlp, console or none)")
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
        if protocol.strip() == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    except (ImportError, ValueError) as exc:  # telemetry never stops the command
        print(f"internvl-client: traces not exported: {exc}", file=sys.stderr)
        return None
