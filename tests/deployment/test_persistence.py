"""Crash recovery: what Redis's persistence gives back after ``kill -9`` is exactly what was
acknowledged (AOF, ``appendfsync always``) or exactly the snapshot (RDB), batch records included,
so the exactly-once promise holds across a crash and a restart.

Every test runs its own ``redis-server`` in a temp dir (``tests/support/redis_servers.py``) and crashes
it with SIGKILL; the shared server on 6379 is never touched.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import random
import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from shared_rewardnorm import RetryPolicy, RunningStats, StatsStore
from shared_rewardnorm._core.keys import batch_record_key
from shared_rewardnorm._core.protocol import MERGED, decode_reply
from shared_rewardnorm._core.store_ops import DEFAULT_BATCH_RECORD_TTL
from shared_rewardnorm._redis.scripts import script_source
from tests.support.helpers import assert_summarizes, require_binaries, wait_for
from tests.support.redis_servers import RedisServer
from tests.support.worker_processes import stop_workers

pytestmark = pytest.mark.own_server

#: docker-compose.yml's AOF settings, with the fsync window closed: a reply is sent only after
#: the write is in the AOF and fsynced, so every acknowledged merge must survive a crash.
AOF_ALWAYS = ["--appendonly", "yes", "--appendfsync", "always"]
#: RDB only, and only on an explicit BGSAVE.
RDB_ONLY = ["--save", "", "--appendonly", "no"]

WORKERS = 4
BATCHES = 300
#: The server is killed once this many merges were acknowledged (a sixth of them).
KILL_AFTER = WORKERS * BATCHES // 6
#: Seconds a worker waits between batches, so the crash lands mid-stream for every worker.
PACE = 0.002
ENV = "crash"
WORKER_RETRY = RetryPolicy(attempts=60, base=0.02, cap=0.3)


def merged_stats(reply: Any) -> tuple[RunningStats, bool]:
    """A merge reply's totals, and whether that call merged its batch."""
    info, outcome = decode_reply(reply)
    return info.stats, outcome == MERGED


def worker_batches(worker: int) -> list[list[float]]:
    """The fixed, deterministic batches one worker sends."""
    rng = random.Random(7919 * (worker + 1))
    return [[rng.gauss(10.0 * worker - 12.5, 1.0 + worker) for _ in range(rng.randint(1, 20))]
            for _ in range(BATCHES)]


def merge_worker(url: str, namespace: str, worker: int, go: Any, reports: Any) -> None:
    """A trainer process: merge its batches one after the other, reporting for each the
    monotonic time it was first sent and the time its merge was acknowledged (CLOCK_MONOTONIC
    is system-wide, so the parent can compare them with the moment it killed the server)."""
    store = None
    try:
        store = StatsStore(url, namespace, retry=WORKER_RETRY)
        reports.put(("ready", worker, store.client_id))
        if not go.wait(60):
            raise RuntimeError("never told to start")
        for index, batch in enumerate(worker_batches(worker)):
            sent = time.monotonic()
            store.update(ENV, batch)
            reports.put(("ack", worker, index, sent, time.monotonic()))
            time.sleep(PACE)
        reports.put(("done", worker, store.retries, store.duplicates))
    except BaseException:
        reports.put(("error", worker, traceback.format_exc()))
    finally:
        if store is not None:
            store.client.close()


