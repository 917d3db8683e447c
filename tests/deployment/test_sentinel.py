"""Sentinel and the durability option (``replicas=``): an unknown service named in one line,
``WAIT`` in the merge's round trip, and real failovers (a primary, a lagging replica, three
Sentinels; the primary SIGKILLed while worker processes merge). URL parsing and the settings'
validation, with no server: tests/unit/test_sentinel.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel

from shared_rewardnorm import AsyncStatsStore, NotReplicatedError, RetryPolicy, SharedRewardNormalizer, StatsStore
from shared_rewardnorm.cli import main as cli_main
from tests.deployment.test_acl import EXPECTED as ACL_RULES
from tests.support.failover_scenario import run_failover
from tests.support.helpers import require_binaries, wait_for
from tests.support.redis_sentinel import SERVICE, SentinelGroup
from tests.support.redis_servers import NO_PERSISTENCE, RedisServer, free_port

TRAINER_RULES = ACL_RULES["trainer"]

PATIENT = RetryPolicy(attempts=20, base=0.05, cap=0.5)


# --- the URL ---------------------------------------------------------------------------------

def test_the_cli_names_an_unknown_sentinel_service_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--url", f"redis+sentinel://127.0.0.1:{free_port()}/nosuch", "stats"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "No master found for 'nosuch' (are the Sentinels up, and is the service name right?)" in err
    assert "<redis" not in err


# --- WAIT on a server without replicas (the shared test server has none) ----------------------

@pytest.mark.real_redis
@pytest.mark.parametrize("functions", [False, None], ids=["evalsha", "auto"])
def test_a_merge_no_replica_acknowledged_raises_after_merging_once(real_client: redis.Redis, namespace: str,
                                                                    functions: bool | None) -> None:
    store = StatsStore(real_client, namespace, replicas=1, replica_timeout=0.05, functions=functions)
    with pytest.raises(NotReplicatedError, match=r"stored \(once\) on the primary, but only 0 of the 1 required "
                                                 r"replicas .* Call again with the same batch_id") as caught:
        store.update("e", [1.0, 2.0], batch_id="b1")
    assert (caught.value.acknowledged, caught.value.required, caught.value.key) == (0, 1, store.key("e"))
    assert StatsStore(real_client, namespace).get("e").count == 2  # merged, once
    with pytest.raises(NotReplicatedError):
        store.update("e", [1.0, 2.0], batch_id="b1")  # the caller's retry: the same batch, waited for again
    assert store.duplicates == 1
    assert StatsStore(real_client, namespace).get("e").count == 2
    assert StatsStore(real_client, namespace, replicas=0).update("e", [3.0]).count == 3


@pytest.mark.real_redis
def test_a_frozen_env_not_replicated_does_not_claim_a_merge(real_client: redis.Redis, namespace: str) -> None:
    store = StatsStore(real_client, namespace, replicas=1, replica_timeout=0.05)
    StatsStore(real_client, namespace).freeze("e")
    with pytest.raises(NotReplicatedError, match=r"the env is frozen, so the batch was not merged .* only 0 of "
                                                 r"the 1 required replicas") as caught:
        store.update("e", [1.0])
    assert "stored (once)" not in str(caught.value)
    assert StatsStore(real_client, namespace).get("e").count == 0


@pytest.mark.real_redis
def test_after_not_replicated_a_batch_without_an_id_is_a_new_batch(real_client: redis.Redis,
                                                                    namespace: str) -> None:
    """Without a batch_id nothing is remembered: the same values again are a new batch (counted),
    and the message says a retry needs the id."""
    store = StatsStore(real_client, namespace, replicas=1, replica_timeout=0.05)
    with pytest.raises(NotReplicatedError, match="without a batch_id, a call is a new batch"):
        store.update("e", [1.0])
    with pytest.raises(NotReplicatedError):
        store.update("e", [1.0])
    assert store.duplicates == 0
    assert StatsStore(real_client, namespace).get("e").count == 2


@pytest.mark.real_redis
def test_the_async_store_waits_in_the_same_round_trip(real_redis_url: str, real_client: redis.Redis,
                                                      namespace: str) -> None:
    async def scenario() -> int:
        async with AsyncStatsStore(real_redis_url, namespace, replicas=1, replica_timeout=0.05) as store:
            with pytest.raises(NotReplicatedError, match="0 of the 1 required replicas"):
                await store.update("e", [1.0], batch_id=1)
            with pytest.raises(NotReplicatedError):
                await store.update("e", [1.0], batch_id=1)
            return store.duplicates
    assert asyncio.run(scenario()) == 1
    assert StatsStore(real_client, namespace).get("e").count == 1


@pytest.mark.real_redis
def test_a_coalesced_group_not_replicated_counts_once_when_its_callers_retry(
        real_redis_url: str, real_client: redis.Redis, namespace: str) -> None:
    """Concurrent callers whose batches went out as one coalesced merge: each gets
    NotReplicatedError, and each caller's retry resends that group's merge (counted once)."""
    batches = [[float(i), float(i) + 0.5] for i in range(12)]

    async def scenario() -> tuple[int, int]:
        async with AsyncStatsStore(real_redis_url, namespace, replicas=1, replica_timeout=0.05) as store:
            for _attempt in range(2):  # the first try, then every caller's retry of the same batch
                outcomes = await asyncio.gather(*(store.update("e", batch, batch_id=f"g{i}")
                                                  for i, batch in enumerate(batches)),
                                                return_exceptions=True)
                assert all(isinstance(outcome, NotReplicatedError) for outcome in outcomes), outcomes
            return store.coalescer.requests_sent, store.duplicates
    requests, duplicates = asyncio.run(scenario())
    assert requests < 2 * len(batches)  # some batches did share a merge
    assert duplicates >= 1
    stats = StatsStore(real_client, namespace).get("e")
    assert stats.count == sum(map(len, batches))  # every batch once, although every caller retried
    values = [value for batch in batches for value in batch]
    assert stats.mean == pytest.approx(sum(values) / len(values), rel=1e-12)


@pytest.mark.own_server
def test_fcall_and_wait_go_in_one_pipeline(server: Any, inspector: redis.Redis) -> None:
    store = StatsStore(server.url, functions=True, replicas=1, replica_timeout=0.05)
    store.load_functions()
    inspector.config_resetstat()
    with pytest.raises(NotReplicatedError, match="0 of the 1 required replicas"):
        store.update("e", [1.0])
    calls = {name: stats["calls"] for name, stats in inspector.info("commandstats").items()}
    assert calls.get("cmdstat_fcall") == 1 and calls.get("cmdstat_wait") == 1, calls
    assert "cmdstat_evalsha" not in calls and "cmdstat_eval" not in calls
    assert StatsStore(server.url).get("e").count == 1
    store.close()


@pytest.mark.own_server
def test_a_user_without_wait_gets_not_replicated_after_merging_once(server: Any, inspector: redis.Redis) -> None:
    # docs/operations/security.md's trainer, which lacks +wait (the doc adds it only for replicas=).
    inspector.execute_command("ACL", "SETUSER", "trainer", "reset", "on", ">pw", *TRAINER_RULES.split())
    url = f"redis://trainer:pw@127.0.0.1:{server.port}/0"
    with StatsStore(url, replicas=1, functions=False) as store:
        for _ in range(2):  # the caller's retry: the same batch
            with pytest.raises(NotReplicatedError, match=r"stored \(once\) .* WAIT failed \(.*wait.*\); an ACL user "
                                                         r"needs \+wait"):
                store.update("e", [1.0, 2.0], batch_id="b")
        assert store.duplicates == 1
    assert StatsStore(server.url).get("e").count == 2


@pytest.mark.own_server
def test_a_trainer_with_wait_merges_with_replicas_1(server: Any, inspector: redis.Redis, tmp_path: Path) -> None:
    """docs/operations/security.md's trainer rules plus +wait: a merge waits for the replica and returns."""
    inspector.execute_command("ACL", "SETUSER", "trainer", "reset", "on", ">pw", *TRAINER_RULES.split(), "+wait")
    (tmp_path / "replica").mkdir()
    with RedisServer(tmp_path / "replica", NO_PERSISTENCE) as replica:
        replica_client = redis.Redis(port=replica.port, decode_responses=True)
        replica_client.replicaof("127.0.0.1", server.port)
        wait_for(lambda: replica_client.info("replication").get("master_link_status") == "up", "the replica's sync")
        with StatsStore(f"redis://trainer:pw@127.0.0.1:{server.port}/0", replicas=1, replica_timeout=5.0,
                        functions=False) as store:
            assert store.update("e", [1.0, 2.0]).count == 2
            assert store.update("e", [3.0]).count == 3
        assert StatsStore(replica.url).get("e").count == 3  # the replica holds what returned
        replica_client.close()


