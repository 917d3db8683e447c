"""An acknowledged batch is counted once, never twice, whoever retries after a lost reply:
the store's own retries, redis-py's, or the caller's loop (which names its batches with
``batch_id``); without a name, a caller's retry is a new batch."""

from __future__ import annotations

import asyncio
import math
import os
import random
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared_rewardnorm import (
    AsyncSharedRewardNormalizer,
    AsyncStatsStore,
    CorruptStatsError,
    RetryPolicy,
    RunningStats,
    SharedRewardNormalizer,
    StaleBatchError,
    StatsStore,
)
from shared_rewardnorm._core.keys import batch_record_key
from shared_rewardnorm._core.protocol import encode_stats
from shared_rewardnorm._redis.scripts import script_source
from tests.support.decay_oracle import assert_decayed
from tests.support.drop_proxy import DropProxy
from tests.support.reference_oracle import OracleNormalizer

FAST_RETRY = RetryPolicy(attempts=10, base=0.001, cap=0.01)


def port_of(url: str) -> int:
    return redis.connection.parse_url(url)["port"]


def batches(seed: int, count: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.gauss(3.0, 2.0) for _ in range(rng.randint(1, 20))] for _ in range(count)]


def no_driver_retries(url: str) -> redis.Redis:
    """A client whose redis-py layer does not retry, so only our layer can."""
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=5)


#: The half-life the retry tests configure, so exactly once covers the decayed statistics too.
HALF_LIFE = 700.0


def assert_env_matches(store: StatsStore, sent: list[list[float]]) -> None:
    """Totals, decayed statistics and merge count are those of each batch counted once."""
    info = store.info("env")
    assert_matches_reference(info.stats, sent)
    assert info.merges == len(sent)
    assert_decayed(info.decayed, sent, HALF_LIFE)


def assert_matches_reference(stats: RunningStats, sent: list[list[float]]) -> None:
    everything = [v for batch in sent for v in batch]
    mean = math.fsum(everything) / len(everything)
    assert stats.count == len(everything)
    assert math.isclose(stats.mean, mean, rel_tol=1e-12)
    assert math.isclose(stats.m2, math.fsum((v - mean) ** 2 for v in everything), rel_tol=1e-10)


@pytest.mark.real_redis
@pytest.mark.parametrize("who_retries", ["store", "driver", "caller"])
def test_lost_replies_never_double_count(real_redis_url: str, namespace: str, real_client: Any,
                                         who_retries: str) -> None:
    sent = batches(seed=len(who_retries), count=1500)
    oracle = OracleNormalizer(warmup=3)
    with DropProxy(port_of(real_redis_url), drop_rate=0.04, seed=7) as proxy:
        if who_retries == "store":
            client, policy = no_driver_retries(proxy.url), FAST_RETRY
        elif who_retries == "driver":
            # redis-py's own retry re-sends the very same EVALSHA after a dropped connection.
            client, policy = redis.Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 10)), None
        else:
            client, policy = no_driver_retries(proxy.url), None
        StatsStore(real_client, namespace).configure("env", half_life=HALF_LIFE)
        store = StatsStore(client, namespace, retry=policy)
        norm = SharedRewardNormalizer("env", store, warmup=3)
        caller_retries = 0
        for index, batch in enumerate(sent):
            while True:
                try:
                    got = norm.normalize(batch, batch_id=index)
                    break
                except redis.ConnectionError:
                    assert who_retries == "caller"
                    caller_retries += 1
            expected = oracle.normalize(batch)
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
        client.close()
    assert proxy.drops >= 30, "the proxy should have lost some replies"
    assert store.duplicates >= 30 and store.duplicates <= proxy.drops
    if who_retries == "store":
        assert store.retries >= proxy.drops
    if who_retries == "caller":
        assert caller_retries == proxy.drops
    assert_env_matches(StatsStore(real_client, namespace), sent)


