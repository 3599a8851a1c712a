"""A media_id belongs to the tenant that encoded it, and cached KV blocks to the tenant whose prompt made
them: another tenant gets NOT_FOUND for the id, exactly as for one that never existed, and no prefix-cache
hit (which cached_tokens would reveal)."""

from __future__ import annotations

import re

import pytest

from internvl_serve.clients import InternVLClient, NotFoundError
from internvl_serve.common.embedding_cache import CacheSettings, EmbeddingCache
from internvl_testing.media import image_bytes, noise_image

from .conftest import ALICE, BOB

PNG = image_bytes(noise_image(48, 40, 77), "PNG")


def _client(stack, token) -> InternVLClient:
    pki = stack.pki
    return InternVLClient(
        f"localhost:{stack.decoder.port}",
        encoder_target=f"localhost:{stack.encoder.port}",
        tls_ca=str(pki.ca),
        tls_cert=str(pki.client_cert),
        tls_key=str(pki.client_key),
        token=token,
        timeout=60,
    )


def _chat(media_id: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "media_id": media_id}, {"type": "text", "text": "What?"}]}]


def _unknown_error(client, media_id: str) -> str:
    with pytest.raises(NotFoundError) as err:
        client.generate(_chat(media_id), max_new_tokens=2)
    return re.sub(r"[0-9a-f]{16}-[0-9a-f]{64}", "<id>", err.value.details)


def test_another_tenants_media_id_is_not_found_like_one_that_never_existed(secure_stack):
    with _client(secure_stack, ALICE) as alice, _client(secure_stack, BOB) as bob:
        (encoded,) = alice.encode([PNG])
        assert encoded.reusable
        assert alice.generate(_chat(encoded.media_id), max_new_tokens=2).usage.output_tokens == 2
        never = encoded.media_id[:-8] + "00000000"
        assert _unknown_error(bob, encoded.media_id) == _unknown_error(bob, never)
        with pytest.raises(NotFoundError):
            bob.encode([{"type": "image", "media_id": encoded.media_id}])
        # Bob's own copy of the same bytes is his: computed for him, then usable by him.
        (own,) = bob.encode([PNG])
        assert own.media_id == encoded.media_id and not own.cache_hit
        assert bob.generate(_chat(own.media_id), max_new_tokens=2).usage.output_tokens == 2


def test_tenants_never_share_cached_kv_blocks(secure_stack):
    chat = [{"role": "user", "content": "A long enough prompt to fill several KV blocks of sixteen tokens. " * 4}]
    with _client(secure_stack, ALICE) as alice, _client(secure_stack, BOB) as bob:
        alice.generate(chat, max_new_tokens=1)
        assert alice.generate(chat, max_new_tokens=1).usage.cached_tokens > 0
        assert bob.generate(chat, max_new_tokens=1).usage.cached_tokens == 0
        assert bob.generate(chat, max_new_tokens=1).usage.cached_tokens > 0  # within a tenant, as before


def test_cache_keys_are_scoped_by_tenant_unless_shared():
    scoped = EmbeddingCache(CacheSettings(), model_fingerprint="m" * 16)
    shared = EmbeddingCache(CacheSettings(share_across_tenants=True), model_fingerprint="m" * 16)
    pp, content = "a" * 16, "b" * 64
    assert scoped.key(pp, content) == f"internvl:emb:v1:{'m' * 16}:{pp}:{content}"  # DESIGN.md's key, one tenant
    assert scoped.key(pp, content, "alice") != scoped.key(pp, content, "bob") != scoped.key(pp, content)
    assert shared.key(pp, content, "alice") == shared.key(pp, content, "bob") == scoped.key(pp, content)