class WorkerReports:
    """What the workers reported so far."""

    def __init__(self, reports: Any, processes: list[Any]) -> None:
        self._reports = reports
        self._processes = processes
        self.client_ids: dict[int, str] = {}
        self.sent: dict[int, list[float]] = {w: [] for w in range(WORKERS)}
        self.acked: dict[int, list[float]] = {w: [] for w in range(WORKERS)}
        self.finished: dict[int, tuple[int, int]] = {}
        self.errors: list[str] = []

    @property
    def acks(self) -> int:
        return sum(map(len, self.acked.values()))

    def pump(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        """Read reports until ``condition()`` holds; fail on a worker's error or the timeout."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.errors:
                pytest.fail("a worker failed:\n" + "\n".join(self.errors))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"timed out after {timeout} s waiting for {what} ({self.acks} acks so far)")
            try:
                message = self._reports.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                self._check_alive()
                continue
            self._take(message)
        if self.errors:
            pytest.fail("a worker failed:\n" + "\n".join(self.errors))

    def _check_alive(self) -> None:
        """Fail at once if a worker died without saying why (e.g. it could not even start)."""
        gone = [w for w, process in enumerate(self._processes) if not process.is_alive() and w not in self.finished]
        if not gone:
            return
        try:  # its last words may have arrived just now
            while True:
                self._take(self._reports.get(timeout=0.5))
        except queue.Empty:
            pass
        gone = [w for w in gone if w not in self.finished]
        if gone and not self.errors:
            codes = {w: self._processes[w].exitcode for w in gone}
            pytest.fail(f"worker(s) exited without reporting: exit codes {codes}")

    def _take(self, message: tuple[Any, ...]) -> None:
        kind, worker, *rest = message
        if kind == "ready":
            self.client_ids[worker] = rest[0]
        elif kind == "ack":
            index, sent, acked = rest
            assert index == len(self.acked[worker]), f"worker {worker} acked out of order"
            self.sent[worker].append(sent)
            self.acked[worker].append(acked)
        elif kind == "done":
            self.finished[worker] = (rest[0], rest[1])
        else:
            self.errors.append(f"worker {worker}:\n{rest[0]}")


def first_batches(batches: dict[int, list[list[float]]], lengths: dict[int, int] | tuple[int, ...]) -> list[float]:
    """The values of each worker ``w``'s first ``lengths[w]`` batches."""
    return [value for w in range(WORKERS) for batch in batches[w][:lengths[w]] for value in batch]


def summarizes(stats: RunningStats, values: list[float]) -> bool:
    """Whether ``stats`` could be the exact summary of ``values`` (see ``assert_summarizes``)."""
    if not values:
        return stats.count == 0
    try:
        assert_summarizes(stats, values)
    except AssertionError:
        return False
    return True


def highest_in(record: bytes | None) -> int:
    """The highest sequence number a batch record holds (its leading number; 0 if absent)."""
    if record is None:
        return 0
    digits = re.match(rb"[0-9]+", record)
    assert digits, f"batch record {record!r} does not start with a sequence number"
    return int(digits.group())


def raw_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, socket_timeout=10)


def config_of(server: RedisServer, *names: str) -> list[str]:
    """The server's settings ``names``, as text."""
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        return [client.config_get(name)[name] for name in names]
    finally:
        client.close()


def stored_count(server: RedisServer, namespace: str) -> int:
    """The env's count on ``server`` (0 when absent), read with a fresh client."""
    client = raw_client(server)
    try:
        return int(client.hget(f"{namespace}:{{{ENV}}}", "count") or 0)
    finally:
        client.close()


def inspect_crashed_data(directory: Path, namespace: str,
                         client_ids: dict[int, str]) -> tuple[RunningStats, dict[int, bytes | None]]:
    """What the crashed server's AOF holds: load it with a second server on another port
    (the workers keep knocking on the original one, so nobody writes meanwhile), read the
    env's stats and every worker's batch record, then SIGKILL that server so it changes
    nothing on disk (a clean shutdown would save an RDB)."""
    inspector = RedisServer(directory, AOF_ALWAYS).start()
    try:
        store = StatsStore(inspector.url, namespace, retry=None, functions=False)
        try:
            stats = store.get(ENV)
            records = {w: store.client.get(batch_record_key(store.key(ENV), cid)) for w, cid in client_ids.items()}
        finally:
            store.client.close()
    finally:
        inspector.kill()
    return stats, records


