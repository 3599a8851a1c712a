"""A Redis Cluster behind `--redis-url` (one node's url): entries spread by slot, a dead node costs only its
own keys, Redis down at start is found to be a cluster later, and the decoder reads media_ids from it too."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from internvl_testing.encode_requests import image, request
from internvl_testing.encoder_server import EncoderStarter, encoder_config, encoder_stub, start_encoder
from internvl_testing.media import image_bytes, noise_image
from internvl_testing.redis_server import RedisClusterServers, free_cluster_port, wait_until


def _png(seed: int) -> bytes:
    return image_bytes(noise_image(64, 48, seed), "PNG")


@pytest.fixture
def cluster():
    servers = RedisClusterServers()
    yield servers
    servers.stop()


@pytest.fixture
def started(tiny_model_dir):
    starter = EncoderStarter(tiny_model_dir)
    yield starter.start
    starter.close()


def _encode(stub, data: bytes):
    return stub.Encode(request(image(data), embeddings=False), timeout=30).media[0]


def _serving(channel) -> bool:
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    return status == health_pb2.HealthCheckResponse.SERVING


def test_one_nodes_url_spreads_entries_and_a_dead_node_costs_only_its_keys(started, cluster):
    thread, stub, channel = started(cluster.url, backoff_s=0.3)
    cache = thread.server.engine.cache
    images = [_png(seed) for seed in range(12)]
    first = [_encode(stub, data) for data in images]
    assert cache.topology == "cluster"
    assert not any(m.cache_hit for m in first) and all(m.ttl_seconds > 0 for m in first), cache.stats.last_error
    keys = [cache.key_for_media_id(m.media_id) for m in first]
    node_of = {key: port for port, held in cluster.keys_by_node().items() for key in held}
    assert sorted(node_of) == sorted(keys), "every entry is on exactly one node"
    assert len(set(node_of.values())) > 1, f"all 12 entries on one node: {cluster.dbsize_by_node()}"
    assert sum(cluster.dbsize_by_node().values()) == 12
    assert all(m.cache_hit for m in (_encode(stub, data) for data in images)), "the second pass is all hits"
    assert cache.stats.errors == 0, cache.stats.last_error

    # SIGKILL the node the url names if it holds entries (the client knows the others by now), else another
    holders = [n for n in cluster.nodes if n.port in node_of.values()]
    victim = cluster.nodes[0] if cluster.nodes[0] in holders else holders[0]
    cluster.kill(victim)
    on_victim = [node_of[key] == victim.port for key in keys]
    assert any(on_victim) and not all(on_victim)

    def sweep():  # old images: hits on live nodes, misses (recomputed, answered) for the dead node's keys
        return [_encode(stub, data) for data in images]

    after = sweep()
    assert [m.cache_hit for m in after] == [not dead for dead in on_victim], cache.stats.last_error
    assert all(m.num_tokens > 0 for m in after) and all(m.ttl_seconds == 0 for m, d in zip(after, on_victim) if d)
    # only the dead node's keys erred (at most their GET and SET); the others' were never backed off
    assert 1 <= cache.stats.errors <= 2 * sum(on_victim), cache.stats.last_error

    # once the other nodes have marked it failed, the same holds, and new images are cached on live nodes
    wait_until(lambda: cluster.marked_failed(victim), 20, "the live nodes to mark the dead node failed")
    assert [m.cache_hit for m in sweep()] == [not dead for dead in on_victim]
    new = [_png(seed) for seed in range(100, 108)]
    stored = [_encode(stub, data) for data in new]
    again = [_encode(stub, data) for data in new]
    live_keys = {key for held in cluster.keys_by_node().values() for key in held}
    for one, two in zip(stored, again):
        on_live = cache.key_for_media_id(one.media_id) in live_keys
        assert two.cache_hit == on_live and (one.ttl_seconds > 0) == on_live
    assert any(m.cache_hit for m in again)
    assert _serving(channel)


def test_redis_down_at_start_is_found_to_be_a_cluster_later(started):
    port = free_cluster_port(set())
    thread, stub, channel = started(f"redis://127.0.0.1:{port}/0", backoff_s=0.2)
    cache = thread.server.engine.cache
    missed = _encode(stub, _png(200))
    assert not missed.cache_hit and missed.ttl_seconds == 0 and cache.stats.errors >= 1
    assert cache.topology is None and _serving(channel)
    cluster = RedisClusterServers(ports=[port])
    try:
        data = _png(201)
        # after the back-off the cache asks again, learns it is a cluster node, and stores (no call fails)
        for _ in range(100):
            if _encode(stub, data).ttl_seconds > 0:
                break
        assert cache.topology == "cluster", cache.stats.last_error
        assert _encode(stub, data).cache_hit
        assert sum(cluster.dbsize_by_node().values()) >= 1
    finally:
        cluster.stop()


def test_a_cluster_node_with_a_db_other_than_0_disables_the_cache_loudly(started, cluster):
    thread, stub, channel = started(cluster.url.rsplit("/", 1)[0] + "/3")
    cache = thread.server.engine.cache
    item = _encode(stub, _png(300))
    assert item.num_tokens > 0 and item.ttl_seconds == 0
    assert not cache.enabled and "db" in cache.stats.last_error and "--redis-url" in cache.stats.last_error
    assert _encode(stub, _png(300)).num_tokens > 0 and _serving(channel)


def test_the_decoder_resolves_media_ids_from_the_cluster_without_an_encoder(tiny_model_dir, cluster):
    from internvl_serve.common.embedding_cache import CacheSettings
    from internvl_testing.decoder_server import decoder_config, generation_stub, start_decoder
    from internvl_testing.generate_requests import generate_request

    encoder, encoder_open = start_encoder(encoder_config(tiny_model_dir, cluster.url)), True
    enc_channel, enc_stub = encoder_stub(encoder.address)
    media_ids = [_encode(enc_stub, _png(seed)).media_id for seed in range(400, 404)]
    enc_channel.close()
    keys = [encoder.server.engine.cache.key_for_media_id(m) for m in media_ids]
    held = cluster.keys_by_node()
    assert len({port for port, mine in held.items() if set(keys) & mine}) > 1, "the ids live on several nodes"
    # the decoder is given another node's url than the encoder: any node will do
    config = decoder_config(
        tiny_model_dir, [encoder.address], cache=CacheSettings(url=cluster.nodes[1].url), encoder_timeout_s=2.0
    )
    decoder = start_decoder(config)
    channel, stub = generation_stub(decoder.address)
    try:
        parts = [{"type": "image", "media_id": m} for m in media_ids]
        chat = [{"role": "user", "content": [*parts, {"type": "text", "text": "Describe these"}]}]
        first = stub.Generate(generate_request(chat, max_new_tokens=4))  # via the encoder: learns its fingerprint
        encoder.close()
        encoder_open = False
        again = stub.Generate(generate_request(chat, max_new_tokens=4))  # straight from the cluster
        assert list(again.token_ids) == list(first.token_ids)
        assert again.usage.media_cache_hits == len(media_ids)
        assert decoder.server.media_ids.cache.topology == "cluster"
    finally:
        channel.close()
        decoder.close()
        if encoder_open:
            encoder.close()


def test_a_hung_node_costs_one_timeout_per_back_off_and_no_other_keys(cluster):
    """SIGSTOP: the node accepts connections but never answers. Its keys cost one bounded timeout (no hidden
    retries, no slot-map refresh loop), then skip Redis for the back-off; the other nodes' keys still hit."""
    import asyncio
    import signal
    import time

    import torch

    from internvl_serve.common.embedding_blob import MEDIA_IMAGE, EncodedBlob
    from internvl_serve.common.embedding_cache import CacheSettings, EmbeddingCache

    settings = CacheSettings(url=cluster.url, connect_timeout_s=0.3, op_timeout_s=0.3, backoff_s=60.0)
    blob = EncodedBlob(torch.ones(2, 4), MEDIA_IMAGE, num_tiles=1, num_frames=0, tokens_per_tile=2)
    victim = cluster.nodes[1]

    async def run():
        cache = EmbeddingCache(settings, model_fingerprint="f" * 16)
        keys = [cache.key("0" * 16, f"{i:064x}") for i in range(30)]
        try:
            assert all([await cache.put(key, blob) for key in keys]) and cache.topology == "cluster"
            held = cluster.keys_by_node()[victim.port]
            on_victim = [key in held for key in keys]
            assert any(on_victim) and not all(on_victim)
            victim.proc.send_signal(signal.SIGSTOP)
            results, slowest = [], 0.0
            for _ in range(2):
                for key in keys:
                    t0 = time.monotonic()
                    results.append(await cache.get(key) is not None)
                    slowest = max(slowest, time.monotonic() - t0)
            assert results == [not dead for dead in on_victim] * 2
            assert slowest < 0.3 + 0.3 + 0.2, f"one call took {slowest:.2f}s"
            assert cache.stats.errors == 1, cache.stats.last_error  # the first GET on the hung node, then skips
            assert cache.stats.skipped == 2 * sum(on_victim) - 1
        finally:
            victim.proc.send_signal(signal.SIGCONT)
            await cache.close()

    asyncio.run(run())
