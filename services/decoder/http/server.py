"""uvicorn serving the OpenAI-compatible app inside the decoder's own event loop.

The socket is bound when the decoder is built (so --http-port 0 has its port at once, and a port in use is
a StartupError, exit 2, like the gRPC port). uvicorn runs as a task of the decoder's loop; the decoder
process, not uvicorn, owns SIGTERM: the decoder drains both APIs in one place (service/server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import uvicorn

from internvl_serve.common.errors import StartupError
from internvl_serve.common.tls import ServerTls


class _EmbeddedUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the decoder handles signals (common/grpc_server.py)
        yield


def _listen(host: str, port: int) -> socket.socket:
    host = host.strip("[]")  # gRPC's "[::]" form of an IPv6 address
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        raise StartupError(f"--http-port: cannot listen on {host}:{port} ({exc.strerror or exc})") from None


class HttpApiServer:
    def __init__(self, app, host: str, port: int, tls: ServerTls):
        self.socket = _listen(host, port)
        self.port = self.socket.getsockname()[1]
        tls_options = {}
        if tls.enabled:  # the same certificate, key and client CA as the gRPC port (checked at start)
            tls_options = {"ssl_certfile": tls.cert, "ssl_keyfile": tls.key}
            if tls.client_ca:
                tls_options |= {"ssl_ca_certs": tls.client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(
            app,
            log_config=None,  # our JSON logs; uvicorn's own loggers propagate to them
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,  # the decoder's drain has already waited for in-flight calls
            **tls_options,
        )
        self._server = _EmbeddedUvicorn(config)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self.socket]))
        while not self._server.started:
            if self._task.done():  # failed to start: report why
                await self._task
                raise RuntimeError("the HTTP API server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop listening and close connections (in-flight calls were drained before)."""
        if self._task is None:
            self.socket.close()
            return
        self._server.should_exit = True
        await asyncio.wait({self._task})  # not `await task`: a cancelled caller must stay cancelled
        self._task = None
        self.socket.close()