@pytest.mark.slow
def test_aof_always_crash_keeps_every_acknowledged_batch_and_counts_none_twice(tmp_path: Path,
                                                                               namespace: str) -> None:
    require_binaries("redis-server")
    batches = {w: worker_batches(w) for w in range(WORKERS)}
    context = multiprocessing.get_context("spawn")
    with RedisServer(tmp_path, AOF_ALWAYS) as server:
        assert config_of(server, "appendonly", "appendfsync") == ["yes", "always"]
        go, reports = context.Event(), context.Queue()
        workers = [context.Process(target=merge_worker, args=(server.url, namespace, w, go, reports))
                   for w in range(WORKERS)]
        for process in workers:
            process.start()
        try:
            seen = WorkerReports(reports, workers)
            seen.pump(lambda: len(seen.client_ids) == WORKERS, "the workers to connect", 60)
            go.set()
            seen.pump(lambda: seen.acks >= KILL_AFTER, f"{KILL_AFTER} acknowledged merges", 60)
            killed_at = time.monotonic()  # before the signal: an ack stamped earlier came before it
            server.kill()
            time.sleep(0.2)  # the workers find the port closed and start retrying
            at_crash, records = inspect_crashed_data(tmp_path, namespace, seen.client_ids)
            server.restart()
            count_after_restart = stored_count(server, namespace)
            seen.pump(lambda: len(seen.finished) == WORKERS, "the workers to finish", 90)
        finally:
            go.set()
            stop_workers(workers, reports)
        assert [process.exitcode for process in workers] == [0] * WORKERS

        final_store = StatsStore(server.url, namespace, retry=None)
        try:
            final = final_store.get(ENV)
            envs = final_store.envs()
            final_records = {w: final_store.client.get(batch_record_key(final_store.key(ENV), cid))
                             for w, cid in seen.client_ids.items()}
        finally:
            final_store.client.close()

    # Every worker's every batch was acknowledged, once, in order.
    assert all(len(seen.acked[w]) == BATCHES for w in range(WORKERS)), {w: len(a) for w, a in seen.acked.items()}
    acked_before = {w: sum(t < killed_at for t in seen.acked[w]) for w in range(WORKERS)}
    sent_before = {w: sum(t < killed_at for t in seen.sent[w]) for w in range(WORKERS)}
    # The crash came mid-stream: some merges were acknowledged before it, others only after.
    assert 0 < sum(acked_before.values()) < WORKERS * BATCHES, acked_before

    # What the crashed server had persisted: for each worker its first h batches (sequence
    # numbers are batch index + 1, sent one after the other), where h covers every batch
    # acknowledged before the kill and no batch first sent after it (at most the one in flight).
    # Exactly one such choice of h per worker reproduces the stats read from the crashed data...
    matches = [choice for choice in itertools.product(*(range(acked_before[w], sent_before[w] + 1)
                                                        for w in range(WORKERS)))
               if summarizes(at_crash, first_batches(batches, choice))]
    assert len(matches) == 1, (matches, at_crash, acked_before, sent_before)
    persisted = dict(enumerate(matches[0]))
    # ...and each worker's batch record agrees: its highest sequence number (the record's
    # leading number) is h.
    assert {w: highest_in(records[w]) for w in range(WORKERS)} == persisted, records

    # Right after the restart (the workers resuming meanwhile), at least everything acknowledged
    # before the crash is there.
    everything = first_batches(batches, (BATCHES,) * WORKERS)
    acked_values = len(first_batches(batches, acked_before))
    assert acked_values <= at_crash.count <= count_after_restart <= len(everything)

    # In the end every batch is in exactly once: the in-flight ones were resent with the same
    # identity and, if the crashed server had them already, recognized as duplicates.
    assert envs == [ENV]
    assert_summarizes(final, everything)
    assert {w: highest_in(final_records[w]) for w in range(WORKERS)} == dict.fromkeys(range(WORKERS), BATCHES)
    duplicates = sum(d for _, d in seen.finished.values())
    assert duplicates <= sum(persisted[w] - acked_before[w] for w in range(WORKERS))


def bgsave_and_wait(client: redis.Redis, directory: Path) -> None:
    """BGSAVE and wait until dump.rdb is complete and holds every change."""
    client.execute_command("BGSAVE")
    wait_for_snapshot(client, directory)


def wait_for_snapshot(client: redis.Redis, directory: Path) -> None:
    def saved() -> bool:
        info = client.info("persistence")
        return (info["rdb_bgsave_in_progress"] == 0 and info["rdb_changes_since_last_save"] == 0
                and (directory / "dump.rdb").is_file())

    wait_for(saved, "the snapshot to complete")
    assert client.info("persistence")["rdb_last_bgsave_status"] == "ok"


def batch_records(client: redis.Redis, namespace: str) -> dict[bytes, bytes]:
    return {key: client.get(key) for key in client.scan_iter(match=f"{namespace}:*:batches:*")}


def merge_some(store: StatsStore, envs: list[str], seed: int, rounds: int = 5) -> None:
    rng = random.Random(seed)
    for _ in range(rounds):
        for env in envs:
            store.update(env, [rng.uniform(-3.0, 7.0) for _ in range(rng.randint(1, 12))])


