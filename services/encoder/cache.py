"""The Redis embedding cache. Redis down, slow or full never fails a request: every call is bounded by a
timeout, errors are counted and logged, and after an error Redis is skipped for a short back-off so a
dead cache costs one timeout per back-off period, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from internvl_serve.common.logs import log_event
from internvl_serve.encoder.blob import BlobError, EncodedBlob, pack, unpack

log = logging.getLogger("internvl_serve.encoder.cache")
KEY_PREFIX = "internvl:emb:v1"


@dataclass(frozen=True)
class CacheSettings:
    url: str | None  # None: no cache
    ttl_s: int = 86_400
    connect_timeout_s: float = 0.5
    op_timeout_s: float = 0.5
    backoff_s: float = 2.0  # skip Redis this long after an error


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    corrupt: int = 0
    writes: int = 0
    skipped: int = 0  # calls not attempted because Redis failed recently
    last_error: str = ""

    def as_dict(self) -> dict[str, int | str]:
        return dict(self.__dict__)


@dataclass
class EmbeddingCache:
    settings: CacheSettings
    model_fingerprint: str
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self._client = None
        self._down_until = 0.0
        if self.settings.url:
            from redis.asyncio import Redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._client = Redis.from_url(
                self.settings.url,
                socket_connect_timeout=self.settings.connect_timeout_s,
                socket_timeout=self.settings.op_timeout_s,
                retry=Retry(NoBackoff(), 0),  # no hidden retries: one bounded attempt per call
                retry_on_timeout=False,
            )

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def key(self, preprocess_fingerprint: str, content_hash: str) -> str:
        return f"{KEY_PREFIX}:{self.model_fingerprint}:{preprocess_fingerprint}:{content_hash}"

    def _available(self) -> bool:
        if self._client is None:
            return False
        if time.monotonic() < self._down_until:
            self.stats.skipped += 1
            return False
        return True

    def _failed(self, op: str, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{op}: {type(exc).__name__}: {exc}"[:300]
        self._down_until = time.monotonic() + self.settings.backoff_s
        log_event(log, "cache_error", logging.WARNING, op=op, error=self.stats.last_error)

    async def _call(self, op: str, coro):
        # wait_for bounds the whole call even if the client's own socket timeout does not fire
        return await asyncio.wait_for(coro, timeout=self.settings.connect_timeout_s + self.settings.op_timeout_s)

    async def get(self, key: str) -> EncodedBlob | None:
        """The cached blob, or None on a miss, a corrupt value or any Redis problem."""
        if not self._available():
            return None
        try:
            data = await self._call("get", self._client.get(key))
        except Exception as exc:  # any Redis or network failure is a miss, never a failed request
            self._failed("get", exc)
            return None
        if data is None:
            self.stats.misses += 1
            return None
        try:
            blob = unpack(data)
        except BlobError as exc:
            self.stats.corrupt += 1
            self.stats.misses += 1
            log_event(log, "cache_corrupt", logging.WARNING, key=key, error=str(exc))
            return None
        self.stats.hits += 1
        return blob

    async def put(self, key: str, blob: EncodedBlob) -> bool:
        """Store with the TTL; False (counted, logged) when Redis is down, slow or full."""
        if not self._available():
            return False
        try:
            await self._call("set", self._client.set(key, pack(blob), ex=self.settings.ttl_s))
        except Exception as exc:  # OOM (maxmemory), timeouts, connection errors: all non-fatal
            self._failed("set", exc)
            return False
        self.stats.writes += 1
        return True

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # closing a dead connection must not fail shutdown
                pass
