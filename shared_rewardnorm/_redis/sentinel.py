"""Redis Sentinel: reaching a primary that can move, by URL or through a client the caller made.

Most Redis deployments that are not a Cluster run one primary with replicas, watched by
Sentinels that promote a replica when the primary fails. A client must then ask the Sentinels
where the primary is, and ask again after a failover. redis-py does both in
``redis.sentinel.Sentinel(...).master_for(service)``: the client it returns is a plain
``redis.Redis`` whose connection pool looks the primary up on every new connection, and turns
the old primary's ``READONLY`` reply into a ``ConnectionError`` after it was demoted. That
client (and its ``redis.asyncio.sentinel`` twin) is what ``redis=`` accepts, as for any other
``redis.Redis``; this module builds one from a URL::

    redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]

The credentials are those of the Redis servers (primary and replicas); the Sentinels are
queried without them. ``rediss+sentinel`` (TLS) is not supported: build the client yourself.
The store's retries carry a merge across the failover: a batch sent again is never counted
twice (its batch identity), see ``retry.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "SENTINEL_SCHEME",
    "SentinelURL",
    "aclose_sentinels",
    "async_sentinel_client",
    "close_sentinels",
    "is_sentinel_url",
    "parse_sentinel_url",
    "sentinel_client",
]

SENTINEL_SCHEME = "redis+sentinel://"
_FORM = "redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]"


@dataclass(frozen=True)
class SentinelURL:
    """The parts of a ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a Sentinel-managed primary."""
    return url.startswith(SENTINEL_SCHEME)


def _bad(why: str) -> ValueError:
    # The URL may hold a password: name the problem, not the URL.
    return ValueError(f"bad Sentinel URL ({why}); expected {_FORM}")


def parse_sentinel_url(url: str) -> SentinelURL:
    """Split a ``redis+sentinel://`` URL; raises ``ValueError`` saying what is wrong."""
    if not is_sentinel_url(url):
        raise _bad("it must start with redis+sentinel://")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise _bad("no ?query or #fragment is understood")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if credentials:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = []
    for address in hosts.split(","):
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad(f"each Sentinel is host:port, got {address!r}")
        sentinels.append((host.strip("[]"), int(port)))
    path = parts.path.split("/")[1:]
    if not path or not path[0]:
        raise _bad("the service name (the primary's name in the Sentinels' config) is missing")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise _bad(f"after the service name only a db number may follow, got {parts.path!r}")
    db = int(path[1]) if len(path) == 2 else 0
    return SentinelURL(tuple(sentinels), unquote(path[0]), db, username, password)


def _server_options(parsed: SentinelURL, options: dict[str, Any]) -> dict[str, Any]:
    return {"db": parsed.db, "username": parsed.username, "password": parsed.password, **options}


def _sentinel_options(options: dict[str, Any], asyncio: bool = False) -> dict[str, Any]:
    """How the Sentinels are queried: the servers' timeouts, no credentials, and no retry of
    one Sentinel (redis-py would back off for seconds on each before asking the next): the
    store's retry policy asks them all again. An asyncio client gets redis-py's asyncio
    ``Retry`` (it converts a sync one with a warning)."""
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    names = ("socket_timeout", "socket_connect_timeout")
    timeouts: dict[str, Any] = {name: options[name] for name in names if name in options}
    return {**timeouts, "retry": (AsyncRetry if asyncio else Retry)(NoBackoff(), 0)}


def sentinel_client(url: str, **options: Any) -> Any:
    """A ``redis.Redis`` for the primary a Sentinel URL names (it follows failovers).
    ``options`` (timeouts, say) go to the primary's connections."""
    from redis.sentinel import Sentinel

    parsed = parse_sentinel_url(url)
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=_sentinel_options(options))
    return sentinel.master_for(parsed.service, **_server_options(parsed, options))


def async_sentinel_client(url: str, **options: Any) -> Any:
    """The ``redis.asyncio`` twin of ``sentinel_client``."""
    from redis.asyncio.sentinel import Sentinel

    parsed = parse_sentinel_url(url)
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=_sentinel_options(options, asyncio=True))
    return sentinel.master_for(parsed.service, **_server_options(parsed, options))


def _sentinel_clients(client: Any) -> list[Any]:
    # A master_for client's pool knows its Sentinel manager, which holds one client per Sentinel.
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    return list(getattr(manager, "sentinels", []))


def close_sentinels(client: Any) -> None:
    """Close the connections to the Sentinels behind a sync ``master_for`` client (closing the
    client closes only its connections to the primary)."""
    for sentinel in _sentinel_clients(client):
        sentinel.close()


async def aclose_sentinels(client: Any) -> None:
    """The asyncio twin of ``close_sentinels``."""
    for sentinel in _sentinel_clients(client):
        await sentinel.aclose()
