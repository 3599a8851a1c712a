"""Redis cache: hits skip the model, media_id resolves, TTL, corrupt blobs, single flight."""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest

from internvl_serve.common.embedding_cache import KEY_PREFIX
from internvl_testing.encode_requests import embeddings, image, ref, request
from internvl_testing.encoder_server import encoder_config, encoder_stub, start_encoder
from internvl_testing.media import image_bytes, noise_image


def _png(seed: int, w: int = 100, h: int = 70) -> bytes:
    return image_bytes(noise_image(w, h, seed), "PNG")


def _key_for(encoder, media_id: str) -> str:
    return encoder.server.engine.cache.key_for_media_id(media_id)


def test_second_request_is_a_cache_hit_that_skips_the_model(encoder, encode_stub, redis_server):
    engine = encoder.server.engine
    data = _png(1)
    first = encode_stub.Encode(request(image(data))).media[0]
    computed = engine.computed
    second = encode_stub.Encode(request(image(data))).media[0]
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert engine.computed == computed
    assert second.media_id == first.media_id and second.ttl_seconds == 3600
    assert (embeddings(first) == embeddings(second)).all()
    key = _key_for(encoder, first.media_id)
    assert key.startswith(f"{KEY_PREFIX}:{engine.model_fingerprint}:")
    assert 0 < redis_server.client().ttl(key) <= 3600


def test_media_id_resolves_and_unknown_ids_are_not_found(encoder, encode_stub):
    first = encode_stub.Encode(request(image(_png(2)))).media[0]
    again = encode_stub.Encode(request(ref(first.media_id))).media[0]
    assert again.cache_hit and (embeddings(again) == embeddings(first)).all()
    unknown = first.media_id[:-4] + "0000"
    with pytest.raises(grpc.RpcError) as err:
        encode_stub.Encode(request(ref(unknown)))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "send the media bytes again" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        encode_stub.Encode(request(ref("not-an-id")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_corrupt_blob_is_a_miss_recomputed_and_overwritten(encoder, encode_stub, redis_server):
    engine = encoder.server.engine
    first = encode_stub.Encode(request(image(_png(3)))).media[0]
    key = _key_for(encoder, first.media_id)
    good = redis_server.client().get(key)
    for bad in (b"garbage", good[:-1], good[:-1] + bytes([good[-1] ^ 1])):
        redis_server.client().set(key, bad)
        corrupt = engine.cache.stats.corrupt
        again = encode_stub.Encode(request(image(_png(3)))).media[0]
        assert not again.cache_hit and engine.cache.stats.corrupt == corrupt + 1
        assert (embeddings(again) == embeddings(first)).all()
        assert redis_server.client().get(key) == good, "the bad value was overwritten"


def test_ttl_expiry_makes_the_id_unknown(tiny_model_dir, redis_server):
    thread = start_encoder(encoder_config(tiny_model_dir, redis_server.url, ttl_s=1))
    channel, stub = encoder_stub(thread.address)
    try:
        first = stub.Encode(request(image(_png(5)), embeddings=False)).media[0]
        assert first.ttl_seconds == 1 and not first.HasField("embeddings")
        time.sleep(2.2)
        with pytest.raises(grpc.RpcError) as err:
            stub.Encode(request(ref(first.media_id)))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
        thread.close()


def test_concurrent_identical_requests_compute_once(encoder, encode_stub):
    engine = encoder.server.engine
    data = _png(4, 300, 200)  # several tiles, so the computation takes a while
    before = engine.computed
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: encode_stub.Encode(request(image(data))).media[0], range(8)))
    assert engine.computed == before + 1
    assert len({r.media_id for r in results}) == 1
    assert sum(not r.cache_hit for r in results) >= 1
