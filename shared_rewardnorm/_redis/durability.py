"""Waiting for replicas: a merge that survives the failover of its primary.

Redis replicates asynchronously: a primary acknowledges a write before any replica has it, so
a failover (Sentinel promoting a replica) can lose merges the old primary had acknowledged, and
a trainer would go on with counts silently short. ``StatsStore(..., replicas=N)`` sends every
merge in one pipeline with ``WAIT N timeout``: one round trip, and the call returns only once N
replicas hold the merge (with its batch record, which replicates with the stats). If fewer
acknowledge in time, ``NotReplicatedError`` says so after the merge is known to be stored once
on the primary. Calling again with the same ``batch_id`` (and values) is the retry: the batch
ledger sends the same request, so it counts once and waits for the replicas again. Without a
``batch_id`` a call is always a new batch, so calling again would count it a second time.

A retry of a merge that the script recognizes as a duplicate still covers the original merge's
``WAIT``: Redis records the primary's replication offset in the client after every command it
runs, read-only ones included (antirez in redis/redis#6393), and ``WAIT`` waits for that
offset. After the duplicate's script call the offset is the primary's current one, which is past
the original merge's write whether that came on this connection or on one lost since.

``WAIT`` is no consensus: a replica that acknowledged can still be passed over at promotion in a
group of several replicas, so pick N (and the Sentinels' quorum) so that any promotable replica
has it; with one replica, N=1 covers it. A Redis Cluster (its replicas are per shard, and the
script's node is chosen per key) and the embedded store (no replicas) refuse the option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shared_rewardnorm._redis.connection import is_cluster, url_from_environment
from shared_rewardnorm.errors import NotReplicatedError

__all__ = ["ReplicaWait", "check_socket_timeout", "replica_wait"]


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """``WAIT <replicas> <timeout_ms>`` after every merge."""

    replicas: int
    timeout: float

    @property
    def args(self) -> tuple[str, str]:
        """WAIT's arguments: the replica count and the timeout in whole milliseconds (at least 1:
        ``WAIT n 0`` would block forever)."""
        return str(self.replicas), str(max(1, math.ceil(self.timeout * 1000)))

    def check(self, key: str, acknowledged: Any, frozen: bool = False) -> None:
        """Raise ``NotReplicatedError`` when fewer replicas than required acknowledged, or WAIT
        itself failed (``acknowledged`` is then its error). ``frozen``: the env was frozen, so
        the script merged nothing (and the message must not say it stored the batch)."""
        what = ("the env is frozen, so the batch was not merged (a retry never counts it either), and"
                if frozen else "the merge is stored (once) on the primary, but")
        if isinstance(acknowledged, Exception):
            raise NotReplicatedError(
                f"{key}: {what} WAIT failed ({acknowledged}); an ACL user needs +wait with replicas=. "
                f"{_RETRY}",
                key=key, acknowledged=0, required=self.replicas) from acknowledged
        if int(acknowledged) < self.replicas:
            raise NotReplicatedError(
                f"{key}: {what} only {int(acknowledged)} of the {self.replicas} required replicas acknowledged "
                f"the primary's writes within {self.timeout:g} s, so a failover now could lose them (check the "
                f"replicas' health). {_RETRY}",
                key=key, acknowledged=int(acknowledged), required=self.replicas)


#: The end of every ``NotReplicatedError`` message (see the module docstring).
_RETRY = ("Call again with the same batch_id and values to wait again: it counts at most once (without a "
          "batch_id, a call is a new batch and would count again).")


def replica_wait(replicas: Any, timeout: Any) -> ReplicaWait | None:
    """Validate ``replicas=`` / ``replica_timeout=`` (before anything is sent); None when off."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"replicas must be an int >= 0 (0: do not wait for replicas), got {replicas!r}")
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout)
            or timeout <= 0):
        raise ValueError(f"replica_timeout must be a finite number of seconds > 0, got {timeout!r}")
    return ReplicaWait(replicas, float(timeout)) if replicas else None


def check_socket_timeout(wait: ReplicaWait | None, client: Any) -> None:
    """Refuse a client whose ``socket_timeout`` is not longer than ``replica_timeout``: ``WAIT``
    blocks up to ``replica_timeout``, so the client would give up first and turn every merge
    the replicas are slow to acknowledge into a ``TimeoutError`` and a retry, never a
    ``NotReplicatedError``. A client without a socket timeout (redis-py's default) waits."""
    if wait is None:
        return
    pool = getattr(client, "connection_pool", None)
    socket_timeout = getattr(pool, "connection_kwargs", {}).get("socket_timeout")
    if isinstance(socket_timeout, (int, float)) and socket_timeout <= wait.timeout:
        raise ValueError(f"replica_timeout ({wait.timeout:g} s) must be shorter than the client's socket_timeout "
                         f"({socket_timeout:g} s): WAIT blocks up to replica_timeout, so the client would time "
                         "out first and retry instead of raising NotReplicatedError")


def refuse_unsupported(wait: ReplicaWait | None, target: Any, cluster: bool) -> None:
    """``replicas=`` needs one primary with replicas: refuse a cluster and the embedded store,
    from the store's ``redis=`` and ``cluster=`` arguments (before any client is made; ``None``
    is the embedded store unless ``$SHARED_REWARDNORM_URL`` names a server)."""
    if wait is None:
        return
    if cluster or is_cluster(target):
        raise ValueError("replicas= is not supported on a Redis Cluster (its replicas are per shard); "
                         "use a primary with replicas (Sentinel), or replicas=0")
    if (target is None and url_from_environment(cluster) is None) or type(target).__module__.startswith("fakeredis"):
        raise ValueError("replicas= needs a Redis server with replicas; the embedded store has none")
