"""Fetching media from http(s) urls, in the client and only when allowed (the servers never fetch urls).

A fetch is bounded: at most `max_bytes` (checked against Content-Length first, then while reading), at
most `timeout_s` for the whole download, at most `max_redirects` redirects, and only to http or https.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from internvl_serve.clients.errors import MediaError

MiB = 1024 * 1024
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class UrlPolicy:
    """Whether and how the client fetches http(s) urls found in messages."""

    allow: bool = False
    max_bytes: int = 64 * MiB
    timeout_s: float = 30.0
    max_redirects: int = 5


def is_url(value: object) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


def _redirect_handler(max_redirects: int) -> urllib.request.HTTPRedirectHandler:
    class LimitedRedirects(urllib.request.HTTPRedirectHandler):
        max_redirections = max_repeats = max_redirects

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
                raise MediaError(f"{req.full_url} redirects to {newurl!r}; only http and https urls are fetched")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return LimitedRedirects()


def fetch_url(url: str, policy: UrlPolicy) -> bytes:
    """The body of `url`, or MediaError with a message that says what went wrong."""
    if not policy.allow:
        raise MediaError(
            f"media url {url} was not fetched: fetching urls is off; pass allow_urls=True to the client "
            "(--allow-urls on the command line), or download the file and pass its path or bytes"
        )
    if not is_url(url):
        raise MediaError(f"only http and https urls are fetched, not {url!r}")
    opener = urllib.request.build_opener(_redirect_handler(policy.max_redirects))
    request = urllib.request.Request(url, headers={"User-Agent": "internvl-client", "Accept": "*/*"})
    deadline = time.monotonic() + policy.timeout_s
    try:
        with opener.open(request, timeout=policy.timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise MediaError(_too_big(url, policy.max_bytes, f"Content-Length is {int(declared)} bytes"))
            return _read_bounded(response, url, policy, deadline)
    except MediaError:
        raise
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise MediaError(f"could not fetch {url}: more than {policy.max_redirects} redirects") from None
        raise MediaError(f"could not fetch {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError) or "timed out" in str(exc.reason):
            raise MediaError(_timed_out(url, policy.timeout_s)) from None
        raise MediaError(f"could not fetch {url}: {exc.reason}") from None
    except TimeoutError:
        raise MediaError(_timed_out(url, policy.timeout_s)) from None
    except (OSError, ValueError) as exc:  # connection reset, bad url, invalid HTTP
        raise MediaError(f"could not fetch {url}: {exc}") from None


def _read_bounded(response, url: str, policy: UrlPolicy, deadline: float) -> bytes:
    # read1 returns after one socket read, so a server trickling bytes cannot stretch the deadline.
    read = getattr(response, "read1", response.read)
    chunks: list[bytes] = []
    total = 0
    while True:
        if time.monotonic() > deadline:
            raise MediaError(_timed_out(url, policy.timeout_s))
        chunk = read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > policy.max_bytes:
            raise MediaError(_too_big(url, policy.max_bytes, "the body is larger"))
        chunks.append(chunk)


def _too_big(url: str, limit: int, why: str) -> str:
    return f"media url {url} is over the client's size limit of {limit} bytes ({why}); raise url_max_bytes"


def _timed_out(url: str, timeout_s: float) -> str:
    return f"fetching {url} timed out after {timeout_s:g} s; raise url_timeout or download the file first"
