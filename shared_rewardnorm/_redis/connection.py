"""Turning the ``redis=`` argument into a client, and the embedded in-process server.

``redis=`` takes a ready client (used as is: its pool, retries and protocol are the caller's
choice): ``redis.Redis`` or ``redis.cluster.RedisCluster`` for the sync classes, their
``redis.asyncio`` twins for the async ones (a Sentinel-managed primary is such a client, from
``Sentinel(...).master_for(service)``). It also takes a URL (``redis://``, ``rediss://``,
``unix://``, ``redis+sentinel://``, see ``sentinel.py``; ``cluster=True`` connects to a Redis
Cluster through that seed node), or ``None``.

``None`` fails safe in a fleet: it means the URL in ``$SHARED_REWARDNORM_URL`` when that is set
(so one exported variable points every process, every adapter and the CLI at the same server),
and only otherwise the embedded store, fakeredis with Lua, so the library works with no server
at all. The embedded store is local to the process, which is wrong for a fleet that forgot the
variable, so its first use in a process logs one warning (``logging``, logger
``shared_rewardnorm``). All embedded clients of one process share one embedded server, as
clients of a real one do.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from shared_rewardnorm._redis.sentinel import async_sentinel_client, close_sentinels, is_sentinel_url, sentinel_client

__all__ = [
    "URL_VARIABLE",
    "check_url",
    "close_client",
    "describe_client",
    "embedded_server",
    "is_cluster",
    "resolve_async_client",
    "resolve_client",
    "url_from_environment",
]

#: The environment variable that ``redis=None`` (and the CLI without ``--url``) reads.
URL_VARIABLE = "SHARED_REWARDNORM_URL"

logger = logging.getLogger("shared_rewardnorm")

_embedded_lock = threading.Lock()
_embedded: Any = None
#: The process that last logged the local-statistics warning (a forked child warns again).
_warned_pid: int | None = None

_URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
#: Connections of an asyncio client this library creates. Coroutines beyond this many wait for a
#: free connection (a blocking pool) rather than fail: redis.asyncio's default pool raises
#: MaxConnectionsError past 100, which breaks ``asyncio.gather`` over a few hundred batches.
ASYNC_POOL_SIZE = 64
_SYNC_CLIENTS = (redis.Redis, redis.cluster.RedisCluster)
_ASYNC_CLIENTS = (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)


def embedded_server() -> Any:
    """The process-wide embedded fakeredis server, created on first use."""
    global _embedded
    with _embedded_lock:
        if _embedded is None:
            import fakeredis  # imported lazily: only the embedded store needs it

            _embedded = fakeredis.FakeServer()
        return _embedded


def is_cluster(client: Any) -> bool:
    """True for a Redis Cluster client (sync or asyncio)."""
    return isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster))


def check_url(url: str, cluster: bool = False, source: str = "redis URL") -> None:
    """Raise ``ValueError`` unless ``url`` is a URL this library connects to (``source`` names
    where it came from in the message); adapters check their settings with it up front."""
    if not url.startswith(_URL_SCHEMES):
        raise ValueError(f"{source} must start with redis://, rediss://, unix:// or redis+sentinel://, got {url!r}")
    if cluster and url.startswith(("unix://", "redis+sentinel://")):
        raise ValueError(f"a Redis Cluster is reached over TCP: {source} must be a redis:// or rediss:// URL")
    _check_database(url, source)


def _check_database(url: str, source: str) -> None:
    """A database index that is not a non-negative integer is refused: redis-py would quietly
    connect to database 0 for ``redis://host/abc`` (another trainer's statistics, perhaps)."""
    parts = urlsplit(url)
    candidates = []
    if url.startswith(("redis://", "rediss://")) and parts.path not in ("", "/"):
        candidates.append(("path", parts.path[1:]))
    candidates.extend(("db=", value) for value in parse_qs(parts.query, keep_blank_values=True).get("db", []))
    for where, text in candidates:
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"{source}: the database must be a non-negative integer, got {text!r} "
                             f"(in the URL's {where}: {redact_url(url)})")


def url_from_environment(cluster: bool = False) -> str | None:
    """``$SHARED_REWARDNORM_URL``, or ``None`` when it is unset. A value that is empty or blank
    (``export SHARED_REWARDNORM_URL="$UNSET"``) or malformed raises ``ValueError`` naming the
    variable: a mistake must not quietly fall back to process-local statistics (or, in the CLI,
    to a localhost server whose statistics a ``reset`` would delete). The library and the CLI
    share this one rule."""
    url = os.environ.get(URL_VARIABLE)
    if url is None:
        return None
    url = url.strip()
    if not url:
        raise ValueError(f"${URL_VARIABLE} is set but blank (an unset shell variable?); set it to a Redis URL, "
                         "or unset it")
    check_url(url, cluster, f"${URL_VARIABLE}")
    return url


