"""Losing the server's script cache never breaks a call: after ``SCRIPT FLUSH``, a restart, or
a failover to a replica that never saw the script, the next call gets the script onto the
server again and succeeds, with the statistics right (sync and asyncio, EVALSHA mode); the
Function library, which is data, is on the promoted replica already.

Every test runs its own ``redis-server`` (``tests/support/redis_servers.py``); the shared server on
6379 is never touched.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared_rewardnorm import (
    AsyncStatsStore,
    RetryPolicy,
    RunningStats,
    SharedRewardNormalizer,
    StatsStore,
)
from shared_rewardnorm._core.protocol import DUPLICATE, MERGED, decode_reply
from shared_rewardnorm._redis.scripts import library_name
from tests.support.helpers import assert_summarizes, require_binaries, wait_for
from tests.support.redis_servers import NO_PERSISTENCE, RedisServer
from tests.support.reference_oracle import OracleNormalizer

pytestmark = pytest.mark.own_server

#: Retries that carry a store over a restart of a second or so.
OUTAGE_RETRY = RetryPolicy(attempts=50, base=0.02, cap=0.2)


def batches(seed: int, count: int = 3) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.gauss(2.0, 3.0) for _ in range(rng.randint(2, 15))] for _ in range(count)]


def script_cached(client: redis.Redis, sha: str) -> bool:
    return bool(client.script_exists(sha)[0])


def noscript_errors(client: redis.Redis) -> int:
    """NOSCRIPT replies the server sent so far (INFO errorstats)."""
    return int(client.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0))


def restart_later(server: RedisServer, delay: float, failures: list[BaseException]) -> None:
    """Restart ``server`` (same port) after ``delay`` seconds; for a background thread."""
    try:
        time.sleep(delay)
        server.restart()
    except BaseException as exc:
        failures.append(exc)


# --- (a) SCRIPT FLUSH -----------------------------------------------------------------------------

def test_script_flush_then_the_next_call_reloads_sync(server: RedisServer, inspector: redis.Redis,
                                                      namespace: str) -> None:
    first, second, third = batches(1)
    store = StatsStore(server.url, namespace, functions=False)
    try:
        norm = SharedRewardNormalizer("env", store, warmup=0)
        norm.normalize(first)
        merge_sha, replace_sha = (store._scripts.script(name).sha for name in ("merge", "replace"))
        assert script_cached(inspector, merge_sha) and not store._scripts.using_functions

        inspector.script_flush()
        assert not script_cached(inspector, merge_sha)
        refused = noscript_errors(inspector)
        out = norm.normalize(second)
        # The call did meet the empty cache, and got the script back onto the server.
        assert noscript_errors(inspector) == refused + 1
        assert script_cached(inspector, merge_sha)
        assert len(out) == len(second)
        assert_summarizes(norm.stats, first + second)

        # The other script too, and the store's plain update after another flush.
        inspector.script_flush()
        replaced = store.set("copy", RunningStats.from_values(third))
        assert replaced == RunningStats.from_values(third) and script_cached(inspector, replace_sha)
        inspector.script_flush()
        assert_summarizes(store.update("env", third), first + second + third)
        assert store.retries == 0 and store.duplicates == 0
    finally:
        store.client.close()


def test_script_flush_then_the_next_call_reloads_async(server: RedisServer, inspector: redis.Redis,
                                                       namespace: str) -> None:
    first, second, third = batches(2)

    async def scenario() -> None:
        store = AsyncStatsStore(server.url, namespace, functions=False)
        try:
            await store.update("env", first)
            merge_sha = store._scripts.script("merge").sha
            assert script_cached(inspector, merge_sha)

            inspector.script_flush()
            refused = noscript_errors(inspector)
            assert_summarizes(await store.update("env", second), first + second)
            assert noscript_errors(inspector) == refused + 1
            assert script_cached(inspector, merge_sha)

            # Many coroutines meeting the flushed cache at once all succeed, each merged once.
            inspector.script_flush()
            results = await asyncio.gather(*(store.update(f"env-{i}", third) for i in range(20)))
            for stats in results:
                assert_summarizes(stats, third)
            assert_summarizes(await store.get("env"), first + second)
            assert store.retries == 0 and store.duplicates == 0
        finally:
            await store.aclose()

    asyncio.run(scenario())


# --- (b) a restart --------------------------------------------------------------------------------

def test_restart_then_the_next_call_reconnects_and_reloads_sync(server: RedisServer, namespace: str) -> None:
    first, second, _ = batches(3)
    # No driver-level retries: it is the store's retry policy that rides out the outage.
    client = redis.Redis.from_url(server.url, retry=Retry(NoBackoff(), 0))
    store = StatsStore(client, namespace, functions=False, retry=OUTAGE_RETRY)
    try:
        store.update("env", first)
        server.kill()
        failures: list[BaseException] = []
        restarter = threading.Thread(target=restart_later, args=(server, 0.3, failures))
        restarter.start()
        try:
            got = store.update("env", second)
        finally:
            restarter.join()
        assert not failures, failures
        assert store.retries >= 1
        # Nothing persisted: the restarted server started empty and holds just this batch.
        assert_summarizes(got, second)
        assert script_cached(client, store._scripts.script("merge").sha)
        assert_summarizes(store.get("env"), second)
    finally:
        client.close()


def test_restart_then_the_next_call_reconnects_and_reloads_async(server: RedisServer, namespace: str) -> None:
    first, second, _ = batches(4)

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(server.url, retry=redis.asyncio.retry.Retry(NoBackoff(), 0))
        store = AsyncStatsStore(client, namespace, functions=False, retry=OUTAGE_RETRY)
        try:
            await store.update("env", first)
            server.kill()
            failures: list[BaseException] = []
            got, _ = await asyncio.gather(store.update("env", second),
                                          asyncio.to_thread(restart_later, server, 0.3, failures))
            assert not failures, failures
            assert store.retries >= 1
            assert_summarizes(got, second)
            assert (await client.script_exists(store._scripts.script("merge").sha))[0]
        finally:
            await client.aclose()

    asyncio.run(scenario())


# --- (c) a failover to a replica --------------------------------------------------------------------

def test_failover_to_a_replica_that_never_saw_the_script(tmp_path: Path, namespace: str) -> None:
    require_binaries("redis-server")
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    sent = batches(5, count=8)
    oracle = OracleNormalizer(warmup=5)
    # No 5 s wait for more replicas before the initial (diskless) sync.
    with RedisServer(tmp_path / "master", [*NO_PERSISTENCE, "--repl-diskless-sync-delay", "0"]) as master:
        replica_args = [*NO_PERSISTENCE, "--replicaof", "127.0.0.1", str(master.port)]
        with RedisServer(tmp_path / "replica", replica_args) as replica:
            master_client = redis.Redis(port=master.port, socket_timeout=10)
            replica_client = redis.Redis(port=replica.port, socket_timeout=10, decode_responses=True)
            store = StatsStore(master.url, namespace, functions=False)
            promoted = None
            try:
                wait_for(lambda: replica_client.info("replication").get("master_link_status") == "up",
                         "the replica to sync")
                # The Function library, unlike the scripts, is part of the data set: replicated.
                assert store.load_functions() == library_name()
                norm = SharedRewardNormalizer("env", store, warmup=5)
                for batch in sent[:4]:
                    assert norm.normalize(batch) == pytest.approx(oracle.normalize(batch), rel=1e-9, abs=1e-9)
                sha = store._scripts.script("merge").sha
                assert script_cached(master_client, sha)
                assert master_client.wait(1, 5000) == 1  # the replica has every write

                # Redis 7 replicates a script's effects, not the script: the replica's cache
                # is empty (if a server did copy it, flush it to get the case under test).
                if script_cached(replica_client, sha):
                    replica_client.script_flush()
                assert not script_cached(replica_client, sha)
                key = store.key("env")
                assert replica_client.hgetall(key) == {k.decode(): v.decode()
                                                       for k, v in master_client.hgetall(key).items()}

                # The master dies; the replica is promoted; the trainer points at it.
                master.kill()
                replica_client.replicaof("NO", "ONE")
                wait_for(lambda: replica_client.info("replication")["role"] == "master", "the promotion")
                refused = noscript_errors(replica_client)
                promoted = StatsStore(replica.url, namespace, functions=False)
                norm = SharedRewardNormalizer("env", promoted, warmup=5)
                for batch in sent[4:]:
                    assert norm.normalize(batch) == pytest.approx(oracle.normalize(batch), rel=1e-9, abs=1e-9)
                assert noscript_errors(replica_client) == refused + 1
                assert script_cached(replica_client, sha)
                assert_summarizes(promoted.get("env"), [v for batch in sent for v in batch])
                assert norm.count == oracle.n
                with_functions = StatsStore(replica_client, namespace, functions=True)
                assert with_functions.update("fn-env", [1.0, 3.0]) == RunningStats.from_values([1.0, 3.0])
            finally:
                store.client.close()
                if promoted is not None:
                    promoted.client.close()
                master_client.close()
                replica_client.close()


# --- (d) redis-py pipelines -----------------------------------------------------------------------

@pytest.mark.parametrize("transaction", [True, False], ids=["multi", "plain"])
def test_pipeline_loads_the_flushed_script_sync(server: RedisServer, inspector: redis.Redis, namespace: str,
                                                transaction: bool) -> None:
    first, second, _ = batches(6)
    store = StatsStore(server.url, namespace, functions=False)
    try:
        store.update("env", first)
        inspector.script_flush()
        script = store._scripts.script("merge")
        request = store.merge_request(next(store._update_op("env", second)))  # a real merge's keys and arguments
        with store.client.pipeline(transaction=transaction) as pipe:
            script(keys=request.keys, args=request.args, client=pipe)
            pipe.hget(store.key("env"), "count")
            reply, count = pipe.execute()
        # redis-py's pipeline checked SCRIPT EXISTS and loaded the script before sending it.
        assert script_cached(inspector, script.sha)
        info, outcome = decode_reply(reply)
        assert outcome == MERGED and int(count) == len(first) + len(second)
        assert_summarizes(info.stats, first + second)

        # The same batch once more through a pipeline: recognized, not merged again.
        with store.client.pipeline(transaction=transaction) as pipe:
            script(keys=request.keys, args=request.args, client=pipe)
            (again,) = pipe.execute()
        assert decode_reply(again) == (info, DUPLICATE)
        assert_summarizes(store.get("env"), first + second)
    finally:
        store.client.close()


def test_pipeline_loads_the_flushed_script_async(server: RedisServer, inspector: redis.Redis,
                                                 namespace: str) -> None:
    first, second, _ = batches(7)

    async def scenario() -> None:
        # Not coalescing: the merge's first request is then the script call itself.
        store = AsyncStatsStore(server.url, namespace, functions=False, coalesce=False)
        try:
            await store.update("env", first)
            inspector.script_flush()
            script = store._scripts.script("merge")
            request = store.merge_request(next(store._update_op("env", second)))
            async with store.client.pipeline(transaction=True) as pipe:
                await script(keys=request.keys, args=request.args, client=pipe)
                pipe.hget(store.key("env"), "count")
                reply, count = await pipe.execute()
            assert script_cached(inspector, script.sha)
            assert decode_reply(reply)[1] == MERGED and int(count) == len(first) + len(second)
            assert_summarizes(await store.get("env"), first + second)
        finally:
            await store.aclose()

    asyncio.run(scenario())
