"""Media URL fetching for the HTTP API: an OpenAI content part's `image_url.url` / `video_url.url` -> bytes.

`data:` URLs are always accepted (decoded here, nothing is fetched). http(s) URLs are fetched only from the
hosts the operator listed (--allowed-media-domains), and only from public addresses, to keep the server from
being used against its own network (SSRF, the class of vLLM's CVE-2025-6242):

- http and https only; a host is required; `user:pass@` is refused;
- the host must be listed: `example.com` allows exactly that host (case-insensitive, a trailing dot ignored),
  `*.example.com` allows every name below it but NOT `example.com` itself (list both for both); an IP
  literal host must itself be listed; any port is allowed;
- every address the host resolves to must pass `address_allowed` (default: `is_public_address`), else the
  fetch is refused, so a name that resolves (or is rebound) to a private address is refused; the vetting
  runs inside aiohttp's connector (a resolver), so the addresses checked are the addresses connected to,
  while TLS still checks the certificate against the host name;
- no proxies from the environment, no redirects (a 3xx is an error), no Content-Encoding (the body is
  asked for as `identity` and counted as sent), at most `max_bytes` of body, `timeout_s` for it all.

Every refusal or failure is a `MediaFetchError` whose message a person can act on (the app answers 400).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
import urllib.parse
from collections.abc import Callable, Sequence

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CHUNK = 64 * 1024
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: the v4 address is the last 32 bits
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215 local-use prefix: never public
_NO_DOMAINS = (
    "fetching http(s) media URLs is off on this server: start the decoder with --allowed-media-domains "
    "DOMAIN[,DOMAIN...] to allow some hosts; data: URLs (data:<mediatype>;base64,<data>) always work"
)


class MediaFetchError(Exception):
    """A media URL that was refused or could not be fetched; the message says why (the app answers 400)."""


class MediaTooLarge(MediaFetchError):
    """The media is over the byte limit of the fetch (the app answers 413)."""


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, 6to4, NAT64 well-known prefix), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True for a globally routable unicast address; an IPv6 address that embeds an IPv4 one (::ffff:a.b.c.d,
    6to4 2002::/16, NAT64 64:ff9b::/96) is judged by the IPv4 address it embeds."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        v4 = _embedded_v4(ip)
        if v4 is not None:
            return is_public_address(v4)
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_unspecified
    )


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a `data:[<mediatype>][;base64],<data>` URL: base64 (padding optional, whitespace ignored),
    or percent-encoded plain data without `;base64`. More than `max_bytes` -> MediaFetchError."""
    if url[:5].lower() != "data:":
        raise MediaFetchError("not a data: URL")
    header, comma, data = url[5:].partition(",")
    if not comma:
        raise MediaFetchError("malformed data: URL: expected data:<mediatype>;base64,<data> (no ',' found)")
    params = [p.strip().lower() for p in header.split(";")]
    if params[-1] != "base64":
        return _sized(urllib.parse.unquote_to_bytes(data), max_bytes)
    if "%" in data:
        data = urllib.parse.unquote(data)
    data = "".join(data.split())  # line breaks and spaces some encoders insert
    if len(data) // 4 * 3 > max_bytes + 2:  # a lower bound on the decoded size, before decoding anything
        raise MediaTooLarge(f"data: URL holds about {len(data) // 4 * 3} bytes, over the limit of {max_bytes}")
    if len(data) % 4 == 1:
        raise MediaFetchError("invalid base64 in data: URL (its length is not possible for base64)")
    data += "=" * (-len(data) % 4)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MediaFetchError("invalid base64 in data: URL (only A-Z a-z 0-9 + / and = padding are allowed)") from None
    return _sized(raw, max_bytes)


def _sized(raw: bytes, max_bytes: int) -> bytes:
    if not raw:
        raise MediaFetchError("data: URL is empty")
    if len(raw) > max_bytes:
        raise MediaTooLarge(f"data: URL holds {len(raw)} bytes, over the limit of {max_bytes}")
    return raw


