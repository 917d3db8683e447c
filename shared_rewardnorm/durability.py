"""Waiting for replicas: a merge that survives the failover of its primary.

Redis replicates asynchronously: a primary acknowledges a write before any replica has it, so
a failover (Sentinel promoting a replica) can lose merges the old primary had acknowledged, and
a trainer would go on with counts silently short. ``StatsStore(..., replicas=N)`` sends every
merge in one pipeline with ``WAIT N timeout``: one round trip, and the call returns only once N
replicas hold the merge (with its batch record, which replicates with the stats). If fewer
acknowledge in time, ``NotReplicatedError`` says so after the merge is known to be stored once
on the primary; calling again with the same values is safe (the batch identity makes it count
once) and waits for the replicas again.

``WAIT`` is no consensus: a replica that acknowledged can still be passed over at promotion in a
group of several replicas, so pick N (and the Sentinels' quorum) so that any promotable replica
has it; with one replica, N=1 covers it. A Redis Cluster (its replicas are per shard, and the
script's node is chosen per key) and the embedded store (no replicas) refuse the option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .connection import is_cluster, url_from_environment
from .errors import NotReplicatedError

__all__ = ["ReplicaWait", "replica_wait"]


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

    def check(self, key: str, acknowledged: Any) -> None:
        """Raise ``NotReplicatedError`` when fewer replicas than required acknowledged, or WAIT
        itself failed (``acknowledged`` is then its error)."""
        if isinstance(acknowledged, Exception):
            raise NotReplicatedError(
                f"{key}: the merge is stored (once) on the primary, but WAIT failed ({acknowledged}); an ACL user "
                "needs +wait with replicas=. Calling again with the same values counts the batch once",
                key=key, acknowledged=0, required=self.replicas) from acknowledged
        if int(acknowledged) < self.replicas:
            raise NotReplicatedError(
                f"{key}: the merge is stored (once) on the primary, but only {int(acknowledged)} of the "
                f"{self.replicas} required replicas acknowledged it within {self.timeout:g} s, so a failover "
                "now could lose it. Call again with the same values: the batch identity makes it count once "
                "and the call waits for the replicas again (or check the replicas' health)",
                key=key, acknowledged=int(acknowledged), required=self.replicas)


def replica_wait(replicas: Any, timeout: Any) -> ReplicaWait | None:
    """Validate ``replicas=`` / ``replica_timeout=`` (before anything is sent); None when off."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"replicas must be an int >= 0 (0: do not wait for replicas), got {replicas!r}")
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout)
            or timeout <= 0):
        raise ValueError(f"replica_timeout must be a finite number of seconds > 0, got {timeout!r}")
    return ReplicaWait(replicas, float(timeout)) if replicas else None


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
