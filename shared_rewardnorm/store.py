"""``StatsStore``: running statistics per environment, kept in Redis.

Each env's statistics are one hash at ``<namespace>:{<env>}`` (readable with ``redis-cli
HGETALL``). Updates go through the ``merge`` script, which validates, merges and returns the
merged statistics in one atomic round trip; nothing here does read-modify-write on the client.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from .connection import resolve_client
from .errors import WrongTypeError, translate_response_error
from .inputs import stats_key, validate_env, validate_namespace
from .protocol import STAT_FIELDS, decode_reply, decode_stored, encode_stats
from .scripts import register_scripts
from .stats import RunningStats

__all__ = ["StatsStore"]



class StatsStore:
    """Shared running statistics per environment.

    Args:
        redis: a ``redis.Redis`` client, a ``redis://`` / ``rediss://`` / ``unix://`` URL, or
            ``None`` for the embedded in-process store (shared by every store in the process).
        namespace: prefix of every key this store touches (``<namespace>:{<env>}``).
    """

    def __init__(self, redis: Any = None, namespace: str = "rewardnorm") -> None:
        self._namespace = validate_namespace(namespace)
        self._client = resolve_client(redis)
        self._scripts = register_scripts(self._client)

    @property
    def client(self) -> Any:
        """The underlying redis-py client."""
        return self._client

    @property
    def namespace(self) -> str:
        """The key prefix of this store."""
        return self._namespace

    def key(self, env: str) -> str:
        """The Redis key of ``env``'s stats hash (validates the name)."""
        return stats_key(self._namespace, validate_env(env))

    def update(self, env: str, values: Any) -> RunningStats:
        """Merge ``values`` into ``env``'s statistics and return the statistics right after.

        One atomic round trip; the payload is a five-number summary whatever the batch size.
        Bad values raise ``TypeError``/``ValueError`` before anything is sent. An empty batch
        changes nothing and returns the current statistics.
        """
        key = self.key(env)
        batch = RunningStats.from_values(values)
        if batch.count == 0:
            return self._read(key)
        return self._run(self._scripts.merge, key, batch)

    def merge(self, env: str, stats: RunningStats) -> RunningStats:
        """Merge a precomputed summary (for example from ``RunningStats.from_values``) into
        ``env``'s statistics and return the result, atomically."""
        key = self.key(env)
        if not isinstance(stats, RunningStats):
            raise TypeError(f"stats must be RunningStats, got {type(stats).__name__}")
        if stats.count == 0:
            return self._read(key)
        return self._run(self._scripts.merge, key, stats)

    def get(self, env: str) -> RunningStats:
        """``env``'s statistics (empty if it has none). Raises ``CorruptStatsError`` for a
        malformed hash and ``WrongTypeError`` if the key holds another type."""
        return self._read(self.key(env))

    def set(self, env: str, stats: RunningStats) -> RunningStats:
        """Replace ``env``'s statistics atomically (empty stats delete the hash)."""
        key = self.key(env)
        if not isinstance(stats, RunningStats):
            raise TypeError(f"stats must be RunningStats, got {type(stats).__name__}")
        return self._run(self._scripts.replace, key, stats)

    def reset(self, env: str) -> None:
        """Forget ``env``'s statistics."""
        self.set(env, RunningStats())

    def _run(self, script: Any, key: str, stats: RunningStats) -> RunningStats:
        try:
            reply = script(keys=[key], args=encode_stats(stats))
        except ResponseError as exc:
            raise translate_response_error(exc) from exc
        return decode_reply(reply)

    def _read(self, key: str) -> RunningStats:
        try:
            values = self._client.hmget(key, STAT_FIELDS)
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise WrongTypeError(f"{key}: holds a non-hash value, not a stats hash", key=key) from exc
            raise
        return decode_stored(key, values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client={self._client!r}, namespace={self._namespace!r})"