def test_the_same_batch_twice_is_merged_once(raw_client: Any, namespace: str) -> None:
    key = f"{namespace}:{{env}}"
    record = batch_record_key(key, "client-a")
    args = (encode_stats(RunningStats.from_values([1.0, 2.0])), "1", "60")
    first = raw_client.eval(script_source("merge"), 2, key, record, *args).split()
    again = raw_client.eval(script_source("merge"), 2, key, record, *args).split()
    assert first[:-1] == again[:-1] and first[-1] == b"1" and again[-1] == b"0"
    assert raw_client.hget(key, "count") == b"2"
    assert 0 < raw_client.ttl(record) <= 60


def test_out_of_order_batches_within_the_window(raw_client: Any, namespace: str) -> None:
    key = f"{namespace}:{{env}}"
    record = batch_record_key(key, "client-b")
    one = encode_stats(RunningStats.from_values([1.0]))

    def send(seq: int) -> bytes:
        return raw_client.eval(script_source("merge"), 2, key, record, one, str(seq), "60").split()[-1]

    assert [send(5), send(3), send(4), send(3), send(5), send(1)] == [b"1", b"1", b"1", b"0", b"0", b"1"]
    assert [send(1029), send(6), send(1028), send(1029)] == [b"1", b"1", b"1", b"0"]  # 6: 1024th
    with pytest.raises(redis.ResponseError, match="REWARDNORM_STALE"):
        send(5)  # 1024 behind the latest: cannot be judged
    assert raw_client.hget(key, "count") == b"7"
    # The record is compact: the highest number and the numbers below it not merged yet.
    assert raw_client.get(record) == b"1029:" + b",".join(str(n).encode() for n in range(7, 1028))


