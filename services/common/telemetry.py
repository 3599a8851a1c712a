"""OpenTelemetry for our services: tracer and meter providers built from the standard OTEL_* environment.

The service config carries a `TelemetrySettings`, read from the environment once, where the config is
built from the command line (`TelemetrySettings.from_env`); `setup_telemetry(settings=config.telemetry)`
gives a `Telemetry` holding that service's providers; the server passes it down through constructors (no
global provider is set, so an encoder and a decoder in one process keep their own `service.name`) and shuts
it down (flushing spans and metrics) when it stops.

What the SDK reads itself: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (they override our default
service name), OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, OTEL_BSP_* (batching), OTEL_METRIC_EXPORT_*,
OTEL_EXPORTER_OTLP_* (endpoint, insecure, headers, timeout, compression, certificates), OTEL_SDK_DISABLED,
OTEL_PROPAGATORS (W3C tracecontext + baggage by default). What is read here:

- OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER: comma-separated `otlp`, `console` or `none`. Default:
  `otlp` when an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT or the per-signal one), else `none`,
  so a run without a collector exports nothing and logs no connection errors.
- OTEL_EXPORTER_OTLP_PROTOCOL (and the per-signal ones): `grpc` (default); `http/protobuf` only where
  opentelemetry-exporter-otlp-proto-http is installed.
- INTERNVL_TRACE_CONTENT=1 (or OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true): put prompt and
  completion text on spans. Off by default: no prompt text in spans (DESIGN.md section 7.8).

Prometheus (`--metrics-port`, not an OTEL_* variable): `setup_telemetry(prometheus=True)` adds a
PrometheusMetricReader (common/prometheus.py) to the MeterProvider, whatever the OTLP settings say, and the
Telemetry holds the registry it collects into (`prometheus_registry`), which the server serves over HTTP.

A misconfigured exporter is logged (`telemetry_config_error`) and skipped: telemetry never stops a service.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

from internvl_serve.common.logs import log_event

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("internvl_serve.telemetry")

ENCODER_SERVICE = "internvl-encoder"
DECODER_SERVICE = "internvl-decoder"
CLIENT_SERVICE = "internvl-client"
INSTRUMENTATION_SCOPE = "internvl_serve"
CONTENT_ENV = "INTERNVL_TRACE_CONTENT"
GENAI_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class TelemetrySettings:
    """What this module decides from the environment (the SDK reads the rest itself)."""

    service_name: str  # the default; OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES override it
    traces_exporters: tuple[str, ...]  # "otlp", "console"; empty: none
    metrics_exporters: tuple[str, ...]
    traces_protocol: str
    metrics_protocol: str
    capture_content: bool

    @classmethod
    def off(cls, service_name: str) -> TelemetrySettings:
        """Export nothing (a config built in code, not from the environment)."""
        return cls(service_name, (), (), "grpc", "grpc", False)

    @classmethod
    def from_env(cls, service_name: str, env: Mapping[str, str] | None = None) -> TelemetrySettings:
        env = os.environ if env is None else env
        base_protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").strip() or "grpc"
        return cls(
            service_name=service_name,
            traces_exporters=_exporters(env, "TRACES"),
            metrics_exporters=_exporters(env, "METRICS"),
            traces_protocol=env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", base_protocol).strip(),
            metrics_protocol=env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", base_protocol).strip(),
            capture_content=any(env.get(name, "").lower() in _TRUE for name in (CONTENT_ENV, GENAI_CONTENT_ENV)),
        )


def _exporters(env: Mapping[str, str], signal: str) -> tuple[str, ...]:
    value = env.get(f"OTEL_{signal}_EXPORTER")
    if value is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        return ("otlp",) if endpoint else ()
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    return tuple(dict.fromkeys(n for n in names if n != "none"))


class Telemetry:
    """A service's tracer and meter providers, and whether spans may carry prompt/completion text."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider,
        meter_provider: metrics.MeterProvider,
        *,
        capture_content: bool = False,
        service_name: str = "",
        prometheus_registry: CollectorRegistry | None = None,
    ):
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.capture_content = capture_content
        self.service_name = service_name
        self.prometheus_registry = prometheus_registry  # what /metrics serves (None: no Prometheus reader)
        self._shutdown_lock = threading.Lock()
        self._shut_down = False

    @classmethod
    def disabled(cls) -> Telemetry:
        """No spans, no metrics (the API's no-op providers)."""
        return cls(trace.NoOpTracerProvider(), metrics.NoOpMeterProvider())

    def tracer(self, name: str = INSTRUMENTATION_SCOPE) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str = INSTRUMENTATION_SCOPE) -> metrics.Meter:
        return self.meter_provider.get_meter(name)

    def force_flush(self, timeout_s: float = 10.0) -> None:
        for provider in (self.tracer_provider, self.meter_provider):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush(int(timeout_s * 1000))

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Export what is buffered and stop the exporters (idempotent). Blocking: call it off the loop.

        Bounded by `timeout_s`: with the collector down the SDK would retry each signal for up to
        OTEL_EXPORTER_OTLP_TIMEOUT (10 s), longer than a container's stop grace period; what is not exported
        by then is dropped (the exporting threads are daemons and die with the process)."""
        with self._shutdown_lock:
            if self._shut_down:
                return
            self._shut_down = True
        worker = threading.Thread(target=self._shutdown_providers, name="telemetry-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            log_event(log, "telemetry_shutdown_timeout", logging.WARNING, timeout_s=timeout_s)

    def _shutdown_providers(self) -> None:
        for provider in (self.tracer_provider, self.meter_provider):
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                try:
                    stop()
                except Exception as exc:  # a collector that went away must not fail the shutdown
                    log_event(log, "telemetry_shutdown_error", logging.WARNING, error=repr(exc)[:300])


def setup_telemetry(
    service_name: str | None = None,
    *,
    span_exporters: Sequence[SpanExporter] = (),
    metric_readers: Sequence[MetricReader] = (),
    capture_content: bool | None = None,
    settings: TelemetrySettings | None = None,
    prometheus: bool = False,
) -> Telemetry:
    """Providers for one service, exporting where `settings` say (default: read from the OTEL_* environment).

    `span_exporters` and `metric_readers` are the test hook: exporters get a SimpleSpanProcessor (each span
    exported as it ends), readers are added as they are (for example an InMemoryMetricReader), both on top
    of whatever the environment configures. `prometheus`: also a PrometheusMetricReader, collecting into
    the Telemetry's own `prometheus_registry` (the service's --metrics-port), even when nothing is exported.
    """
    if settings is None:
        if service_name is None:
            raise ValueError("setup_telemetry needs a service_name or settings")
        settings = TelemetrySettings.from_env(service_name)
    resource = _resource(settings.service_name)
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in _span_exporters(settings):
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    for exporter in span_exporters:
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    readers, registry = _metric_readers(settings, prometheus)
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[*readers, *metric_readers], shutdown_on_exit=False
    )
    content = settings.capture_content if capture_content is None else capture_content
    telemetry = Telemetry(
        tracer_provider,
        meter_provider,
        capture_content=content,
        service_name=str(resource.attributes.get("service.name", "")),
        prometheus_registry=registry,
    )
    if settings.traces_exporters or settings.metrics_exporters or prometheus:
        log_event(
            log,
            "telemetry_exporting",
            service=telemetry.service_name,
            traces=list(settings.traces_exporters),
            metrics=[*settings.metrics_exporters, *(["prometheus"] if prometheus else [])],
            capture_content=content,
        )
    return telemetry


def _resource(service_name: str) -> Resource:
    """Our defaults (service.name, service.version), overridden by OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES."""
    defaults = {"service.name": service_name, "service.namespace": "internvl", "service.version": _version()}
    return Resource.create({**defaults, **OTELResourceDetector().detect().attributes})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("internvl-serve")
    except PackageNotFoundError:
        return "0+unknown"


def _span_exporters(settings: TelemetrySettings) -> list[SpanExporter]:
    out: list[SpanExporter] = []
    for name in settings.traces_exporters:
        try:
            if name == "otlp":
                out.append(_otlp("trace", settings.traces_protocol))
            elif name == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                out.append(ConsoleSpanExporter())
            else:
                raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not supported (otlp, console or none)")
        except Exception as exc:
            log_event(log, "telemetry_config_error", logging.ERROR, signal="traces", error=str(exc)[:300])
    return out


def _metric_readers(
    settings: TelemetrySettings, prometheus: bool
) -> tuple[list[MetricReader], CollectorRegistry | None]:
    """The readers `settings` ask for, plus the Prometheus reader (and its registry) when `prometheus`."""
    out: list[MetricReader] = []
    registry = None
    if prometheus:
        from internvl_serve.common.prometheus import prometheus_reader  # imported only when asked for

        reader, registry = prometheus_reader()
        out.append(reader)
    for name in settings.metrics_exporters:
        try:
            if name == "otlp":
                out.append(PeriodicExportingMetricReader(_otlp("metrics", settings.metrics_protocol)))
            elif name == "console":
                from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

                out.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
            else:
                raise ValueError(f"OTEL_METRICS_EXPORTER={name!r} is not supported (otlp, console or none)")
        except Exception as exc:
            log_event(log, "telemetry_config_error", logging.ERROR, signal="metrics", error=str(exc)[:300])
    return out, registry


def _otlp(signal: str, protocol: str):
    """The OTLP exporter for `signal`; it reads its endpoint, headers, TLS and timeout from OTEL_EXPORTER_OTLP_*."""
    if protocol == "grpc":
        if signal == "trace":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    if protocol == "http/protobuf":
        try:
            if signal == "trace":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

                return HttpSpanExporter()
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

            return HttpMetricExporter()
        except ImportError:
            raise ValueError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf needs opentelemetry-exporter-otlp-proto-http; "
                "install it or use grpc (port 4317)"
            ) from None
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported (grpc or http/protobuf)")
