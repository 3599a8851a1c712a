"""Url fetching in the client, against a real HTTP server on 127.0.0.1: opt-in, size cap, timeout,
redirect limits and clear errors."""

from __future__ import annotations

import time

import pytest

from internvl_serve.clients.errors import InvalidArgumentError, MediaError
from internvl_serve.clients.fetch import UrlPolicy, fetch_url, is_url

ALLOW = UrlPolicy(allow=True, max_bytes=1 << 20, timeout_s=5.0)


def test_fetches_the_body_when_allowed(http):
    body = bytes(range(256)) * 1000
    assert fetch_url(http.add("/a.bin", body), ALLOW) == body


def test_refused_unless_allowed_and_nothing_is_requested(http):
    url = http.add("/a.bin", b"x")
    with pytest.raises(MediaError, match="allow_urls=True") as err:
        fetch_url(url, UrlPolicy())
    assert "--allow-urls" in str(err.value)
    assert http.hits == [], "a url must not be fetched before it is allowed"
    assert isinstance(err.value, InvalidArgumentError) and isinstance(err.value, ValueError)


def test_content_length_over_the_cap_is_refused_before_reading(http):
    url = http.add("/big", b"x" * 2000)
    with pytest.raises(MediaError, match="size limit of 1000 bytes.*Content-Length is 2000"):
        fetch_url(url, UrlPolicy(allow=True, max_bytes=1000))


def test_body_without_length_over_the_cap_is_cut_off(http):
    http.add("/stream", lambda h: http.send_bytes(h, b"y" * 5000, length=False))
    with pytest.raises(MediaError, match="size limit of 1000 bytes"):
        fetch_url(http.url("/stream"), UrlPolicy(allow=True, max_bytes=1000))


def test_exactly_at_the_cap_is_fine(http):
    assert fetch_url(http.add("/exact", b"z" * 1000), UrlPolicy(allow=True, max_bytes=1000)) == b"z" * 1000


def test_slow_server_times_out(http):
    http.add("/slow", lambda h: http.send_bytes(h, b"late", delay_s=3.0))
    start = time.monotonic()
    with pytest.raises(MediaError, match="timed out after 0.5 s"):
        fetch_url(http.url("/slow"), UrlPolicy(allow=True, timeout_s=0.5))
    assert time.monotonic() - start < 2.5


def test_http_errors_are_named(http):
    with pytest.raises(MediaError, match=r"could not fetch http://127\.0\.0\.1:\d+/missing.jpg: HTTP 404"):
        fetch_url(http.url("/missing.jpg"), ALLOW)


def test_follows_a_few_redirects_but_not_too_many(http):
    target = http.add("/final", b"done")
    for i in range(6):  # /r0 -> /r1 -> ... -> /r5 -> /final
        nxt = target if i == 5 else http.url(f"/r{i + 1}")
        http.add(f"/r{i}", lambda h, nxt=nxt: http.redirect(h, nxt))
    assert fetch_url(http.url("/r0"), UrlPolicy(allow=True, max_redirects=6)) == b"done"
    http.hits.clear()
    with pytest.raises(MediaError, match="more than 3 redirects"):
        fetch_url(http.url("/r0"), UrlPolicy(allow=True, max_redirects=3))
    assert http.hits == ["/r0", "/r1", "/r2", "/r3"]


def test_a_redirect_loop_ends(http):
    http.add("/loop", lambda h: http.redirect(h, http.url("/loop")))
    with pytest.raises(MediaError, match="redirects"):
        fetch_url(http.url("/loop"), ALLOW)


def test_redirect_to_another_scheme_is_refused(http):
    http.add("/to-ftp", lambda h: http.redirect(h, "ftp://127.0.0.1/secret"))
    with pytest.raises(MediaError, match="only http and https"):
        fetch_url(http.url("/to-ftp"), ALLOW)


def test_unreachable_host_is_a_clear_error():
    from internvl_testing.redis_server import free_port

    with pytest.raises(MediaError, match="could not fetch .*refused"):
        fetch_url(f"http://127.0.0.1:{free_port()}/x.jpg", ALLOW)


def test_only_http_and_https_are_urls():
    assert is_url("http://a/b.jpg") and is_url("HTTPS://a/b.jpg")
    assert not is_url("ftp://a/b.jpg") and not is_url("/tmp/http://x") and not is_url(b"http://x")
    with pytest.raises(MediaError, match="only http and https"):
        fetch_url("ftp://a/b.jpg", ALLOW)
