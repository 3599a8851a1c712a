"""Prometheus `/metrics` for one service (--metrics-port): OpenTelemetry's PrometheusMetricReader on the service's
MeterProvider, collecting into the service's own CollectorRegistry, served by prometheus_client's WSGI app on a
thread of its own.

Per service, not per process: prometheus_client's default REGISTRY is global, and tests run an encoder and a
decoder in one process, so each service gets a `CollectorRegistry` of its own (the reader's `registry=`), with
the OTel metrics (names translated by the exporter: dots to underscores, `_seconds` for unit s, `_total` for
counters), the `target_info` of the service's resource, and the process's own metrics (CPU, memory, GC).
"""

from __future__ import annotations

import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer


def prometheus_reader() -> tuple[PrometheusMetricReader, CollectorRegistry]:
    """A reader for a MeterProvider, and the registry it collects into (what the HTTP server serves)."""
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    return PrometheusMetricReader(registry=registry), registry


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # no access log line per scrape
        pass


class MetricsServer:
    """`registry` over HTTP on host:port (0 picks a free port): bound here, so a port in use fails before the
    service listens; `start()` serves it on a daemon thread, `stop()` closes it. Any path answers (/metrics)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        family, address = _listen_address(host, port)
        server_class = type("MetricsHTTPServer", (ThreadingWSGIServer,), {"address_family": family})
        self._httpd = make_server(address, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
        self.port: int = self._httpd.server_port
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="prometheus-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Blocking (up to the poll interval): call it off the event loop. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._httpd.shutdown()  # only once serve_forever runs: it would wait forever before that
            thread.join(5)
        self._httpd.server_close()


def _listen_address(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """(family, address) to bind for the service's --host, as gRPC takes it ("[::]", "" for every interface)."""
    host = host.strip("[]") or "0.0.0.0"
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return family, sockaddr[0]
