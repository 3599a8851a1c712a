"""A Sentinel-managed master behind `--redis-url redis+sentinel://...`: the encoder caches on the master, keeps
answering while it dies, and caches again on the replica the sentinel promotes."""

from __future__ import annotations

import time

from grpc_health.v1 import health_pb2, health_pb2_grpc

from internvl_testing.encode_requests import image, request
from internvl_testing.encoder_server import encoder_config, encoder_stub, start_encoder
from internvl_testing.media import image_bytes, noise_image
from internvl_testing.redis_server import RedisSentinelServers, free_port, wait_until


def _png(seed: int) -> bytes:
    return image_bytes(noise_image(64, 48, seed), "PNG")


def _encode(stub, data: bytes):
    return stub.Encode(request(image(data), embeddings=False), timeout=30).media[0]


def test_caching_follows_the_master_through_a_failover(tiny_model_dir):
    servers = RedisSentinelServers()
    thread = start_encoder(encoder_config(tiny_model_dir, servers.url, backoff_s=0.2))
    channel, stub = encoder_stub(thread.address)
    try:
        cache = thread.server.engine.cache
        before = _png(1)
        first = _encode(stub, before)
        assert not first.cache_hit and first.ttl_seconds > 0, cache.stats.last_error
        assert _encode(stub, before).cache_hit and cache.topology == "sentinel"
        key = cache.key_for_media_id(first.media_id)
        assert servers.master.client().exists(key)
        wait_until(lambda: servers.replica.client().exists(key), 10, "the entry to reach the replica")

        servers.kill_master()
        started, seed, rounds = time.monotonic(), 100, 0
        while True:  # every request is answered while the sentinel notices and promotes the replica
            seed, rounds = seed + 1, rounds + 1
            data = _png(seed)
            stored = _encode(stub, data)
            again = _encode(stub, data)
            assert stored.num_tokens > 0 and again.num_tokens > 0
            if again.cache_hit:
                break
            assert time.monotonic() - started < 30, f"caching did not resume: {cache.stats.last_error}"
            time.sleep(0.1)
        assert rounds > 1, "the dead master cost at least one miss"
        assert servers.master_port() == servers.replica.port
        assert _encode(stub, before).cache_hit, "the entry written before the failover is on the new master"
        assert cache.stats.errors >= 1
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
        thread.close()
        servers.stop()


def test_no_sentinel_reachable_is_a_bounded_miss(tiny_model_dir):
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster"
    thread = start_encoder(encoder_config(tiny_model_dir, url, backoff_s=60.0))
    channel, stub = encoder_stub(thread.address)
    try:
        t0 = time.monotonic()
        item = _encode(stub, _png(7))
        assert item.num_tokens > 0 and not item.cache_hit and item.ttl_seconds == 0
        assert time.monotonic() - t0 < 5
        cache = thread.server.engine.cache
        assert cache.stats.errors == 1 and "mymaster" in cache.stats.last_error, cache.stats.last_error
        assert cache.stats.skipped == 1, "the store fell in the back-off"
    finally:
        channel.close()
        thread.close()