class _VettingResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses the host if ANY address fails `allowed`: the
    connector connects only to the addresses returned here, so what was checked is what is connected to."""

    def __init__(self, allowed: Callable[[IPAddress], bool]) -> None:
        self._allowed = allowed
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            results = await self._inner.resolve(host, port, family)
        except OSError as exc:
            raise MediaFetchError(f"media host {host} does not resolve ({exc.strerror or exc})") from None
        for result in results:
            ip = _parse_ip(result["host"])
            if ip is None or not self._allowed(ip):
                raise MediaFetchError(
                    f"media host {host} resolves to {result['host']}, which is not a public address; refused"
                )
        return results

    async def close(self) -> None:
        await self._inner.close()


def _normalize_entry(entry: str) -> tuple[str, bool]:
    """(the host an --allowed-media-domains entry names, whether it is a `*.` wildcard)."""
    text = entry.strip().lower()
    wildcard = text.startswith("*.")
    if wildcard:
        text = text[2:]
    ip = _parse_ip(text)
    if ip is not None and not wildcard:
        return str(ip), False
    text = text.rstrip(".")
    if not text or any(c in text for c in "/:@*?#[] ") or text.startswith("."):
        raise ValueError(
            f"allowed media domain {entry!r} is not a host name (give names like example.com or *.example.com, "
            "or IP addresses; not URLs, ports or other patterns)"
        )
    try:
        host = yarl.URL.build(scheme="http", host=text).raw_host or ""
    except (ValueError, UnicodeError):
        raise ValueError(f"allowed media domain {entry!r} is not a valid host name") from None
    return host.lower(), wildcard


class MediaFetcher:
    """Fetches media URLs under the rules in the module docstring; one aiohttp session, made on first use."""

    def __init__(
        self,
        allowed_domains: Sequence[str],
        timeout_s: float,
        max_bytes: int,
        *,
        address_allowed: Callable[[IPAddress], bool] = is_public_address,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"media fetch timeout must be > 0, got {timeout_s}")
        if max_bytes < 1:
            raise ValueError(f"media fetch max_bytes must be >= 1, got {max_bytes}")
        self._exact: set[str] = set()
        self._suffixes: set[str] = set()
        for entry in allowed_domains:
            host, wildcard = _normalize_entry(entry)
            (self._suffixes if wildcard else self._exact).add(host)
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._address_allowed = address_allowed
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _host_allowed(self, host: str) -> bool:
        if host in self._exact:
            return True
        return any(host.endswith("." + suffix) for suffix in self._suffixes)

    def _check_url(self, url: str) -> yarl.URL:
        try:
            parsed = yarl.URL(url)
        except (ValueError, UnicodeError) as exc:
            raise MediaFetchError(f"invalid media URL ({exc})") from None
        scheme = parsed.scheme.lower()
        if scheme not in ("http", "https"):
            shown = f"{scheme}:" if scheme else "none"
            raise MediaFetchError(f"media URL scheme {shown} is not allowed: use http(s) or a data: URL")
        if parsed.user is not None or parsed.password is not None:
            raise MediaFetchError("media URLs with credentials (user:password@host) are refused")
        raw_host = parsed.raw_host
        if not raw_host:
            raise MediaFetchError("media URL has no host")
        if not self._exact and not self._suffixes:
            raise MediaFetchError(_NO_DOMAINS)
        ip = _parse_ip(raw_host.replace("%25", "%"))
        host = str(ip) if ip is not None else raw_host.lower().rstrip(".")
        if not self._host_allowed(host):
            raise MediaFetchError(
                f"media host {host} is not in this server's allowed media domains (--allowed-media-domains); "
                "data: URLs always work"
            )
        if ip is not None and not self._address_allowed(ip):
            raise MediaFetchError(f"media host {host} is not a public address; refused")
        return parsed

    def _session_for_this_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is not None and not self._session.closed:
            if loop is not self._loop:
                raise RuntimeError("a MediaFetcher is used from the event loop it first fetched in only")
            return self._session
        connector = aiohttp.TCPConnector(resolver=_VettingResolver(self._address_allowed), use_dns_cache=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            trust_env=False,
            auto_decompress=False,
            headers={"Accept-Encoding": "identity"},
        )
        self._loop = loop
        return self._session

    async def fetch(self, url: str, max_bytes: int | None = None) -> bytes:
        """The bytes at `url` (a data: or an http(s) URL); MediaFetchError if refused or failed. `max_bytes`:
        a lower limit for this fetch (what is left of the request's media budget)."""
        limit = self._max_bytes if max_bytes is None else min(max_bytes, self._max_bytes)
        if url[:5].lower() == "data:":
            return decode_data_url(url, limit)
        parsed = self._check_url(url)
        where = f"{parsed.raw_host}:{parsed.port}"
        session = self._session_for_this_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._get(session, parsed, where, limit)
        except MediaFetchError:
            raise
        except TimeoutError:
            raise MediaFetchError(f"fetching media from {where} took over {self._timeout_s:g} s; gave up") from None
        except aiohttp.InvalidURL as exc:
            raise MediaFetchError(f"invalid media URL: {exc}") from None
        except aiohttp.ClientSSLError:
            raise MediaFetchError(f"TLS with {where} failed (certificate or handshake)") from None
        except aiohttp.ClientConnectorError as exc:
            reason = f" ({exc.strerror})" if exc.strerror else ""
            raise MediaFetchError(f"could not connect to media host {where}{reason}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise MediaFetchError(f"fetching media from {where} failed ({type(exc).__name__})") from None

    async def _get(self, session: aiohttp.ClientSession, url: yarl.URL, where: str, limit: int) -> bytes:
        async with session.get(url, allow_redirects=False) as resp:
            if 300 <= resp.status < 400:
                raise MediaFetchError(
                    f"media host {where} answered HTTP {resp.status} (a redirect); redirects are not followed: "
                    "give the final URL"
                )
            if not 200 <= resp.status < 300:
                raise MediaFetchError(f"media host {where} answered HTTP {resp.status} {resp.reason or ''}".rstrip())
            encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise MediaFetchError(f"media host {where} sent Content-Encoding {encoding!r}; only identity is read")
            too_big = f"media at {where} is over the limit of {limit} bytes"
            if resp.content_length is not None and resp.content_length > limit:
                raise MediaTooLarge(f"{too_big} (Content-Length {resp.content_length})")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > limit:
                    raise MediaTooLarge(too_big)
            return bytes(body)

    async def close(self) -> None:
        """Close the session (if one was made); a later fetch makes a new one."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
