"""The decoder's one gRPC target over all its encoders: a DNS name, an ipv4:/ipv6:/dns: target, or a
comma list of HOST:PORT (turned into one ipv4:/ipv6: target so a single round_robin channel spans them).

A DNS name is re-resolved by gRPC as replicas come and go (Kubernetes' headless Service, compose
replicas); a comma list is fixed at start, its host names resolved once.
"""

from __future__ import annotations

import ipaddress
import socket

_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")


def _split(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"encoder address {address!r} is not HOST:PORT (or a dns:/ipv4:/ipv6: target)")
    return host.strip("[]"), port


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValueError(
            f"encoder host {host!r} does not resolve ({exc}); in a list every name must resolve at start "
            "(give one DNS name, dns:///NAME:PORT, for a set of replicas that changes)"
        ) from None
    return sorted({info[4][0] for info in infos})


def encoder_target(addresses: list[str] | tuple[str, ...]) -> str:
    """One gRPC target naming every encoder in `addresses` (the decoder's --encoder list)."""
    if not addresses:
        raise ValueError("at least one encoder address (HOST:PORT) is needed")
    if len(addresses) == 1:
        (address,) = addresses
        if address.startswith(_SCHEMES):
            return address
        host, port = _split(address)
        return address if _ip(host) is not None else f"dns:///{host}:{port}"
    if any(a.startswith(_SCHEMES) for a in addresses):
        raise ValueError("a dns:/ipv4:/ipv6: target names all the encoders itself; give it alone, not in a list")
    v4, v6 = [], []
    for address in addresses:
        host, port = _split(address)
        ips = [host] if _ip(host) is not None else _resolve(host, port)
        mine4 = [(ip, port) for ip in ips if _ip(ip).version == 4]
        # One target has one address family: IPv4 where a name resolves to both.
        if mine4:
            v4 += mine4
        else:
            v6 += [(ip, port) for ip in ips]
    if v4 and v6:
        raise ValueError("the --encoder list mixes IPv4 and IPv6-only addresses; one target takes one family")
    if v4:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in dict.fromkeys(v4))
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in dict.fromkeys(v6))