def _default_target(cluster: bool) -> str | None:
    """What ``redis=None`` means: the variable's URL, else ``None`` (the embedded store, after
    the once-per-process warning)."""
    global _warned_pid
    url = url_from_environment(cluster)
    if url is not None:
        return url
    with _embedded_lock:
        first = _warned_pid != os.getpid()
        _warned_pid = os.getpid()
    if first:
        logger.warning("shared_rewardnorm: redis=None and $%s is unset, so the statistics live in an embedded "
                       "store local to this process (pid %d), not shared with any other process; set $%s or "
                       "pass redis= to share them", URL_VARIABLE, os.getpid(), URL_VARIABLE)
    return None


def _wrong_client(target: Any, expected: str) -> TypeError:
    hint = ""
    if type(target).__name__ == "Sentinel":
        hint = " (for a Sentinel, pass sentinel.master_for(service_name), the primary's client)"
    return TypeError(f"redis must be {expected}, a redis:// / rediss:// / unix:// / redis+sentinel:// URL, or "
                     f"None for the embedded store; got {type(target).__name__}{hint}")


def resolve_client(target: Any, *, cluster: bool = False, **url_options: Any) -> Any:
    """A sync client for ``target``: a ``redis.Redis`` / ``RedisCluster`` (as is), a URL, or
    ``None`` (``$SHARED_REWARDNORM_URL``, else the embedded server). ``url_options`` (timeouts,
    say) go to ``from_url`` when ``target`` is a URL."""
    if target is None:
        target = _default_target(cluster)
    if target is None:
        import fakeredis

        return fakeredis.FakeRedis(server=embedded_server())
    if isinstance(target, str):
        check_url(target, cluster)
        if is_sentinel_url(target):
            return sentinel_client(target, **url_options)
        client_class = redis.cluster.RedisCluster if cluster else redis.Redis
        return client_class.from_url(target, **url_options)
    if isinstance(target, _SYNC_CLIENTS):
        return target
    if isinstance(target, _ASYNC_CLIENTS):
        raise TypeError("this is an asyncio client: use AsyncStatsStore / AsyncSharedRewardNormalizer")
    raise _wrong_client(target, "a redis.Redis or redis.cluster.RedisCluster client")


def resolve_async_client(target: Any, *, cluster: bool = False) -> Any:
    """An asyncio client for ``target``: a ``redis.asyncio.Redis`` / ``RedisCluster`` (as is),
    a URL, or ``None`` (``$SHARED_REWARDNORM_URL``, else the embedded server)."""
    if target is None:
        target = _default_target(cluster)
    if target is None:
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=embedded_server(), max_connections=ASYNC_POOL_SIZE,
                                        connection_pool_class=redis.asyncio.BlockingConnectionPool)
    if isinstance(target, str):
        check_url(target, cluster)
        if is_sentinel_url(target):
            return async_sentinel_client(target)
        if cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(target)
        pool = redis.asyncio.BlockingConnectionPool.from_url(target, max_connections=ASYNC_POOL_SIZE, timeout=None)
        return redis.asyncio.Redis.from_pool(pool)
    if isinstance(target, _ASYNC_CLIENTS):
        return target
    if isinstance(target, _SYNC_CLIENTS):
        raise TypeError("this is a blocking client: use StatsStore / SharedRewardNormalizer")
    raise _wrong_client(target, "a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster client")


def close_client(client: Any) -> None:
    """Close a sync client's connections now. ``RedisCluster.close()`` alone does not: the
    per-node clients it builds from a URL keep their pools' sockets open until garbage
    collection (an unclosed-socket ResourceWarning); nor does a Sentinel client's close() close
    its connections to the Sentinels."""
    if is_cluster(client):
        for node in client.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
    client.close()
    close_sentinels(client)


def describe_client(client: Any) -> str:
    """Where ``client`` connects, for error messages: ``host:port``, a socket path, a Sentinel
    service, a cluster's seed node, or the embedded store. Never a password."""
    if type(client).__module__.startswith("fakeredis"):
        return "the embedded store"
    if is_cluster(client):
        try:
            node = client.get_default_node()
        except Exception:  # an asyncio cluster client before its first command has no nodes yet
            node = None
        return "a Redis Cluster" + (f" via {node.host}:{node.port}" if node is not None else "")
    pool = getattr(client, "connection_pool", None)
    service = getattr(pool, "service_name", None)
    if service is not None:
        return f"Sentinel service {service!r}"
    options = getattr(pool, "connection_kwargs", {})
    if "path" in options:
        return f"unix:{options['path']}"
    if "host" in options:
        return f"{options['host']}:{options.get('port', 6379)}"
    return type(client).__name__


def redact_url(url: str) -> str:
    """``url`` with its password hidden, so error messages can be pasted safely."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}"))
