"""Prometheus /metrics without a model: the reader sits on the MeterProvider with no OTLP export configured, each
service has its own registry (never prometheus_client's global one), a ServiceServer serves it from start to
stop on its --host and logs the bound port, and bad or busy --metrics-port values are refused."""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.error
import urllib.request

import prometheus_client
import pytest

from internvl_serve.cli import main
from internvl_serve.common.errors import StartupError
from internvl_serve.common.prometheus import MetricsServer
from internvl_serve.common.service_lifecycle import ServiceServer
from internvl_serve.common.telemetry import TelemetrySettings, setup_telemetry
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.encoder.config import EncoderConfig
from internvl_testing.prometheus_scrape import scrape
from internvl_testing.servers import fake_service_config


def _telemetry(name: str, **kwargs):
    return setup_telemetry(name, settings=TelemetrySettings.from_env(name, env={}), **kwargs)  # no OTEL_* at all


def test_the_prometheus_reader_collects_with_no_otlp_export_into_the_services_own_registry():
    encoder, decoder = _telemetry("internvl-encoder", prometheus=True), _telemetry("internvl-decoder", prometheus=True)
    try:
        encoder.meter().create_counter("internvl.test.encoded", unit="{tile}").add(3)
        decoder.meter().create_histogram("internvl.test.latency", unit="s").record(0.2)
        enc = prometheus_client.generate_latest(encoder.prometheus_registry).decode()
        dec = prometheus_client.generate_latest(decoder.prometheus_registry).decode()
        assert "internvl_test_encoded_total" in enc and "internvl_test_latency" not in enc
        assert "internvl_test_latency_seconds_count" in dec and "internvl_test_encoded" not in dec
        assert 'service_name="internvl-encoder"' in enc and 'service_name="internvl-decoder"' in dec  # target_info
        assert "process_resident_memory_bytes" in enc
        assert "internvl_test" not in prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    finally:
        encoder.shutdown()
        decoder.shutdown()
    assert _telemetry("x").prometheus_registry is None  # off unless asked for


def test_metrics_server_serves_its_registry_until_stopped():
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("things", "Things", registry=registry).inc(2)
    server = MetricsServer(registry, "127.0.0.1", 0)
    server.start()
    try:
        assert scrape(server.port)["things_total"][0].value == 2
    finally:
        server.stop()
    server.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        scrape(server.port)


def _config(metrics_port):
    return fake_service_config(metrics_port=metrics_port)


class FakeServer(ServiceServer):
    kind = "fake"

    async def load(self) -> None:
        self.telemetry.meter(self.scope).create_counter("internvl.fake.loads").add(1)


def test_a_service_serves_metrics_on_a_free_port_from_start_to_stop_and_logs_it(caplog):
    async def run():
        server = FakeServer(_config(0), ["fake.v1.FakeService"])
        assert server.metrics_port not in (None, 0)
        await server.start()
        samples = await asyncio.to_thread(scrape, server.metrics_port)
        await server.stop()
        return server, samples

    with caplog.at_level(logging.INFO, logger="internvl_serve.fake"):
        server, samples = asyncio.run(run())
    assert samples["target_info"][0].labels["service_name"] == "internvl-fake"
    assert samples["internvl_fake_loads_total"][0].value == 1  # the server's own meter provider
    serving = next(r for r in caplog.records if r.getMessage() == "fake_serving")
    assert serving.fields["metrics_port"] == server.metrics_port and serving.fields["port"] == server.port
    with pytest.raises(urllib.error.URLError):  # closed on stop
        scrape(server.metrics_port)


def _build(*args):
    async def build():
        return FakeServer(*args)  # grpc.aio: inside a running loop

    return asyncio.run(build())


def test_without_a_metrics_port_nothing_is_served():
    server = _build(_config(None), ["fake.v1.FakeService"])
    assert server.metrics_server is None and server.metrics_port is None
    assert server.telemetry.prometheus_registry is None


def test_a_busy_metrics_port_is_a_startup_error_naming_the_flag():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StartupError, match=rf"--metrics-port: cannot listen on 127.0.0.1:{port}"):
            _build(_config(port), ["fake.v1.FakeService"])


def test_a_given_telemetry_without_the_prometheus_reader_is_refused():
    with pytest.raises(ValueError, match="no Prometheus reader"):
        _build(_config(0), ["fake.v1.FakeService"], _telemetry("internvl-fake"))


@pytest.mark.parametrize("config_type", [EncoderConfig, DecoderConfig])
@pytest.mark.parametrize("port", [-1, 65536])
def test_a_metrics_port_out_of_range_is_refused_by_the_config(config_type, port):
    with pytest.raises(ValueError, match=rf"--metrics-port must lie in \[0, 65535\], got {port}"):
        config_type(model="m", metrics_port=port)


@pytest.mark.parametrize("service", ["encoder", "decoder"])
@pytest.mark.parametrize(
    "value, message", [("70000", "--metrics-port must lie in [0, 65535]"), ("http", "invalid int value")]
)
def test_a_bad_metrics_port_flag_is_a_usage_error(service, value, message, capsys):
    extra = ["--encoder", "127.0.0.1:1"] if service == "decoder" else []
    with pytest.raises(SystemExit) as exit_:
        main([service, "--model", "m", *extra, "--metrics-port", value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_bad_metrics_port_in_the_environment_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("INTERNVL_METRICS_PORT", "-5")
    with pytest.raises(SystemExit) as exit_:
        main(["encoder", "--model", "m"])
    assert exit_.value.code == 2 and "--metrics-port must lie in [0, 65535], got -5" in capsys.readouterr().err
