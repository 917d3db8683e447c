"""``shared-rewardnorm snapshot``: BGSAVE on every master, wait, and say where and when.

Redis persists the statistics itself (RDB, AOF); an operator wants a snapshot on demand before
a risky change, and proof that it was written. On a cluster every primary saves its own slots.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from redis.exceptions import ResponseError

from shared_rewardnorm._redis.connection import is_cluster

__all__ = ["SaveReport", "snapshot_masters"]

#: How often ``snapshot`` asks whether a background save has finished.
SAVE_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class SaveReport:
    """Where and when one master saved its RDB file, and whether the save succeeded."""

    master: str
    path: str
    saved_at: datetime
    status: str


def _address(client: redis.Redis) -> str:
    options = client.get_connection_kwargs()
    return options.get("path") or f"{options.get('host')}:{options.get('port')}"


def _masters(client: Any) -> list[tuple[str, redis.Redis]]:
    """Every master as a plain client: the client itself, or one per cluster primary."""
    if is_cluster(client):
        return [(node.name, client.get_redis_connection(node)) for node in client.get_primaries()]
    return [(_address(client), client)]


def _persistence(name: str, master: redis.Redis) -> dict[str, Any]:
    try:
        return master.info("persistence")
    except ResponseError as exc:
        if "unknown command" in str(exc).lower():
            raise ValueError(f"{name} does not report INFO persistence, so it cannot snapshot (an embedded "
                             "fakeredis server keeps everything in memory)") from None
        raise


@dataclass(frozen=True)
class _Deadline:
    """The one ``--timeout`` budget every master's wait shares."""

    timeout: float
    at: float

    @classmethod
    def after(cls, timeout: float) -> _Deadline:
        return cls(timeout, time.monotonic() + timeout)

    def check(self, name: str) -> None:
        if time.monotonic() > self.at:
            raise TimeoutError(f"{name}: a background save is still running after {self.timeout:g} s (--timeout)")


def _wait_for(name: str, master: redis.Redis, busy_fields: Sequence[str], deadline: _Deadline) -> None:
    """Poll INFO persistence until none of ``busy_fields`` is set."""
    while any(int(_persistence(name, master).get(busy, 0)) for busy in busy_fields):
        deadline.check(name)
        time.sleep(SAVE_POLL_SECONDS)


def _start_bgsave(name: str, master: redis.Redis, deadline: _Deadline) -> None:
    """BGSAVE; if another save (or an AOF rewrite) holds the fork, wait for it, then ours."""
    while True:
        try:
            master.bgsave(schedule=False)  # SCHEDULE would answer "scheduled" with nothing running yet
            return
        except ResponseError as exc:
            message = str(exc)
            if "already in progress" not in message and "Another child process is active" not in message:
                raise
        _wait_for(name, master, ("rdb_bgsave_in_progress", "aof_rewrite_in_progress"), deadline)


def _config_value(master: redis.Redis, parameter: str) -> str | None:
    try:
        return master.config_get(parameter).get(parameter)
    except ResponseError:  # CONFIG can be renamed away or denied by an ACL
        return None


def _report(name: str, master: redis.Redis) -> SaveReport:
    info = _persistence(name, master)
    directory, filename = _config_value(master, "dir"), _config_value(master, "dbfilename")
    path = posixpath.join(directory, filename) if directory and filename else "(unknown: CONFIG GET refused)"
    saved_at = datetime.fromtimestamp(int(info["rdb_last_save_time"])).astimezone()  # = LASTSAVE
    return SaveReport(name, path, saved_at, str(info.get("rdb_last_bgsave_status", "unknown")))


def snapshot_masters(client: Any, timeout: float = 60.0) -> list[SaveReport]:
    """BGSAVE on every master at once, wait until each has finished (within ``timeout`` seconds
    in all), and report where and when each saved.

    Our BGSAVE is accepted only when no save is running, and the server marks it in progress
    before it replies, so the first later ``rdb_bgsave_in_progress:0`` means ours has ended
    (LASTSAVE alone has one-second resolution and can miss a second save in the same second).
    """
    import fakeredis

    if isinstance(client, fakeredis.FakeRedis):
        raise TypeError("the embedded store lives in this process's memory: there is no file to snapshot")
    masters = _masters(client)
    for name, master in masters:
        _persistence(name, master)  # every master must support it before any of them saves
    deadline = _Deadline.after(timeout)
    for name, master in masters:
        _start_bgsave(name, master, deadline)
    for name, master in masters:
        _wait_for(name, master, ("rdb_bgsave_in_progress",), deadline)
    return [_report(name, master) for name, master in masters]
