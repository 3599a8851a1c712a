"""Redis down, slow or full never fails a request: the encoder computes, answers, and counts the error."""

from __future__ import annotations

import threading
import time

import pytest

from internvl_testing.encode_requests import embeddings, image, request
from internvl_testing.encoder_server import EncoderStarter
from internvl_testing.media import image_bytes, noise_image
from internvl_testing.redis_server import RedisServer


def _png(seed: int) -> bytes:
    return image_bytes(noise_image(90, 60, seed), "PNG")


@pytest.fixture
def own_redis():
    server = RedisServer("--enable-debug-command", "yes")
    yield server
    server.stop()


@pytest.fixture
def started(tiny_model_dir):
    starter = EncoderStarter(tiny_model_dir)
    yield lambda redis_url, **overrides: starter.start(redis_url, **overrides)[:2]
    starter.close()


class _Clock:
    """The cache's clock: real monotonic time plus an offset a test moves forward (no sleeping)."""

    def __init__(self):
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


def _count_redis_calls(cache) -> list[str]:
    """Wrap the cache's Redis client so each GET/SET it attempts is recorded (in the encoder's thread)."""
    calls: list[str] = []
    client = cache._client
    for op in ("get", "set"):
        real = getattr(client, op)

        def counted(*args, _real=real, _op=op, **kwargs):
            calls.append(_op)
            return _real(*args, **kwargs)

        setattr(client, op, counted)
    return calls


def test_redis_killed_mid_test(started, own_redis, monkeypatch):
    from internvl_serve.common import embedding_cache

    clock = _Clock()
    monkeypatch.setattr(embedding_cache, "time", clock)
    backoff_s = 30.0  # far longer than the test takes: only the clock's offset ends it
    thread, stub = started(own_redis.url, backoff_s=backoff_s)
    cache = thread.server.engine.cache
    calls = _count_redis_calls(cache)
    warm = stub.Encode(request(image(_png(1)))).media[0]
    assert stub.Encode(request(image(_png(1)))).media[0].cache_hit
    own_redis.stop()
    after = stub.Encode(request(image(_png(1)))).media[0]
    assert not after.cache_hit and (embeddings(after) == embeddings(warm)).all()
    assert after.ttl_seconds == 0, "not stored: the id cannot be reused"
    assert cache.stats.errors == 1, cache.stats.last_error  # the GET; the SET after it fell in the back-off

    # within the back-off: every call is skipped and counted, and none reaches Redis (no timeout paid)
    errors, skipped, attempts = cache.stats.errors, cache.stats.skipped, len(calls)
    for seed in range(2, 6):
        item = stub.Encode(request(image(_png(seed)))).media[0]
        assert item.num_tokens > 0 and not item.cache_hit and item.ttl_seconds == 0
    assert cache.stats.skipped - skipped == 2 * 4, "each request's GET and SET are skipped"
    assert len(calls) == attempts, f"Redis was called during the back-off: {calls[attempts:]}"
    assert cache.stats.errors == errors

    # once the back-off has passed, Redis is tried again (still down: one more error, a new back-off)
    clock.offset += backoff_s + 1
    assert stub.Encode(request(image(_png(6)))).media[0].num_tokens > 0
    assert calls[attempts:] == ["get"] and cache.stats.errors == errors + 1

    # and once Redis is back (same port), the next try after the back-off stores and then hits again
    revived = type(own_redis)("--enable-debug-command", "yes", port=own_redis.port)
    try:
        clock.offset += backoff_s + 1
        stored = stub.Encode(request(image(_png(7)))).media[0]
        assert stored.ttl_seconds > 0 and cache.stats.errors == errors + 1, cache.stats.last_error
        assert stub.Encode(request(image(_png(7)))).media[0].cache_hit
    finally:
        revived.stop()


def test_redis_never_reachable(started):
    thread, stub = started("redis://127.0.0.1:1/0")  # nothing listens on port 1
    item = stub.Encode(request(image(_png(7)))).media[0]
    assert item.num_tokens > 0 and not item.cache_hit
    assert thread.server.engine.cache.stats.errors >= 1


def test_slow_redis_is_bounded_by_the_timeout(started, own_redis):
    thread, stub = started(own_redis.url)
    sleeper = threading.Thread(target=lambda: own_redis.client(timeout_s=10).execute_command("DEBUG", "SLEEP", "3"))
    sleeper.start()
    time.sleep(0.2)  # Redis is now blocked for ~3 s
    t0 = time.monotonic()
    item = stub.Encode(request(image(_png(8)))).media[0]
    elapsed = time.monotonic() - t0
    sleeper.join()
    assert item.num_tokens > 0
    assert thread.server.engine.cache.stats.errors >= 1
    assert elapsed < 2.5, f"the request waited {elapsed:.1f}s on a blocked Redis"


def test_full_redis_is_not_an_error_for_the_client(started):
    full = RedisServer("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    try:
        filler = full.client()
        for i in range(200):  # fill the 1 MB budget
            try:
                filler.set(f"fill:{i}", b"x" * 20_000)
            except Exception:
                break
        thread, stub = started(full.url)
        item = stub.Encode(request(image(_png(9)))).media[0]
        assert item.num_tokens > 0 and item.ttl_seconds == 0
        assert "OOM" in thread.server.engine.cache.stats.last_error or thread.server.engine.cache.stats.errors >= 1
    finally:
        full.stop()


def test_no_redis_configured(started):
    thread, stub = started(None)
    first = stub.Encode(request(image(_png(10)))).media[0]
    second = stub.Encode(request(image(_png(10)))).media[0]
    assert not first.cache_hit and not second.cache_hit and first.ttl_seconds == 0
