"""The Redis clients behind the embedding cache, one per kind of `--redis-url`, all bounded the same way.

- `redis://HOST[:PORT][/DB]`, `rediss://...` (TLS), `unix:///PATH[?db=N]`: one server, or a node of a Redis
  Cluster. Which of the two is not in the url: the cache asks the server once (`INFO cluster`, see
  embedding_cache.py) and, for a cluster node, switches to `cluster_client`, which routes each key to the
  master of its slot.
- `redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]` (`rediss+sentinel://` for
  TLS to the sentinels and the master): the master that those sentinels name SERVICE; after a failover the
  next connection goes to the new master. The password is the master's (the sentinels are asked without one).

No client retries on its own (redis-py's default is several retries with back-off), so a dead server or node
costs one bounded attempt per call; the cache's back-off (embedding_cache.py) decides when to try again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
PLAIN_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_SENTINEL_PORT = 26379
ACCEPTED_FORMS = (
    "redis://HOST[:PORT][/DB] (one server, or any node of a Redis Cluster), rediss://... (TLS), "
    "unix:///PATH[?db=N], or redis+sentinel://[:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB] "
    "(rediss+sentinel:// for TLS)"
)
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\[\]:/,@]+)(?::(\d{1,5}))?$")
_SERVICE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed `redis+sentinel://` url."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @property
    def hosts(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The sentinels, service name and db of a `redis+sentinel://` url; ValueError saying what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"not a {' or '.join(s + '://' for s in SENTINEL_SCHEMES)} url")
    if "?" in rest or "#" in rest:
        raise ValueError("a sentinel url takes no query string or fragment")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = []
    for item in hostlist.split(","):
        match = _HOST_PORT.match(item.strip())
        if match is None:
            raise ValueError(f"{item.strip()!r} is not HOST[:PORT]")
        port = int(match.group(2) or DEFAULT_SENTINEL_PORT)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        sentinels.append((match.group(1).strip("[]"), port))
    segments = path.strip("/").split("/") if path.strip("/") else []
    if not segments or not _SERVICE.match(segments[0]):
        raise ValueError("the path must name the sentinels' service (the name in `sentinel monitor NAME ...`)")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ValueError("after the service name only a database number may follow (/SERVICE/DB)")
    db = int(segments[1]) if len(segments) == 2 else 0
    return SentinelTarget(tuple(sentinels), segments[0], db, username, password, scheme.lower() == "rediss+sentinel")


def url_problem(url: str) -> str | None:
    """Why `url` is not a usable --redis-url (a message naming the flag and the accepted forms), or None."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    try:
        if scheme in SENTINEL_SCHEMES:
            parse_sentinel_url(url)
        elif scheme in PLAIN_SCHEMES:
            parts = urlsplit(url)
            if scheme != "unix" and not parts.hostname:
                raise ValueError("no host")
            if scheme == "unix" and not parts.path:
                raise ValueError("no socket path")
            _ = parts.port  # ValueError for a port that is not a number in range
            db = parts.path.strip("/")
            if scheme != "unix" and db and not db.isdigit():
                raise ValueError(f"the path must be a database number, got /{db}")
            from redis.asyncio.connection import parse_url

            parse_url(url)  # query options redis-py would reject
        else:
            raise ValueError("unknown scheme" if scheme else "no scheme")
    except ValueError as exc:
        return f"--redis-url {redact(url)!r} is not usable ({exc}); accepted forms: {ACCEPTED_FORMS}"
    return None


def redact(url: str) -> str:
    """The url without its password (for messages and logs)."""
    return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", url)


def _no_retry():
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Retry(NoBackoff(), 0)


def _timeouts(connect_timeout_s: float, op_timeout_s: float) -> dict[str, Any]:
    return {"socket_connect_timeout": connect_timeout_s, "socket_timeout": op_timeout_s, "retry": _no_retry()}


def open_client(url: str, connect_timeout_s: float, op_timeout_s: float):
    """The client for a url: a plain one (which may turn out to be a cluster node) or a sentinel master's."""
    if is_sentinel_url(url):
        return sentinel_client(parse_sentinel_url(url), connect_timeout_s, op_timeout_s)
    from redis.asyncio import Redis

    return Redis.from_url(url, **_timeouts(connect_timeout_s, op_timeout_s))


def cluster_client(url: str, connect_timeout_s: float, op_timeout_s: float):
    """A Redis Cluster client seeded from the url's node (it learns the other nodes from CLUSTER SLOTS).

    retry=0 also turns off redis-py's cluster-level retries (`cluster_error_retry_attempts` is ignored when
    `retry` is given): a dead node raises at once and marks the topology for a refresh, which the next call
    does (one CLUSTER SLOTS on a live node). require_full_coverage=False keeps the slots of live masters
    usable when some slots have no master. RedisClusterException (a db other than 0, a unix socket) says the
    url cannot name a cluster."""
    from redis.asyncio.cluster import RedisCluster

    return RedisCluster.from_url(url, require_full_coverage=False, **_timeouts(connect_timeout_s, op_timeout_s))


def sentinel_client(target: SentinelTarget, connect_timeout_s: float, op_timeout_s: float):
    """The master of `target.service`: each new connection asks the sentinels (in turn, each bounded by the
    timeouts) where the master is, so after a failover the client follows the promoted replica."""
    from redis.asyncio.sentinel import Sentinel

    timeouts = _timeouts(connect_timeout_s, op_timeout_s)
    tls = {"ssl": True} if target.tls else {}
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs={**timeouts, **tls})
    return sentinel.master_for(
        target.service, db=target.db, username=target.username, password=target.password, **timeouts, **tls
    )


def url_attributes(url: str) -> dict[str, Any]:
    """Span attributes naming the Redis behind a url (never its password); per-call ones (a cluster's node,
    a sentinel's current master) are added by the cache."""
    attributes: dict[str, Any] = {"db.system.name": "redis", "db.system": "redis"}
    if is_sentinel_url(url):
        try:
            target = parse_sentinel_url(url)
        except ValueError:
            return attributes
        return {
            **attributes,
            "db.namespace": str(target.db),
            "internvl.cache.topology": "sentinel",
            "internvl.cache.sentinel.service": target.service,
            "internvl.cache.sentinel.hosts": target.hosts,
        }
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError:
        return attributes
    if hostname:
        attributes["server.address"] = hostname
    if port:
        attributes["server.port"] = port
    db = parts.path.lstrip("/") or "0"
    if db.isdigit():
        attributes["db.namespace"] = db
    return attributes