# --- real failovers ----------------------------------------------------------------------------

@pytest.fixture
def group(tmp_path: Path) -> Any:
    require_binaries("redis-server")
    with SentinelGroup(tmp_path / "group") as running:
        yield running


@pytest.mark.own_server
@pytest.mark.sentinel
@pytest.mark.slow
def test_sync_and_async_clients_follow_a_failover(group: SentinelGroup) -> None:
    by_url = StatsStore(group.url, "srn-t", retry=PATIENT)
    sentinel = redis.sentinel.Sentinel([("127.0.0.1", s.port) for s in group.sentinels])
    norm = SharedRewardNormalizer("e", StatsStore(sentinel.master_for(SERVICE), "srn-t", retry=PATIENT), warmup=0)
    assert by_url.update("e", [1.0]).count == 1
    norm.normalize([2.0])
    assert norm.count == 2
    group.kill_primary()
    assert by_url.update("e", [3.0]).count >= 1  # waits through the failover (the retries)
    group.wait_for_new_primary()
    assert group.primary_port() == group.replica.port
    norm.normalize([4.0])
    assert by_url.get("e") == norm.store.get("e")

    async def async_side() -> int:
        async_sentinel = redis.asyncio.sentinel.Sentinel([("127.0.0.1", s.port) for s in group.sentinels])
        client = async_sentinel.master_for(SERVICE)
        async with AsyncStatsStore(group.url, "srn-t") as store:
            by_client = AsyncStatsStore(client, "srn-t")
            await by_client.update("e", [5.0])
            count = (await store.update("e", [6.0])).count
        await client.aclose()
        for sentinel_client in async_sentinel.sentinels:
            await sentinel_client.aclose()
        return count
    assert asyncio.run(async_side()) == by_url.get("e").count
    by_url.close()
    norm.store.client.close()
    for sentinel_client in sentinel.sentinels:
        sentinel_client.close()


