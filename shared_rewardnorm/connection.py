"""Turning the ``redis=`` argument into a client, and the embedded in-process server.

``redis=`` takes a ready ``redis.Redis`` client (used as is: its pool, retries and protocol are
the caller's choice), a URL (``redis://``, ``rediss://``, ``unix://``), or ``None``. ``None``
means the embedded store: fakeredis with Lua, so the library works with no server at all. All
embedded stores of one process share one embedded server, just as all clients of one real
server see the same data.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

__all__ = ["resolve_client", "embedded_server", "is_embedded"]

_embedded_lock = threading.Lock()
_embedded: Any = None


def embedded_server() -> Any:
    """The process-wide embedded fakeredis server, created on first use."""
    global _embedded
    with _embedded_lock:
        if _embedded is None:
            import fakeredis  # imported lazily: only the embedded store needs it

            _embedded = fakeredis.FakeServer()
        return _embedded


def _embedded_client() -> redis.Redis:
    import fakeredis

    return fakeredis.FakeRedis(server=embedded_server())


def is_embedded(client: Any) -> bool:
    """True for a client of the embedded server."""
    return type(client).__module__.startswith("fakeredis")


def resolve_client(target: Any) -> redis.Redis:
    """A sync client for ``target``: a ``redis.Redis`` (returned as is), a URL, or ``None``."""
    if target is None:
        return _embedded_client()
    if isinstance(target, str):
        if not target.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis URL must start with redis://, rediss:// or unix://, got {target!r}")
        return redis.Redis.from_url(target)
    if isinstance(target, redis.Redis):
        return target
    raise TypeError("redis must be a redis.Redis client, a redis:// / rediss:// / unix:// URL, "
                    f"or None for the embedded store; got {type(target).__name__}")
