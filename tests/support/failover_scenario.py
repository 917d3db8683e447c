"""A failover while several processes merge: what was sent, acknowledged, counted, lost, doubled.

``run_failover(directory, replicas=N)`` starts a ``SentinelGroup`` whose replica lags by
``lag`` seconds, starts ``workers`` processes that each merge batches into an env of their own
through the ``redis+sentinel://`` URL, SIGKILLs the primary once every worker has had
``before`` batches acknowledged and ``warm_seconds`` have passed, waits for the Sentinels to
promote the replica, restarts the old server (the Sentinels turn it into a replica of the new
primary, so ``replicas=1`` can be met again), lets the workers go on for a while, stops them
and counts.

Batch ``j`` (1, 2, 3, ...) of worker ``i`` is the single score ``j`` merged into an env of its
own, ``w<i>-<j>``, so the count of that env is exactly how many times the batch was counted:
lost (an acknowledged batch counted 0 times) and doubled (any batch counted more than once) are
measured per batch, not inferred from totals (where a loss and a double would cancel). A worker
retries a batch (the same call with the same values, as a trainer should) until it returns;
only then is it acknowledged and the next one sent. Used by ``test_sentinel.py`` and
``benchmarks/bench_failover.py``; the stdlib, redis-py and the library only.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support.redis_sentinel import SentinelGroup
from tests.support.worker_processes import stop_workers

__all__ = ["FailoverFigures", "run_failover"]

NAMESPACE = "srn-failover"
#: How long a worker keeps retrying one batch before it gives up (and reports it unacknowledged).
GIVE_UP_AFTER = 40.0


@dataclass
class FailoverFigures:
    """The outcome of one run, summed over the workers (``per_worker`` keeps each one's)."""

    replicas: int
    lag: float
    sent: int = 0
    acknowledged: int = 0
    acknowledged_after_failover: int = 0
    counted: int = 0
    lost: int = 0
    doubled: int = 0
    counted_unacknowledged: int = 0
    each_once: bool = True
    not_replicated_errors: int = 0
    failover_seconds: float = 0.0
    per_worker: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> str:
        return (f"replicas={self.replicas} lag={self.lag * 1000:.0f}ms: sent {self.sent}, acknowledged "
                f"{self.acknowledged} ({self.acknowledged_after_failover} after the failover), counted "
                f"{self.counted}, lost {self.lost}, doubled {self.doubled}, each acknowledged batch once: "
                f"{self.each_once}, counted unacknowledged {self.counted_unacknowledged}, "
                f"NotReplicatedError raised {self.not_replicated_errors}x, failover took "
                f"{self.failover_seconds:.1f} s")


def _worker(url: str, index: int, replicas: int, replica_timeout: float, failed_over: Any, stop: Any,
            acks: Any, reports: Any) -> None:
    from shared_rewardnorm import NotReplicatedError, RetryPolicy, StatsStore

    store = StatsStore(url, NAMESPACE, replicas=replicas, replica_timeout=replica_timeout,
                       retry=RetryPolicy(attempts=20, base=0.05, cap=0.5))
    sent = acknowledged = after = not_replicated = 0
    unfinished = False
    while not stop.is_set():
        batch = acknowledged + 1
        sent += 1
        started = time.monotonic()
        while True:
            try:
                store.update(batch_env(index, batch), [float(batch)], batch_id=batch)  # its retry: the same name
                break
            except NotReplicatedError:
                not_replicated += 1
            except Exception:  # the retries ran out mid-failover: call again, as a trainer would
                time.sleep(0.05)
            if time.monotonic() - started > GIVE_UP_AFTER:
                unfinished = True
                break
        if unfinished:
            break
        acknowledged += 1
        acks[index] = acknowledged
        if failed_over.is_set():
            after += 1
    reports.put({"worker": index, "sent": sent, "acknowledged": acknowledged, "after_failover": after,
                 "not_replicated": not_replicated, "duplicates": store.duplicates, "retries": store.retries})
    store.close()


def batch_env(worker: int, batch: int) -> str:
    """The env that batch ``batch`` of ``worker`` alone is merged into: its count is how many
    times that batch was counted."""
    return f"w{worker}-{batch}"


def _wait(condition: Any, what: str, timeout: float, processes: list[Any]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        dead = [process.exitcode for process in processes if not process.is_alive()]
        if dead:
            raise RuntimeError(f"a worker exited (exit codes {dead}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def run_failover(directory: Path, *, replicas: int, lag: float = 0.2, workers: int = 3, before: int = 10,
                 warm_seconds: float = 1.0, after_seconds: float = 2.0,
                 replica_timeout: float = 1.0) -> FailoverFigures:
    """One failover under load; see the module docstring."""
    figures = FailoverFigures(replicas=replicas, lag=lag)
    context = multiprocessing.get_context("spawn")
    with SentinelGroup(directory, lag=lag) as group:
        failed_over, stop = context.Event(), context.Event()
        acks = context.Array("i", workers)
        reports = context.Queue()
        processes = [context.Process(target=_worker, args=(group.url, index, replicas, replica_timeout,
                                                            failed_over, stop, acks, reports), daemon=True)
                     for index in range(workers)]
        for process in processes:
            process.start()
        try:
            _wait(lambda: min(acks[:]) >= before, f"{before} acknowledged batches per worker", 60, processes)
            time.sleep(warm_seconds)
            started = time.monotonic()
            group.kill_primary()
            failed_over.set()
            group.wait_for_new_primary()
            figures.failover_seconds = time.monotonic() - started
            # No second failover: on a loaded machine the new primary can miss a 1 s heartbeat
            # (it forks to sync the returning server), and the Sentinels once promoted that
            # server before its initial sync had finished, losing everything (see
            # docs/operations/persistence-and-failover.md).
            group.set_down_after(30_000)
            group.primary.restart()  # back empty; the Sentinels make it a replica of the new primary
            at_failover = acks[:]
            _wait(lambda: all(now > then for now, then in zip(acks[:], at_failover)),
                  "every worker to have a batch acknowledged by the new primary", 60, processes)
            time.sleep(after_seconds)
            stop.set()
            found = [reports.get(timeout=GIVE_UP_AFTER + 20) for _ in processes]
        finally:
            stop.set()
            stop_workers(processes, reports)
        with redis.Redis(port=group.replica.port, decode_responses=True) as primary:
            for report in sorted(found, key=lambda item: item["worker"]):
                worker, acknowledged = report["worker"], report["acknowledged"]
                pipe = primary.pipeline(transaction=False)
                for batch in range(1, report["sent"] + 1):
                    pipe.hget(f"{NAMESPACE}:{{{batch_env(worker, batch)}}}", "count")
                times = [int(count or 0) for count in pipe.execute()]  # how often each batch was counted
                lost = [batch for batch, n in enumerate(times[:acknowledged], 1) if n == 0]
                report |= {"counted": sum(times), "lost": len(lost), "lost_batches": lost[:3] + lost[-3:],
                           "doubled": sum(max(0, n - 1) for n in times),
                           "counted_unacknowledged": sum(1 for n in times[acknowledged:] if n),
                           "each_once": all(n == 1 for n in times[:acknowledged])}
                figures.per_worker.append(report)
                figures.sent += report["sent"]
                figures.acknowledged += acknowledged
                figures.acknowledged_after_failover += report["after_failover"]
                figures.counted += report["counted"]
                figures.lost += report["lost"]
                figures.doubled += report["doubled"]
                figures.counted_unacknowledged += report["counted_unacknowledged"]
                figures.each_once &= report["each_once"]
                figures.not_replicated_errors += report["not_replicated"]
    return figures
