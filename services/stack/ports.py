"""Port choice for `internvl-serve up`: a default port that is busy is replaced by a free one (and said so);
a port the user named that is busy is an error a person can act on."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass


class PortError(RuntimeError):
    """A port the user asked for cannot be used."""


def _bind_probe(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    # SO_REUSEADDR so a port left in TIME_WAIT by a stopped server counts as free (gRPC sets it too); no
    # SO_REUSEPORT, so a port another server listens on counts as busy even when that server set it (gRPC
    # does, and would otherwise silently share the port with an older copy of itself).
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    return s


def is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port; PortError when host itself cannot be listened on."""
    try:
        _bind_probe(host, port).close()
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise PortError(f"cannot listen on {host}: {_describe(exc)} (see --host)") from None
    return True


def any_free_port(host: str) -> int:
    try:
        with _bind_probe(host, 0) as s:
            return s.getsockname()[1]
    except OSError as exc:
        raise PortError(f"cannot listen on {host}: {_describe(exc)} (see --host)") from None


@dataclass(frozen=True)
class PortChoice:
    name: str  # "decoder", "encoder", "redis"
    port: int
    replaced_default: int | None = None  # the busy default port this one stands in for


def choose_port(name: str, host: str, requested: int | None, default: int, flag: str, taken: set[int]) -> PortChoice:
    """`requested` (an explicit flag) must be free; otherwise `default`, or any free port when it is busy."""
    if requested is not None:
        if requested in taken:
            raise PortError(f"{flag} {requested}: that port is already given to another service of this stack")
        if requested != 0:
            if not is_free(host, requested):
                raise PortError(
                    f"{flag} {requested}: port {requested} on {host} is already in use (or reserved) "
                    f"(stop what listens there, pick another port, or leave out {flag} to let up choose one)"
                )
            return PortChoice(name, requested)
        return PortChoice(name, _fresh(host, taken))
    if default not in taken and is_free(host, default):
        return PortChoice(name, default)
    return PortChoice(name, _fresh(host, taken), replaced_default=default)


def metrics_ports_wanted(decoder: int | None, encoder: int | None) -> list[tuple[str, int | None, int, str]]:
    """`up`'s (name, requested, default, flag) for the services' /metrics ports, from --metrics-port (the
    decoder's) and --encoder-metrics-port; none without --metrics-port."""
    if decoder is None:
        if encoder is not None:
            raise PortError("--encoder-metrics-port needs --metrics-port (the decoder's; 0 picks free ports)")
        return []
    for flag, port in (("--metrics-port", decoder), ("--encoder-metrics-port", encoder)):
        if port is not None and not 0 <= port < 65536:
            raise PortError(f"{flag} must lie in [0, 65535], got {port}")
    if encoder is None and decoder == 0:
        encoder = 0  # free ports for both
    # encoder None: its default, the decoder's + 1, replaced by a free port when busy (a port named never is)
    return [
        ("decoder metrics", decoder, decoder, "--metrics-port"),
        ("encoder metrics", encoder, min(decoder + 1, 65535), "--encoder-metrics-port"),
    ]


def _fresh(host: str, taken: set[int]) -> int:
    for _ in range(20):
        port = any_free_port(host)
        if port not in taken:
            return port
    raise PortError(f"no free port found on {host}")  # pragma: no cover - the kernel always has one


def _describe(exc: OSError) -> str:
    if exc.errno == errno.EADDRNOTAVAIL:
        return "that address is not one of this machine's"
    if isinstance(exc, socket.gaierror):
        return f"unknown host name ({exc.strerror})"
    return exc.strerror or str(exc)
