"""Media URL fetching for the HTTP API: data: URLs, the public-address policy, the URL and host rules, and
fetches from a real aiohttp server on 127.0.0.1 (with the address policy opened up for that server only)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from internvl_serve.decoder.http.media_fetch import (
    MediaFetcher,
    MediaFetchError,
    _VettingResolver,
    decode_data_url,
    is_public_address,
)

PAYLOAD = bytes(range(256)) * 8  # 2048 bytes, every byte value


def any_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return True


# --- data: URLs


def test_data_url_base64():
    url = "data:image/png;base64," + base64.b64encode(PAYLOAD).decode()
    assert decode_data_url(url, max_bytes=len(PAYLOAD)) == PAYLOAD


def test_data_url_base64_tolerates_missing_padding_whitespace_and_params():
    assert decode_data_url("data:image/png;charset=x;BASE64,aGVsbG8", 100) == b"hello"
    assert decode_data_url("DATA:;base64,aGVs\nbG8=", 100) == b"hello"


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,aGVsbG8*",  # not in the alphabet
        "data:image/png;base64,aGVsb",  # a length base64 cannot have
        "data:image/png;base64,aGVs=bG8=",  # padding in the middle
    ],
)
def test_data_url_bad_base64(url):
    with pytest.raises(MediaFetchError, match="invalid base64"):
        decode_data_url(url, 100)


def test_data_url_too_large():
    url = "data:image/png;base64," + base64.b64encode(PAYLOAD).decode()
    with pytest.raises(MediaFetchError, match="over the limit of 2047"):
        decode_data_url(url, max_bytes=len(PAYLOAD) - 1)
    with pytest.raises(MediaFetchError, match="over the limit"):  # refused before decoding
        decode_data_url("data:;base64," + "A" * 4000, max_bytes=100)
    with pytest.raises(MediaFetchError, match="over the limit"):
        decode_data_url("data:text/plain," + "a" * 101, max_bytes=100)


def test_data_url_without_base64_is_percent_decoded():
    assert decode_data_url("data:text/plain,hello%20world%00", 100) == b"hello world\x00"
    assert decode_data_url("data:,x", 100) == b"x"


@pytest.mark.parametrize("url", ["data:image/png;base64", "data:image/png;base64,", "data:,", "http://x/"])
def test_data_url_malformed_or_empty(url):
    with pytest.raises(MediaFetchError):
        decode_data_url(url, 100)


def test_fetch_decodes_data_urls_even_without_allowed_domains():
    fetcher = MediaFetcher([], timeout_s=1, max_bytes=10)
    assert asyncio.run(fetcher.fetch("data:;base64,aGVsbG8=")) == b"hello"
    with pytest.raises(MediaFetchError, match="over the limit of 10"):
        asyncio.run(fetcher.fetch("data:;base64," + base64.b64encode(b"x" * 11).decode()))


# --- the address policy


@pytest.mark.parametrize(
    "address, public",
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("0.0.0.0", False),
        ("100.64.0.1", False),  # CGNAT
        ("224.0.0.1", False),  # multicast
        ("240.0.0.1", False),  # reserved
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),  # unique local
        ("ff02::1", False),  # multicast
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:169.254.169.254", False),
        ("2002:a00:1::", False),  # 6to4 of 10.0.0.1
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b:1::808:808", False),  # local-use NAT64 prefix
        ("2001:db8::1", False),  # documentation
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),
        ("2002:808:808::", True),  # 6to4 of 8.8.8.8
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
    ],
)
def test_is_public_address(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


# --- URL and host rules (refused before any connection)


def refused(fetcher: MediaFetcher, url: str) -> str:
    async def go() -> str:
        try:
            with pytest.raises(MediaFetchError) as info:
                await fetcher.fetch(url)
        finally:
            await fetcher.close()
        return str(info.value)

    return asyncio.run(go())


@pytest.mark.parametrize("url, scheme", [("file:///etc/passwd", "file:"), ("ftp://example.com/a", "ftp:")])
def test_only_http_and_https(url, scheme):
    assert scheme in refused(MediaFetcher(["example.com"], 1, 100), url)


def test_userinfo_and_missing_host_refused():
    fetcher = MediaFetcher(["example.com"], 1, 100)
    assert "credentials" in refused(fetcher, "http://user:pw@example.com/a.png")
    assert "credentials" in refused(fetcher, "http://user@example.com/a.png")
    assert "no host" in refused(fetcher, "http:///a.png")


def test_empty_allow_list_refuses_every_http_url_and_says_what_to_do():
    message = refused(MediaFetcher([], 1, 100), "https://example.com/a.png")
    assert "--allowed-media-domains" in message and "data:" in message


def test_host_not_listed():
    fetcher = MediaFetcher(["example.com", "*.cdn.example.org"], 1, 100)
    for url in ("https://evil.com/a.png", "https://example.com.evil.com/", "https://cdn.example.org/a.png"):
        assert "not in this server's allowed media domains" in refused(fetcher, url)


def test_host_matching():
    listed = ["Example.COM.", "*.cdn.example.org", "2001:DB8::1", "[::2]", "bücher.de"]
    fetcher = MediaFetcher(listed, 1, 100, address_allowed=any_address)
    for url in (
        "https://example.com/a",
        "https://EXAMPLE.com./a",
        "http://example.com:8080/a",
        "https://a.cdn.example.org/a",
        "https://a.b.cdn.example.org/a",
        "http://[2001:db8::1]/a",
        "http://[::2]/a",
        "http://xn--bcher-kva.de/a",
        "http://BÜCHER.de/a",
    ):
        fetcher._check_url(url)  # would raise if refused; the address checks come later
    for url in ("https://cdn.example.org/a", "https://www.example.com/a", "http://[2001:db8::2]/"):
        with pytest.raises(MediaFetchError, match="not in this server's allowed"):
            fetcher._check_url(url)


@pytest.mark.parametrize("entry", ["https://example.com", "example.com:8080", "*", "a*.example.com", "", "a/b"])
def test_bad_allowed_domain_entries(entry):
    with pytest.raises(ValueError):
        MediaFetcher([entry], 1, 100)


def test_listed_ip_literal_must_still_be_public():
    assert "not a public address" in refused(MediaFetcher(["127.0.0.1"], 1, 100), "http://127.0.0.1/a")
    assert "not a public address" in refused(MediaFetcher(["::1"], 1, 100), "http://[::1]:8080/a")
    assert "not a public address" in refused(MediaFetcher(["169.254.169.254"], 1, 100), "http://169.254.169.254/")
    assert "allowed media domains" in refused(MediaFetcher(["example.com"], 1, 100), "http://127.0.0.1/a")


def test_legacy_numeric_ipv4_hosts_refused():
    for host in ("127.1", "2130706433", "0x7f.0.0.1"):
        message = refused(MediaFetcher([host], 1, 100), f"http://{host}:9/a")
        assert "not a public address" in message or "not a canonical IPv4 address" in message


def test_listed_name_resolving_to_loopback_refused():
    message = refused(MediaFetcher(["localhost"], 2, 100), "http://localhost:9/a.png")
    assert "not a public address" in message and "localhost" in message


def test_one_private_address_among_public_ones_refuses_the_host():
    async def go() -> None:
        resolver = _VettingResolver(is_public_address)

        async def fake(host: str, port: int, family: socket.AddressFamily) -> list[dict]:
            return [
                {"hostname": host, "host": h, "port": port, "family": socket.AF_INET, "proto": 6, "flags": 0}
                for h in ("8.8.8.8", "10.0.0.5")
            ]

        resolver._inner.resolve = fake  # type: ignore[method-assign]
        with pytest.raises(MediaFetchError, match="resolves to 10.0.0.5"):
            await resolver.resolve("rebound.example.com", 443)
        await resolver.close()

    asyncio.run(go())


# --- fetches from a real server on 127.0.0.1


async def _ok(request: web.Request) -> web.Response:
    return web.Response(body=PAYLOAD, content_type="image/png")


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ok")


async def _chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for _ in range(4):
        await resp.write(b"x" * 1000)
    await resp.write_eof()
    return resp


async def _gzip(request: web.Request) -> web.Response:
    return web.Response(body=b"\x1f\x8b...", headers={"Content-Encoding": "gzip"})


def with_server(test: Callable[[str], Awaitable[None]]) -> None:
    """Run `test(base_url)` against a local aiohttp server (routes below), then stop it."""

    async def go() -> None:
        release = asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            await release.wait()
            return web.Response(body=b"late")

        app = web.Application()
        app.router.add_get("/ok", _ok)
        app.router.add_get("/redirect", _redirect)
        app.router.add_get("/chunked", _chunked)
        app.router.add_get("/gzip", _gzip)
        app.router.add_get("/slow", slow)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            await test(f"http://127.0.0.1:{port}")
        finally:
            release.set()
            await runner.cleanup()

    asyncio.run(go())


def local_fetcher(max_bytes: int = 10_000, timeout_s: float = 5, hosts: tuple[str, ...] = ("127.0.0.1",)):
    return MediaFetcher(list(hosts), timeout_s, max_bytes, address_allowed=any_address)


async def fetch_error(fetcher: MediaFetcher, url: str) -> str:
    with pytest.raises(MediaFetchError) as info:
        await fetcher.fetch(url)
    return str(info.value)


def test_fetch_returns_the_exact_bytes_and_reuses_one_session():
    async def test(base: str) -> None:
        fetcher = local_fetcher()
        assert await fetcher.fetch(base + "/ok") == PAYLOAD
        session = fetcher._session
        assert await fetcher.fetch(base + "/ok?again=1") == PAYLOAD
        assert fetcher._session is session
        await fetcher.close()
        assert session is not None and session.closed
        await fetcher.close()  # twice is fine

    with_server(test)


def test_fetch_through_the_vetting_resolver():
    async def test(base: str) -> None:
        fetcher = local_fetcher(hosts=("localhost",))
        url = base.replace("127.0.0.1", "localhost") + "/ok"
        try:
            assert await fetcher.fetch(url) == PAYLOAD
        except MediaFetchError as exc:  # localhost may resolve to ::1 first, where nothing listens
            assert "could not connect" in str(exc)
        await fetcher.close()

    with_server(test)


def test_redirect_refused():
    async def test(base: str) -> None:
        fetcher = local_fetcher()
        message = await fetch_error(fetcher, base + "/redirect")
        assert "302" in message and "redirects are not followed" in message
        await fetcher.close()

    with_server(test)


def test_not_found():
    async def test(base: str) -> None:
        fetcher = local_fetcher()
        assert "HTTP 404" in await fetch_error(fetcher, base + "/missing")
        await fetcher.close()

    with_server(test)


def test_body_over_max_bytes_refused():
    async def test(base: str) -> None:
        fetcher = local_fetcher(max_bytes=len(PAYLOAD) - 1)
        assert "Content-Length 2048" in await fetch_error(fetcher, base + "/ok")
        chunked = local_fetcher(max_bytes=3999)
        message = await fetch_error(chunked, base + "/chunked")
        assert "over the limit of 3999 bytes" in message and "Content-Length" not in message
        exact = local_fetcher(max_bytes=4000)
        assert await exact.fetch(base + "/chunked") == b"x" * 4000
        for f in (fetcher, chunked, exact):
            await f.close()

    with_server(test)


def test_content_encoding_refused():
    async def test(base: str) -> None:
        fetcher = local_fetcher()
        assert "Content-Encoding 'gzip'" in await fetch_error(fetcher, base + "/gzip")
        await fetcher.close()

    with_server(test)


def test_slow_server_times_out():
    async def test(base: str) -> None:
        fetcher = local_fetcher(timeout_s=0.3)
        start = time.monotonic()
        message = await fetch_error(fetcher, base + "/slow")
        assert "took over 0.3 s" in message
        assert time.monotonic() - start < 2
        await fetcher.close()

    with_server(test)


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there

    async def go() -> str:
        fetcher = local_fetcher()
        try:
            return await fetch_error(fetcher, f"http://127.0.0.1:{port}/a")
        finally:
            await fetcher.close()

    message = asyncio.run(go())
    assert f"could not connect to media host 127.0.0.1:{port}" in message
    assert "Traceback" not in message
