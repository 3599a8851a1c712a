"""Micro-batching: tiles of concurrent requests share vision-tower batches; results equal unbatched ones."""

from __future__ import annotations

import concurrent.futures

import torch

from internvl_testing.encode_requests import embeddings, image, request
from internvl_testing.media import image_bytes, noise_image


def test_concurrent_requests_share_batches_and_match_unbatched(encoder, encode_stub):
    engine = encoder.server.engine
    images = [image_bytes(noise_image(64 + 9 * i, 64, 100 + i), "PNG") for i in range(6)]  # 1 tile or 2+1
    before = engine.batcher.stats.batches
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        items = list(pool.map(lambda d: encode_stub.Encode(request(image(d))).media[0], images))
    batches = engine.batcher.stats.batches - before
    assert batches < len(images), "concurrent requests were not batched together"
    assert engine.batcher.stats.max_batch_tiles > max(i.num_tiles for i in items)
    for data, item in zip(images, items):
        tiles = engine._image_tiles(data)
        alone = engine.model(tiles).reshape(-1, item.embeddings.shape[1])
        assert torch.allclose(embeddings(item), alone, atol=1e-6, rtol=0), "batched != unbatched"


def test_a_request_larger_than_a_batch_is_split(tiny_model_dir, redis_server):
    from internvl_testing.encoder_server import encoder_config, encoder_stub, start_encoder

    thread = start_encoder(encoder_config(tiny_model_dir, None, max_batch_tiles=2))
    channel, stub = encoder_stub(thread.address)
    try:
        item = stub.Encode(request(image(image_bytes(noise_image(300, 90, 5), "PNG")))).media[0]
        engine = thread.server.engine
        assert item.num_tiles > 2 and engine.batcher.stats.max_batch_tiles == 2
        tiles = engine._image_tiles(image_bytes(noise_image(300, 90, 5), "PNG"))
        alone = engine.model(tiles).reshape(-1, item.embeddings.shape[1])
        assert torch.allclose(embeddings(item), alone, atol=1e-6, rtol=0)
    finally:
        channel.close()
        thread.close()
