"""The Redis embedding cache. Redis down, slow or full never fails a request: every call is bounded by a
timeout, errors are counted and logged, and after an error Redis is skipped for a short back-off so a
dead cache costs one timeout per back-off period, not one per request.

Each Redis call is a CLIENT span (db.system.name "redis"); a failed call is recorded on its span and the
request carries on. A call skipped during the back-off is an event on the caller's span.

Topologies (redis_clients.py has the url forms): a plain url is asked once, on the first call, whether it
is a Redis Cluster node (`INFO cluster`, bounded like any call; if Redis is down it is asked again after
the back-off); a cluster node's url then goes through the cluster client, which spreads keys by slot. In
a cluster an error on one node (down, slow, full) backs off only the keys whose slot that node serves;
the others carry on. An error about the cluster as a whole (CLUSTERDOWN, no node reachable) backs off the
whole cache, as for one server. A sentinel url follows the master the sentinels name.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from internvl_serve.common.config_fields import setting
from internvl_serve.common.embedding_blob import BlobError, EncodedBlob, pack, unpack
from internvl_serve.common.logs import log_event
from internvl_serve.common.redis_clients import (
    cluster_client,
    is_sentinel_url,
    open_client,
    redact,
    url_attributes,
    url_problem,
)
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
        "the embedding cache: redis://host:port/db (one server or any Redis Cluster node) or "
        "redis+sentinel://host:port[,host:port...]/service[/db]; omit to run without it",
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
        if self.url:
            problem = url_problem(self.url)
            if problem:
                out.append(problem)
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
        self._down_until = 0.0  # the whole cache backs off until then
        self._node_down_until: dict[str, float] = {}  # a cluster's nodes ("host:port") that back off alone
        self.topology: str | None = None  # "standalone", "cluster" or "sentinel"; None until the server says
        self._detecting = asyncio.Lock()
        self.tracer = self.tracer or trace.NoOpTracer()
        self._span_attributes = _db_attributes(self.settings.url)
        if self.settings.url:
            self._client = open_client(self.settings.url, self.settings.connect_timeout_s, self.settings.op_timeout_s)
            if is_sentinel_url(self.settings.url):
                self.topology = "sentinel"

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

    def _available(self, key: str | None = None) -> bool:
        if self._client is None:
            return False
        now = time.monotonic()
        if now < self._down_until:
            return self._skip("redis failed recently")
        node = self._node(key)
        if node is not None and now < self._node_down_until.get(node.name, 0.0):
            return self._skip("redis node failed recently", node.name)
        return True

    def _skip(self, reason: str, node: str = "") -> bool:
        self.stats.skipped += 1
        event = {"reason": reason, **({"internvl.cache.node": node} if node else {})}
        trace.get_current_span().add_event("internvl.cache.skipped", event)
        return False

    def _node(self, key: str | None):
        """The cluster node serving `key`'s slot (None: not a cluster, or its slots are not known yet)."""
        if key is None or self.topology != "cluster":
            return None
        try:
            return self._client.get_node_from_key(key)
        except Exception:  # slots not loaded (before the first CLUSTER SLOTS, or after a refresh failed)
            return None

    def _where(self, node) -> dict[str, Any]:
        """Per-call span attributes: the cluster node of the key, or the sentinels' master last connected to."""
        if node is not None:
            return {"server.address": node.host, "server.port": int(node.port), "internvl.cache.node": node.name}
        master = getattr(getattr(self._client, "connection_pool", None), "master_address", None)
        if self.topology == "sentinel" and master:
            return {"server.address": str(master[0]), "server.port": int(master[1])}
        return {}

    async def _detect(self) -> bool:
        """Ask a plain url's server, once, whether it is a Redis Cluster node (INFO cluster), and if so switch
        to the cluster client. Raises what the call raised (the caller backs off and a later call asks again);
        False: another caller's attempt failed a moment ago (skip, as in the back-off)."""
        if self.topology is not None:
            return True
        async with self._detecting:
            if self.topology is not None:
                return True
            if time.monotonic() < self._down_until or self._client is None:
                return False
            from redis.exceptions import ResponseError

            try:
                info = await self._call("info", self._client.info("cluster"))
            except ResponseError as exc:  # INFO refused (an ACL, a proxy): one server; but a cluster node
                info = {"cluster_enabled": 1} if "cluster mode" in str(exc) else {}  # refuses SELECT of db > 0
            if str(info.get("cluster_enabled", "0")) == "1":
                await self._use_cluster()
            else:
                self.topology = "standalone"
            self._span_attributes = {**self._span_attributes, "internvl.cache.topology": self.topology}
            log_event(log, "cache_connected", logging.INFO, topology=self.topology, url=redact(self.settings.url))
            return True

    async def _route(self, span, key: str):
        """(True, the cluster node of `key` or None) once the topology is known, its attributes on `span`;
        (False, None): skip the call (another caller's detection failed a moment ago)."""
        if not await self._detect():
            span.set_attribute("internvl.cache.result", "skipped")
            self._skip("redis failed recently")
            return False, None
        node = self._node(key)
        span.set_attributes(self._where(node))
        return True, node

    async def _use_cluster(self) -> None:
        plain, url = self._client, self.settings.url
        try:
            cluster = cluster_client(url, self.settings.connect_timeout_s, self.settings.op_timeout_s)
        except Exception as exc:  # a db other than 0, a unix socket: this url cannot name a cluster
            self._client = None  # the cache is off: retrying cannot help
            await _close(plain)
            message = f"--redis-url {redact(url)} is a Redis Cluster node, but {exc}; the cache is disabled"
            log_event(log, "cache_disabled", logging.ERROR, error=message)
            raise ValueError(message) from exc
        try:
            await self._call("cluster", cluster.initialize())  # CLUSTER SLOTS: which node serves each slot
        except BaseException:
            await _close(cluster)
            raise
        self._client, self.topology = cluster, "cluster"
        self._span_attributes["db.namespace"] = "0"
        await _close(plain)

    def _span(self, op: str):
        attributes = {**self._span_attributes, "db.operation.name": op}
        return self.tracer.start_as_current_span(
            op, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False, set_status_on_exception=False
        )

    def _failed(self, op: str, exc: BaseException, node=None) -> None:
        span = trace.get_current_span()
        span.record_exception(exc)
        span.set_attributes({"error.type": type(exc).__qualname__, "internvl.cache.result": "error"})
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
        self.stats.errors += 1
        self.stats.last_error = f"{op}: {type(exc).__name__}: {exc}"[:300]
        failed = self._failed_node(exc, node)
        if failed is None:
            self._down_until = time.monotonic() + self.settings.backoff_s
        else:
            self._node_down_until[failed] = time.monotonic() + self.settings.backoff_s
            span.set_attribute("internvl.cache.node", failed)
        log_event(log, "cache_error", logging.WARNING, op=op, error=self.stats.last_error, node=failed or "")

    def _failed_node(self, exc: BaseException, node) -> str | None:
        """In a cluster, the node an error is about: only its keys back off. None (the whole cache backs off):
        not a cluster, or an error about the cluster as a whole (CLUSTERDOWN, slots uncovered, none reachable)."""
        if self.topology != "cluster":
            return None
        from redis.exceptions import ClusterError, RedisClusterException

        if isinstance(exc, (ClusterError, RedisClusterException)):
            return None
        named = getattr(exc, "last_failed_node_name", None) or getattr(getattr(exc, "connection", None), "name", None)
        if isinstance(named, str) and named:
            return named
        return None if node is None else node.name

    async def _call(self, op: str, coro):
        # wait_for bounds the whole call even if the client's own socket timeout does not fire
        return await asyncio.wait_for(coro, timeout=self.settings.connect_timeout_s + self.settings.op_timeout_s)

    async def get(self, key: str) -> EncodedBlob | None:
        """The cached blob, or None on a miss, a corrupt value or any Redis problem."""
        if not self._available(key):
            return None
        with self._span("GET") as span:
            node = None
            try:
                ready, node = await self._route(span, key)
                if not ready:
                    return None
                data = await self._call("get", self._client.get(key))
            except Exception as exc:  # any Redis or network failure is a miss, never a failed request
                self._failed("get", exc, node)
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
        if not self._available(key):
            return False
        with self._span("SET") as span:
            value = pack(blob)
            span.set_attributes({"internvl.cache.value_bytes": len(value), "internvl.cache.ttl_s": self.settings.ttl_s})
            node = None
            try:
                ready, node = await self._route(span, key)
                if not ready:
                    return False
                await self._call("set", self._client.set(key, value, ex=self.settings.ttl_s))
            except Exception as exc:  # OOM (maxmemory), timeouts, connection errors: all non-fatal
                self._failed("set", exc, node)
                return False
            self.stats.writes += 1
            span.set_attribute("internvl.cache.result", "stored")
            return True

    async def close(self) -> None:
        if self._client is not None:
            await _close(self._client)


async def _close(client) -> None:
    """Close a client (and a sentinel master's sentinels); closing a dead connection must not fail shutdown."""
    sentinels = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for closing in (client, sentinels):
        try:
            if closing is not None:
                await closing.aclose()
        except Exception:
            pass


def _db_attributes(url: str | None) -> dict[str, Any]:
    """Span attributes naming the Redis server (never the password in the url)."""
    return url_attributes(url) if url else {}