@pytest.mark.own_server
@pytest.mark.sentinel
@pytest.mark.slow
def test_cli_takes_a_sentinel_url(group: SentinelGroup, capsys: pytest.CaptureFixture[str]) -> None:
    StatsStore(group.url, "srn-cli").update("gsm8k", [1.0, 3.0])
    assert cli_main(["--url", group.url, "--namespace", "srn-cli", "stats", "gsm8k"]) == 0
    assert "gsm8k" in capsys.readouterr().out


@pytest.mark.own_server
@pytest.mark.sentinel
@pytest.mark.slow
def test_failover_with_replicas_1_loses_nothing_and_doubles_nothing(tmp_path: Path,
                                                                   record_property: Any) -> None:
    require_binaries("redis-server")
    figures = run_failover(tmp_path, replicas=1)
    record_property("failover", figures.row())
    print(figures.row())
    for worker in figures.per_worker:
        assert worker["after_failover"] > 0, worker  # followed the new primary, no restart
        assert worker["counted"] == worker["acknowledged"] == worker["sent"], worker
        assert worker["each_once"] and worker["lost"] == worker["doubled"] == 0, worker  # batch by batch
    assert figures.not_replicated_errors > 0  # with no replica left, merges said so until one came back


@pytest.mark.own_server
@pytest.mark.sentinel
@pytest.mark.slow
def test_failover_without_replicas_never_doubles_and_loses_what_was_not_replicated(
        tmp_path: Path, record_property: Any) -> None:
    require_binaries("redis-server")
    figures = run_failover(tmp_path, replicas=0)
    record_property("failover", figures.row())
    print(figures.row())
    for worker in figures.per_worker:
        assert worker["after_failover"] > 0, worker
        assert worker["doubled"] == 0, worker  # measured batch by batch: no batch counted twice
    # What is lost is what the replica had not received: the merges of the last `lag` seconds
    # before the kill, never those acknowledged by the new primary.
    assert figures.counted >= figures.acknowledged_after_failover
    assert figures.lost == figures.acknowledged - figures.counted + figures.counted_unacknowledged
