"""--redis-url forms: sentinel urls parsed, every form validated at config time, span attributes without secrets."""

from __future__ import annotations

import pytest

from internvl_serve.common.embedding_cache import CacheSettings, EmbeddingCache
from internvl_serve.common.redis_clients import (
    SentinelTarget,
    is_sentinel_url,
    parse_sentinel_url,
    redact,
    url_attributes,
)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis+sentinel://s1/mymaster", SentinelTarget((("s1", 26379),), "mymaster")),
        (
            "redis+sentinel://s1:5000,s2:5001,[::1]:5002/cache/3",
            SentinelTarget((("s1", 5000), ("s2", 5001), ("::1", 5002)), "cache", db=3),
        ),
        ("redis+sentinel://:p%40ss@s1:1/m", SentinelTarget((("s1", 1),), "m", password="p@ss")),
        ("redis+sentinel://bob:pw@s1:1/m/", SentinelTarget((("s1", 1),), "m", username="bob", password="pw")),
        ("rediss+sentinel://s1:1/m", SentinelTarget((("s1", 1),), "m", tls=True)),
        ("REDIS+SENTINEL://s1:1/m", SentinelTarget((("s1", 1),), "m")),
    ],
)
def test_sentinel_urls_parse(url, expected):
    assert is_sentinel_url(url)
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    "url, why",
    [
        ("redis+sentinel://s1:1", "service"),
        ("redis+sentinel://s1:1/", "service"),
        ("redis+sentinel://s1:99999/m", "out of range"),
        ("redis+sentinel://s1:x/m", "HOST[:PORT]"),
        ("redis+sentinel://s1:1,/m", "HOST[:PORT]"),
        ("redis+sentinel://s1:1/m/zero", "database number"),
        ("redis+sentinel://s1:1/m/0/x", "database number"),
        ("redis+sentinel://s1:1/m?db=1", "query"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url, why):
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_sentinel_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://r:6379/0",
        "redis://:secret@r:6379/2",
        "rediss://user:pw@r:6380/0?ssl_cert_reqs=none",
        "unix:///run/redis.sock?db=1",
        "redis+sentinel://s1:26379,s2:26379/mymaster/0",
        "rediss+sentinel://:pw@s1/mymaster",
    ],
)
def test_accepted_forms_have_no_problems(url):
    assert CacheSettings(url=url).problems() == []


@pytest.mark.parametrize(
    "url",
    [
        "http://r:6379/0",
        "r:6379",
        "redis://",
        "redis://r:notaport/0",
        "redis://r:6379/zero",
        "redis+sentinel://s1:1",
        "redis+sentinel://:hunter2@s1:1",
        "redis://:hunter2@r:6379/x",
    ],
)
def test_bad_urls_are_config_problems_naming_the_flag_and_the_forms(url):
    (problem,) = CacheSettings(url=url).problems()
    assert problem.startswith("--redis-url ") and "redis+sentinel://" in problem and "rediss://" in problem
    assert "hunter2" not in problem


def test_redact_hides_passwords_only():
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact("redis+sentinel://u:pw@a:1,b:2/m") == "redis+sentinel://u:***@a:1,b:2/m"
    assert redact("redis://h:1/0") == "redis://h:1/0"


def test_span_attributes_for_each_form_never_carry_the_password():
    plain = url_attributes("redis://:pw@cache.local:6380/2")
    assert plain == {
        "db.system.name": "redis",
        "db.system": "redis",
        "server.address": "cache.local",
        "server.port": 6380,
        "db.namespace": "2",
    }
    sentinel = url_attributes("redis+sentinel://:pw@s1:5000,s2/mymaster/1")
    assert sentinel["internvl.cache.topology"] == "sentinel" and sentinel["db.namespace"] == "1"
    assert sentinel["internvl.cache.sentinel.service"] == "mymaster"
    assert sentinel["internvl.cache.sentinel.hosts"] == "s1:5000,s2:26379"
    assert not any("pw" in str(v) for v in sentinel.values())
    for broken in ("redis://h:bad/0", "redis+sentinel://nothing"):  # never raise, whatever the url
        assert url_attributes(broken)["db.system.name"] == "redis"


def test_a_sentinel_cache_is_built_without_touching_the_network():
    cache = EmbeddingCache(CacheSettings(url="redis+sentinel://127.0.0.1:1/mymaster/0"), model_fingerprint="m" * 16)
    assert cache.enabled and cache.topology == "sentinel"
    plain = EmbeddingCache(CacheSettings(url="redis://127.0.0.1:1/0"), model_fingerprint="m" * 16)
    assert plain.enabled and plain.topology is None  # asked on the first call
