"""The Redis embedding cache. Redis down, slow or full never fails a request: every call is bounded by a
timeout, errors are counted and logged, and after an error Redis is skipped for a short back-off so a
dead cache costs one timeout per back-off period, not one per request.

Each Redis call is a CLIENT span (db.system.name "redis"); a failed call is recorded on its span and the
request carries on. A call skipped during the back-off is an event on the caller's span.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from internvl_serve.common.config_fields import setting
from internvl_serve.common.embedding_blob import BlobError, EncodedBlob, pack, unpack
from internvl_serve.common.logs import log_event
from internvl_serve.common.tenancy import DEFAULT_TENANT

log = logging.getLogger("internvl_serve.common.embedding_cache")
KEY_PREFIX = "internvl:emb:v1"
# media_id = "{preprocess fingerprint}-{sha256 of the bytes}": with the model fingerprint, the cache key.
_MEDIA_ID = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{64})$")


def make_media_id(preprocess_fingerprint: str, content_hash: str) -> str:
    return f"{preprocess_fingerprint}-{content_hash}"


@dataclass(frozen=True)
class CacheSettings:
    """The Redis cache's settings; the same flags on the encoder (reads and writes) and the decoder (reads)."""

    url: str | None = setting(
        None,
        "redis://host:port/db of the embedding cache; omit to run without it",
        flag="--redis-url",
        env="INTERNVL_REDIS_URL",
    )
    ttl_s: int = setting(86_400, "TTL of every cache entry, in seconds", flag="--cache-ttl-s")
    connect_timeout_s: float = setting(0.5, "bound on each Redis connect", flag="--redis-connect-timeout-s")
    op_timeout_s: float = setting(0.5, "bound on each Redis command", flag="--redis-timeout-s")
    backoff_s: float = setting(2.0, "after a Redis error, skip Redis this long", flag="--redis-backoff-s")
    share_across_tenants: bool = setting(
        False,
        "let tenants share content-addressed entries (one tenant's media_id then works for all)",
        flag="--share-cache-across-tenants",
    )

    def problems(self) -> list[str]:
        out = []
        if self.ttl_s < 1:
            out.append(f"--cache-ttl-s must be >= 1, got {self.ttl_s}")
        for flag, value in (
            ("--redis-connect-timeout-s", self.connect_timeout_s),
            ("--redis-timeout-s", self.op_timeout_s),
        ):
            if value <= 0:
                out.append(f"{flag} must be > 0, got {value}")
        if self.backoff_s < 0:
            out.append(f"--redis-backoff-s must be >= 0, got {self.backoff_s}")
        return out


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
    tracer: Any = None  # an opentelemetry Tracer; None: no spans

    def __post_init__(self) -> None:
        self._client = None
        self._down_until = 0.0
        self.tracer = self.tracer or trace.NoOpTracer()
        self._span_attributes = _db_attributes(self.settings.url)
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

    def key(self, preprocess_fingerprint: str, content_hash: str, tenant: str = DEFAULT_TENANT) -> str:
        """A media_id belongs to the tenant that encoded it: another tenant's key for the same content is a
        different key (unless --share-cache-across-tenants), so its ids are NOT_FOUND elsewhere. The
        default tenant (no authentication) and shared entries use the plain key of DESIGN.md section 3."""
        base = f"{KEY_PREFIX}:{self.model_fingerprint}"
        if tenant != DEFAULT_TENANT and not self.settings.share_across_tenants:
            base += f":@{tenant}"  # tenant names have no ':' or '@', fingerprints are hex: unambiguous
        return f"{base}:{preprocess_fingerprint}:{content_hash}"

    def key_for_media_id(self, media_id: str, tenant: str = DEFAULT_TENANT) -> str | None:
        """The key a media_id names for `tenant`, or None for a string this service never issues."""
        match = _MEDIA_ID.match(media_id)
        return None if match is None else self.key(match.group(1), match.group(2), tenant)

    def _available(self) -> bool:
        if self._client is None:
            return False
        if time.monotonic() < self._down_until:
            self.stats.skipped += 1
            trace.get_current_span().add_event("internvl.cache.skipped", {"reason": "redis failed recently"})
            return False
        return True

    def _span(self, op: str):
        attributes = {**self._span_attributes, "db.operation.name": op}
        return self.tracer.start_as_current_span(
            op, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False, set_status_on_exception=False
        )

    def _failed(self, op: str, exc: BaseException) -> None:
        span = trace.get_current_span()
        span.record_exception(exc)
        span.set_attributes({"error.type": type(exc).__qualname__, "internvl.cache.result": "error"})
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
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
        with self._span("GET") as span:
            try:
                data = await self._call("get", self._client.get(key))
            except Exception as exc:  # any Redis or network failure is a miss, never a failed request
                self._failed("get", exc)
                return None
            if data is None:
                self.stats.misses += 1
                span.set_attribute("internvl.cache.result", "miss")
                return None
            try:
                blob = unpack(data)
            except BlobError as exc:
                self.stats.corrupt += 1
                self.stats.misses += 1
                span.set_attributes({"internvl.cache.result": "corrupt", "internvl.cache.value_bytes": len(data)})
                log_event(log, "cache_corrupt", logging.WARNING, key=key, error=str(exc))
                return None
            self.stats.hits += 1
            span.set_attributes({"internvl.cache.result": "hit", "internvl.cache.value_bytes": len(data)})
            return blob

    async def put(self, key: str, blob: EncodedBlob) -> bool:
        """Store with the TTL; False (counted, logged) when Redis is down, slow or full."""
        if not self._available():
            return False
        with self._span("SET") as span:
            value = pack(blob)
            span.set_attributes({"internvl.cache.value_bytes": len(value), "internvl.cache.ttl_s": self.settings.ttl_s})
            try:
                await self._call("set", self._client.set(key, value, ex=self.settings.ttl_s))
            except Exception as exc:  # OOM (maxmemory), timeouts, connection errors: all non-fatal
                self._failed("set", exc)
                return False
            self.stats.writes += 1
            span.set_attribute("internvl.cache.result", "stored")
            return True

    async def close(self) -> None:
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # closing a dead connection must not fail shutdown
                pass


def _db_attributes(url: str | None) -> dict[str, Any]:
    """Span attributes naming the Redis server (never the password in the url)."""
    if not url:
        return {}
    parts = urlsplit(url)
    attributes: dict[str, Any] = {"db.system.name": "redis", "db.system": "redis"}
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    if parts.port:
        attributes["server.port"] = parts.port
    db = parts.path.lstrip("/") or "0"
    if db.isdigit():
        attributes["db.namespace"] = db
    return attributes