def test_stale_and_corrupt_records_are_library_errors(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    store.update("env", [1.0])
    record = batch_record_key(store.key("env"), store.client_id)
    raw_client.set(record, "999999")
    with pytest.raises(StaleBatchError):
        store.update("env", [2.0])  # our sequence 2 is far behind the (forged) 999999
    raw_client.set(record, "garbage")
    with pytest.raises(CorruptStatsError):
        store.update("env", [2.0])
    assert store.get("env").count == 1


def test_a_forked_child_gets_its_own_identity(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    parent_id = store.client_id
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write, store.client_id.encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child_id and child_id != parent_id and store.client_id == parent_id


def test_a_caller_retry_without_a_batch_id_is_a_new_batch(real_redis_url: str, namespace: str,
                                                          real_client: Any) -> None:
    """Without a name nothing is guessed from values: after a lost reply whose merge had run,
    the same values again count again, and so does a later batch of the same values; the same
    values under the lost call's batch_id count once."""
    with DropProxy(port_of(real_redis_url), drop_rate=1.0, seed=1) as proxy:
        client = no_driver_retries(proxy.url)
        store = StatsStore(client, namespace, retry=None)
        with pytest.raises(redis.ConnectionError):
            store.update("env", [1.0])  # ran on the server; reply lost
        with pytest.raises(redis.ConnectionError):
            store.update("env", [1.0], batch_id="named")  # ran on the server; reply lost
        proxy.drop_rate = 0.0
        assert store.update("env", [1.0], batch_id="named").count == 2  # its retry: counted once
        assert store.duplicates == 1
        assert store.update("env", [1.0]).count == 3  # the same values, unnamed: a new batch
        assert store.update("env", [1.0], batch_id="other").count == 4  # another name: a new batch
        client.close()


async def normalize_until_answered(norm: AsyncSharedRewardNormalizer, batch: list[float], batch_id: int,
                                   hold: float, who_retries: str) -> int:
    """The caller's own retry loop: normalize ``batch`` under ``batch_id`` until a call returns
    (each try cut off after 0.3 s when the proxy holds replies); the number of retries. With the
    store retrying, no error may reach the caller."""
    retries = 0
    while True:
        try:
            await asyncio.wait_for(norm.normalize(batch, batch_id=batch_id), timeout=0.3 if hold else 30)
            return retries
        except (redis.ConnectionError, asyncio.TimeoutError):
            assert who_retries != "store"
            retries += 1


@pytest.mark.real_redis
@pytest.mark.parametrize("who_retries", ["store", "caller", "caller after a timeout"])
def test_async_lost_replies_never_double_count(real_redis_url: str, namespace: str, real_client: Any,
                                               who_retries: str) -> None:
    """The asyncio store under the same faults, and a caller whose own timeout cancels the call
    after the merge ran (``asyncio.wait_for``): still exactly once."""
    sent = batches(seed=40 + len(who_retries), count=300)
    hold = 1.0 if who_retries == "caller after a timeout" else 0.0
    StatsStore(real_client, namespace).configure("env", half_life=HALF_LIFE)
    with DropProxy(port_of(real_redis_url), drop_rate=0.05, seed=3, hold=hold) as proxy:

        async def run() -> tuple[int, int]:
            client = redis.asyncio.Redis.from_url(proxy.url, retry=redis.asyncio.retry.Retry(NoBackoff(), 0))
            policy = FAST_RETRY if who_retries == "store" else None
            store = AsyncStatsStore(client, namespace, retry=policy)
            norm = AsyncSharedRewardNormalizer("env", store, warmup=3)
            caller_retries = 0
            for index, batch in enumerate(sent):
                caller_retries += await normalize_until_answered(norm, batch, index, hold, who_retries)
            await client.aclose()
            return caller_retries, store.duplicates

        caller_retries, duplicates = asyncio.run(run())
    assert proxy.drops >= 5
    assert duplicates >= 5
    if who_retries != "store":
        assert caller_retries == proxy.drops
    assert_env_matches(StatsStore(real_client, namespace), sent)


@pytest.mark.real_redis
@pytest.mark.parametrize("who_retries", ["store", "caller", "caller after a timeout"])
def test_coalesced_lost_replies_never_double_count(real_redis_url: str, namespace: str, real_client: Any,
                                                   who_retries: str) -> None:
    """32 coroutines normalizing into one env at once, so their merges are coalesced, through a
    proxy that loses replies after the script ran: a group retried by the store, every caller
    of a failed group retrying its own batch, and callers whose own timeout cancelled them while
    their merge was held: every batch counts once."""
    sent = batches(seed=60 + len(who_retries), count=800)
    hold = 1.0 if who_retries == "caller after a timeout" else 0.0
    with DropProxy(port_of(real_redis_url), drop_rate=0.08, seed=11, hold=hold) as proxy:

        async def run() -> tuple[int, int, int]:
            client = redis.asyncio.Redis.from_url(proxy.url, retry=redis.asyncio.retry.Retry(NoBackoff(), 0))
            policy = FAST_RETRY if who_retries == "store" else None
            store = AsyncStatsStore(client, namespace, retry=policy, functions=False)
            norm = AsyncSharedRewardNormalizer("env", store, warmup=3)
            caller_retries = 0

            async def worker(index: int) -> None:
                nonlocal caller_retries
                for number in range(index, len(sent), 32):
                    retries = await normalize_until_answered(norm, sent[number], number, hold, who_retries)
                    caller_retries += retries  # after the await: `x += await ...` reads x before it

            await asyncio.gather(*(worker(i) for i in range(32)))
            await client.aclose()
            return caller_retries, store.duplicates, store.coalescer.requests_sent

        caller_retries, duplicates, requests = asyncio.run(run())
    assert proxy.drops >= 3, "the proxy should have lost some replies"
    assert duplicates >= 1
    assert requests < len(sent) / 2, "the merges should have been coalesced"
    if who_retries != "store":
        assert caller_retries >= proxy.drops
    info = StatsStore(real_client, namespace).info("env")
    assert_matches_reference(info.stats, sent)
    assert info.merges <= requests  # one merge per group that landed, none twice
