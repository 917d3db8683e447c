"""The library's exceptions, and the one place where script errors become them.

The Lua scripts answer domain errors as ``REWARDNORM_<KIND> <key> <detail>`` replies (see the
headers of the files in ``lua/``). redis-py raises those as a generic ``ResponseError``; callers
deserve exceptions they can catch by meaning, that still say which key and which value was wrong.
Every exception keeps the driver's original as ``__cause__``.
"""

from __future__ import annotations

import builtins

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared_rewardnorm._core.schema import ENV_FIELDS

__all__ = [
    "CorruptStatsError",
    "FunctionsNotLoadedError",
    "InvalidStatsError",
    "NotReplicatedError",
    "RewardNormError",
    "StaleBatchError",
    "StatsOverflowError",
    "StoreConfigError",
    "StoreUnavailableError",
    "WrongTypeError",
    "translate_response_error",
]

ERROR_PREFIX = "REWARDNORM_"


class RewardNormError(Exception):
    """Base class of every error this library raises on its own account."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class InvalidStatsError(RewardNormError, ValueError):
    """Statistics or script arguments that are not valid (NaN, negative m2, min > max, ...)."""


class CorruptStatsError(RewardNormError):
    """A stored stats hash holds a malformed field; nothing was overwritten.

    ``key`` names the hash and ``field`` the first bad field (``None`` if it could not be told).
    Fix it by hand (``redis-cli HSET``), or ``reset`` / ``set`` the env.
    """

    def __init__(self, message: str, key: str | None = None, field: str | None = None) -> None:
        super().__init__(message, key)
        self.field = field


class WrongTypeError(RewardNormError, TypeError):
    """The env's key holds something other than a hash (another program uses the name)."""


class StatsOverflowError(RewardNormError, ValueError):
    """Merging would make the statistics non-finite (scores near the float range limit)."""


class StaleBatchError(RewardNormError):
    """A batch's sequence number is too far behind its client's latest for the merge script to
    tell whether it was merged (more batches of one client in flight than the script's window);
    nothing was written."""


class FunctionsNotLoadedError(RewardNormError):
    """``functions=True`` but the server has no Function library of this version: an
    administrator loads it once with ``StatsStore(...).load_functions()`` (or
    ``shared-rewardnorm load-functions``)."""


class NotReplicatedError(RewardNormError):
    """A merge is stored once on the primary (or, for a frozen env, refused as the freeze says),
    but fewer replicas than ``replicas=`` acknowledged it in time (see ``durability.py``).
    Calling again with the same ``batch_id`` and values is safe: it counts once and waits for
    the replicas again. Without a ``batch_id`` every call is a new batch, so calling again would
    count it twice.

    ``acknowledged`` and ``required`` count replicas.
    """

    def __init__(self, message: str, key: str | None = None, *, acknowledged: int = 0, required: int = 0) -> None:
        super().__init__(message, key)
        self.acknowledged = acknowledged
        self.required = required


class StoreUnavailableError(RewardNormError, RedisConnectionError, builtins.ConnectionError):
    """The store could not be reached: a connection error or timeout (or a server still loading,
    a cluster or primary mid-failover) persisted through every try the store's ``RetryPolicy``
    allows. The driver's last error is the ``__cause__``.

    Also a ``redis.exceptions.ConnectionError`` and a builtin ``ConnectionError``, so handlers
    written for either keep working. ``store`` names the server (``host:port``, a socket path,
    a Sentinel service; never a password), ``elapsed`` the seconds spent trying and ``attempts``
    the tries made. The request's fate is unknown: a merge may have landed before the
    connection broke (send it again under a ``batch_id`` to count it once).
    """

    def __init__(self, message: str, key: str | None = None, *, store: str = "", elapsed: float = 0.0,
                 attempts: int = 0) -> None:
        super().__init__(message, key)
        self.store = store
        self.elapsed = elapsed
        self.attempts = attempts


class StoreConfigError(RewardNormError, ValueError):
    """The server refuses the connection's settings: a database index it does not have (its
    ``databases`` setting bounds the index). Nothing was sent; no retry can help."""


_KINDS: dict[str, type[RewardNormError]] = {
    "INVALID": InvalidStatsError,
    "CORRUPT": CorruptStatsError,
    "WRONGTYPE": WrongTypeError,
    "OVERFLOW": StatsOverflowError,
    "STALE": StaleBatchError,
}


def translate_response_error(error: ResponseError) -> Exception:
    """Map a script's ``REWARDNORM_*`` error reply to a library exception.

    Errors that did not come from our scripts are returned unchanged, so callers can always
    ``raise translate_response_error(exc) from exc``. (A missing Function library is the
    scripts' business: ``_redis.scripts.translate_script_error`` checks for it first.)
    """
    message = str(error)
    start = message.find(ERROR_PREFIX)
    if start < 0:
        return error
    message = message[start:]
    kind, _, rest = message[len(ERROR_PREFIX):].partition(" ")
    exc_type = _KINDS.get(kind)
    if exc_type is None:
        return error
    key, _, detail = rest.partition(" ")
    text = f"{key}: {detail}"
    if exc_type is CorruptStatsError:
        # The scripts' CORRUPT details start with the field's name ("m2 must be ...", "min ... is
        # greater than max ..."), or with "batch record" for a client's batch record.
        first = detail.split(" ", 1)[0]
        field = first if first in ENV_FIELDS else None
        return CorruptStatsError(f"corrupt stats hash {text}", key=key, field=field)
    return exc_type(text, key=key)