def crash_after_snapshot(server: RedisServer, store: StatsStore, client: redis.Redis, namespace: str,
                         snapshot: Callable[[], None]) -> None:
    """Merge, ``snapshot()``, merge more, crash, restart: the snapshot's state comes back,
    batch records included, and everything merged after it is lost."""
    merge_some(store, ["alpha", "beta", "gamma"], seed=1)
    at_snapshot = store.all()
    records_at_snapshot = batch_records(client, namespace)
    assert set(at_snapshot) == {"alpha", "beta", "gamma"} and len(records_at_snapshot) == 3
    snapshot()

    merge_some(store, ["alpha", "beta", "delta"], seed=2)
    later = store.all()
    assert set(later) == {"alpha", "beta", "gamma", "delta"} and later["alpha"] != at_snapshot["alpha"]

    server.kill()
    server.restart()
    # The store's pooled connection died with the server; it reconnects by itself.
    assert store.all() == at_snapshot
    assert batch_records(client, namespace) == records_at_snapshot
    assert client.info("persistence")["aof_enabled"] == 0
    # Merging goes on from the snapshot (the store's sequence numbers are past the restored
    # records, so nothing is refused or mistaken for a retry).
    more = store.update("alpha", [100.0])
    assert more.count == at_snapshot["alpha"].count + 1 and more.max == 100.0


def test_rdb_snapshot_comes_back_after_a_crash_and_later_merges_are_lost(tmp_path: Path, namespace: str) -> None:
    require_binaries("redis-server")
    with RedisServer(tmp_path, RDB_ONLY) as server:
        client = raw_client(server)
        store = StatsStore(server.url, namespace)
        try:
            assert config_of(server, "save", "appendonly") == ["", "no"]
            crash_after_snapshot(server, store, client, namespace, lambda: bgsave_and_wait(client, tmp_path))
        finally:
            store.client.close()
            client.close()


def test_cli_snapshot_comes_back_after_a_crash(tmp_path: Path, namespace: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    require_binaries("redis-server")
    cli = pytest.importorskip("shared_rewardnorm.cli", reason="shared_rewardnorm/cli.py does not exist (yet)")
    with RedisServer(tmp_path, RDB_ONLY) as server:
        client = raw_client(server)
        store = StatsStore(server.url, namespace)
        try:
            def snapshot() -> None:
                try:
                    status = cli.main(["--url", server.url, "snapshot"])
                except SystemExit as exc:
                    status = exc.code
                    if status == 2 and "invalid choice" in capsys.readouterr().err:
                        pytest.skip("shared_rewardnorm.cli has no `snapshot` subcommand")
                assert status in (0, None)
                # Whether the command waits for the BGSAVE or only starts it, it completes.
                wait_for_snapshot(client, tmp_path)

            crash_after_snapshot(server, store, client, namespace, snapshot)
        finally:
            store.client.close()
            client.close()


def test_batch_records_survive_an_aof_crash(tmp_path: Path, namespace: str) -> None:
    """After kill -9 and a restart from the AOF, a batch acknowledged before the crash and sent
    again with the same identity is recognized as a duplicate and not merged again."""
    require_binaries("redis-server")
    with RedisServer(tmp_path, AOF_ALWAYS) as server:
        client = raw_client(server)
        store = StatsStore(server.url, namespace, functions=False)
        try:
            # Through the store: take the exact request its merge sends, and run it.
            operation = store._update_op("via-store", [0.5, -1.5])
            request = store.merge_request(next(operation))
            assert request.operation == "merge" and len(request.keys) == 2  # with a batch record
            reply = store._issue(request)
            with pytest.raises(StopIteration) as done:
                operation.send(reply)
            assert done.value.value == RunningStats.from_values([0.5, -1.5])
            assert merged_stats(reply) == (done.value.value, True)

            # By hand: the script's text with EVAL and the keys and arguments of a merge into another env.
            by_hand = store.merge_request(next(store._update_op("by-hand", [1.0, 2.0, 4.0])))
            keys, args = by_hand.keys, by_hand.args
            first = client.eval(script_source("merge"), len(keys), *keys, *args)
            assert merged_stats(first) == (RunningStats.from_values([1.0, 2.0, 4.0]), True)
            before = store.all()
            assert set(before) == {"via-store", "by-hand"}

            server.kill()
            server.restart()

            assert store.all() == before
            # The records are back with their expiry.
            assert 0 < client.ttl(request.keys[1]) <= DEFAULT_BATCH_RECORD_TTL
            assert 0 < client.ttl(keys[1]) <= DEFAULT_BATCH_RECORD_TTL
            again = client.eval(script_source("merge"), len(keys), *keys, *args)
            assert merged_stats(again) == (merged_stats(first)[0], False)
            # The store's request again (its script is not cached on the restarted server).
            resent = store._issue(request)
            assert merged_stats(resent) == (merged_stats(reply)[0], False)
            assert store.all() == before
            # A new batch of the same client is merged as usual.
            assert store.update("via-store", [3.0]).count == 3
        finally:
            store.client.close()
            client.close()
