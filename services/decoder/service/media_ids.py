"""Resolving media_id parts straight from the embedding cache (`decoder --redis-url`).

A media_id names a cache entry the encoders wrote; reading it here saves a round trip through an encoder
(and works while they are busy or restarting). The cache key also needs the encoders' model fingerprint,
which the decoder learns from their first answer; until then, and on any miss, the id goes to an encoder
as before, which answers from the same cache or with NOT_FOUND.
"""

from __future__ import annotations

import dataclasses

from internvl_serve.common.embedding_blob import MEDIA_VIDEO
from internvl_serve.common.embedding_cache import CacheSettings, EmbeddingCache
from internvl_serve.common.tenancy import DEFAULT_TENANT
from internvl_serve.decoder.service.encoder_client import EncodedResult
from internvl_serve.pb.internvl.v1 import media_pb2


class MediaIdLookup:
    def __init__(self, settings: CacheSettings):
        # Always the tenant's own key: whether tenants share entries is the encoders' setting, and a miss
        # here goes to them (so a decoder whose flag disagrees can never widen what a tenant reads).
        self.cache = EmbeddingCache(dataclasses.replace(settings, share_across_tenants=False), model_fingerprint="")

    async def resolve(
        self, media: list[media_pb2.Media], model_fingerprint: str, tenant: str = DEFAULT_TENANT
    ) -> list[EncodedResult | None]:
        """A result for each media_id found in the cache; None for everything else (to be encoded)."""
        results: list[EncodedResult | None] = [None] * len(media)
        if not model_fingerprint:
            return results
        self.cache.model_fingerprint = model_fingerprint
        for i, item in enumerate(media):
            key = (
                self.cache.key_for_media_id(item.media_id, tenant) if item.WhichOneof("source") == "media_id" else None
            )
            if key is None:
                continue
            blob = await self.cache.get(key)
            if blob is not None:
                results[i] = EncodedResult(
                    media_id=item.media_id,
                    embeddings=blob.embeddings,
                    num_tiles=blob.num_tiles,
                    num_frames=blob.num_frames,
                    tokens_per_tile=blob.tokens_per_tile,
                    is_video=blob.media_type == MEDIA_VIDEO,
                    cache_hit=True,
                )
        return results

    async def close(self) -> None:
        await self.cache.close()
