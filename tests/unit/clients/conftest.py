"""A real HTTP server on 127.0.0.1 (http.server in a thread) that serves test routes for url fetching."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class _Handler(BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.hits.append(self.path)
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        route(self)

    def log_message(self, *args):  # keep test output quiet
        pass


class LocalHttp:
    """Routes: path -> bytes (200 with Content-Length) or a callable(handler) for anything else."""

    def __init__(self):
        self.routes: dict = {}
        handler = type("Handler", (_Handler,), {"routes": self.routes})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.hits = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hits(self) -> list[str]:
        return self.server.hits

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def add(self, path: str, body) -> str:
        if isinstance(body, bytes):
            self.routes[path] = lambda h, b=body: send_bytes(h, b)
        else:
            self.routes[path] = body
        return self.url(path)

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def send_bytes(h, body: bytes, **kwargs) -> None:
        send_bytes(h, body, **kwargs)

    @staticmethod
    def redirect(h, location: str) -> None:
        redirect(h, location)


def send_bytes(h, body: bytes, *, length: bool = True, delay_s: float = 0.0, status: int = 200) -> None:
    h.send_response(status)
    if length:
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if delay_s:
        time.sleep(delay_s)
    h.wfile.write(body)


def redirect(h, location: str) -> None:
    h.send_response(302)
    h.send_header("Location", location)
    h.send_header("Content-Length", "0")
    h.end_headers()


@pytest.fixture
def http(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # talk to 127.0.0.1 directly
    server = LocalHttp()
    yield server
    server.close()
