"""Which exporters the OTEL_* environment selects (no collector: none), the content opt-in, the resource's
service name (ours by default, OTEL_SERVICE_NAME wins), and a shutdown bounded when the collector is down."""

from __future__ import annotations

import logging
import time

import pytest

from internvl_serve.common.telemetry import TelemetrySettings, setup_telemetry


@pytest.mark.parametrize(
    ("env", "traces", "metrics"),
    [
        ({}, (), ()),  # no endpoint: export nothing, log no connection errors
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, ("otlp",), ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, ("otlp",), ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_METRICS_EXPORTER": "none"}, ("otlp",), ()),
        ({"OTEL_TRACES_EXPORTER": "console,otlp, console"}, ("console", "otlp"), ()),
    ],
)
def test_exporters_from_env(env, traces, metrics):
    settings = TelemetrySettings.from_env("internvl-encoder", env)
    assert (settings.traces_exporters, settings.metrics_exporters) == (traces, metrics)
    assert settings.traces_protocol == "grpc"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"INTERNVL_TRACE_CONTENT": "1"}, True),
        ({"INTERNVL_TRACE_CONTENT": "0"}, False),
        ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}, True),
    ],
)
def test_prompt_text_is_opt_in(env, expected):
    assert TelemetrySettings.from_env("internvl-decoder", env).capture_content is expected


def test_service_name_defaults_per_service_and_env_overrides(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    t = setup_telemetry("internvl-decoder", settings=TelemetrySettings.from_env("internvl-decoder", {}))
    attrs = t.tracer_provider.resource.attributes
    assert attrs["service.name"] == "internvl-decoder" and attrs["deployment.environment"] == "test"
    t.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "vision-eu-1")
    t = setup_telemetry("internvl-encoder", settings=TelemetrySettings.from_env("internvl-encoder", {}))
    assert t.service_name == "vision-eu-1"
    t.shutdown()


def test_unsupported_exporter_is_skipped_not_fatal(caplog):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    settings = TelemetrySettings.from_env(
        "x",
        {"OTEL_TRACES_EXPORTER": "zipkin", "OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"},
    )
    spans = InMemorySpanExporter()
    with caplog.at_level(logging.ERROR, logger="internvl_serve.telemetry"):
        t = setup_telemetry("x", settings=settings, span_exporters=[spans])  # does not raise
    try:
        # each bad exporter is logged, naming its signal and the value, and skipped
        logged = [r for r in caplog.records if r.getMessage() == "telemetry_config_error"]
        errors = {r.fields["signal"]: r.fields["error"] for r in logged}
        assert set(errors) == {"traces", "metrics"}, errors
        assert "zipkin" in errors["traces"] and "thrift" in errors["metrics"]
        # and telemetry still works: the span reaches the exporter the caller passed
        with t.tracer().start_as_current_span("works"):
            pass
        assert [s.name for s in spans.get_finished_spans()] == ["works"]
    finally:
        t.shutdown()


def test_shutdown_is_bounded_when_the_collector_is_down(monkeypatch):
    from internvl_testing.redis_server import free_port

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # the exporter's own retries end soon after the test
    t = setup_telemetry("x")
    with t.tracer().start_as_current_span("lost"):
        pass
    started = time.monotonic()
    t.shutdown(timeout_s=0.5)
    assert time.monotonic() - started < 2.0  # the exporter alone would retry for OTEL_EXPORTER_OTLP_TIMEOUT
    t.shutdown()  # idempotent
    time.sleep(2.5)  # let the abandoned export give up here rather than log during later tests
