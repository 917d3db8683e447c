"""Coalesced asyncio merges: concurrent calls into one env share a script call, each caller gets
the statistics of the merge that carried its batch, its own errors stay its own, and exactly
once holds for the combined batch (cancelled callers here; lost replies and retries through the
drop proxy in test_exactly_once.py)."""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import pytest
import redis

from shared_rewardnorm import (
    AsyncSharedRewardNormalizer,
    AsyncStatsStore,
    CorruptStatsError,
    RunningStats,
    StatsOverflowError,
    StatsStore,
)
from shared_rewardnorm._core.normalization import NormalizerSettings, normalize_values
from tests.support.delay_proxy import DelayProxy
from tests.support.helpers import assert_summarizes


def make_batches(seed: int, count: int, size: int = 16) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.gauss(2.0, 3.0) for _ in range(size)] for _ in range(count)]


def test_concurrent_calls_share_one_merge(url: Any, namespace: str) -> None:
    """64 coroutines at once: the first goes out alone, the 63 that arrive while it is in flight
    go out together when it returns. Every caller is normalized with the stats its merge
    returned."""
    batches = make_batches(1, 64)
    settings = NormalizerSettings.create("zscore", 5.0, 10, 1e-8)

    async def run() -> tuple[list[list[float]], int, int]:
        store = AsyncStatsStore(url, namespace)
        norm = AsyncSharedRewardNormalizer("env", store, warmup=10)
        results = await asyncio.gather(*(norm.normalize(batch) for batch in batches))
        sent = store.coalescer.requests_sent
        await store.aclose()
        return results, sent, store.coalescer.calls

    results, sent, calls = asyncio.run(run())
    assert (sent, calls) == (2, 64)
    first = RunningStats.from_values(batches[0])
    assert results[0] == normalize_values(batches[0], first, settings)
    everything = RunningStats.combine([first, RunningStats.combine(RunningStats.from_values(b) for b in batches[1:])])
    final = StatsStore(url, namespace).get("env")
    assert final == everything
    assert_summarizes(final, [v for batch in batches for v in batch])
    for batch, got in zip(batches[1:], results[1:]):
        assert got == normalize_values(batch, final, settings)


def test_script_calls_per_normalize_call(url: Any, namespace: str) -> None:
    """64 coroutines, each normalizing 20 batches one after another: at most one merge per env
    in flight and one group behind it, so a handful of script calls carry all 1280 batches."""
    batches = make_batches(2, 64 * 20)

    async def run() -> tuple[int, int]:
        store = AsyncStatsStore(url, namespace)
        norm = AsyncSharedRewardNormalizer("env", store)

        async def worker(index: int) -> None:
            for batch in batches[index::64]:
                await norm.normalize(batch)

        await asyncio.gather(*(worker(i) for i in range(64)))
        await store.aclose()
        return store.coalescer.requests_sent, store.coalescer.calls

    sent, calls = asyncio.run(run())
    assert calls == len(batches)
    assert sent <= 0.25 * calls, f"{sent} script calls for {calls} normalize calls"
    assert_summarizes(StatsStore(url, namespace).get("env"), [v for batch in batches for v in batch])


def test_without_coalescing_every_call_sends_its_own(url: Any, namespace: str) -> None:
    batches = make_batches(3, 16)

    async def run() -> AsyncStatsStore:
        store = AsyncStatsStore(url, namespace, coalesce=False)
        norm = AsyncSharedRewardNormalizer("env", store)
        await asyncio.gather(*(norm.normalize(batch) for batch in batches))
        await store.aclose()
        return store

    assert asyncio.run(run()).coalescer is None
    assert_summarizes(StatsStore(url, namespace).get("env"), [v for batch in batches for v in batch])


def test_coalesce_setting_is_checked() -> None:
    with pytest.raises(TypeError, match="coalesce must be True or False, got 'yes'"):
        AsyncStatsStore(None, "ns", coalesce="yes")


def test_each_callers_bad_input_stays_its_own(url: Any, namespace: str) -> None:
    """A bad batch fails its own call, before joining a group; the other calls of the same
    moment merge as usual."""
    batches: list[Any] = make_batches(4, 8)
    batches[3] = [1.0, float("nan")]
    batches[5] = [1.0, "2"]

    async def run() -> list[Any]:
        store = AsyncStatsStore(url, namespace)
        norm = AsyncSharedRewardNormalizer("env", store)
        results = await asyncio.gather(*(norm.normalize(batch) for batch in batches), return_exceptions=True)
        await store.aclose()
        return results

    results = asyncio.run(run())
    assert isinstance(results[3], ValueError) and "scores[1]" in str(results[3]) and "not finite" in str(results[3])
    assert isinstance(results[5], TypeError) and "scores[1] is a str" in str(results[5])
    good = [b for i, b in enumerate(batches) if i not in (3, 5)]
    assert all(isinstance(results[i], list) for i in range(8) if i not in (3, 5))
    assert_summarizes(StatsStore(url, namespace).get("env"), [v for batch in good for v in batch])


def test_update_and_merge_coalesce_too(url: Any, namespace: str) -> None:
    batches = make_batches(5, 10)

    async def run() -> tuple[list[RunningStats], int]:
        store = AsyncStatsStore(url, namespace)
        results = await asyncio.gather(*(store.update("env", batch) for batch in batches[:5]),
                                       *(store.merge("env", RunningStats.from_values(b)) for b in batches[5:]))
        with pytest.raises(TypeError, match="stats must be RunningStats, got dict"):
            await store.merge("env", {"count": 1})
        await store.aclose()
        return results, store.coalescer.requests_sent

    results, sent = asyncio.run(run())
    assert sent == 2
    final = StatsStore(url, namespace).get("env")
    assert results[-1] == final and all(result == final for result in results[1:])
    assert_summarizes(final, [v for batch in batches for v in batch])


def test_a_caller_cancelled_before_its_group_went_out_is_not_counted(url: Any, namespace: str) -> None:
    batches = make_batches(6, 3)

    async def run() -> None:
        store = AsyncStatsStore(url, namespace)
        first = asyncio.ensure_future(store.update("env", batches[0]))
        await asyncio.sleep(0)  # the first merge is in flight
        second = asyncio.ensure_future(store.update("env", batches[1]))
        third = asyncio.ensure_future(store.update("env", batches[2]))
        await asyncio.sleep(0)  # both waiting in the group behind it
        second.cancel()
        await asyncio.gather(first, third)
        with pytest.raises(asyncio.CancelledError):
            await second
        assert store.coalescer.requests_sent == 2
        await store.aclose()

    asyncio.run(run())
    assert_summarizes(StatsStore(url, namespace).get("env"), batches[0] + batches[2])


def test_a_caller_cancelled_after_its_group_went_out_counts_once(url: Any, namespace: str) -> None:
    """The group goes on without the cancelled caller; when it sends its batch again under its
    batch_id, that is recognized as the batch its group already merged."""
    batches = make_batches(7, 3)

    async def run() -> None:
        store = AsyncStatsStore(url, namespace)
        first = asyncio.ensure_future(store.update("env", batches[0]))
        await asyncio.sleep(0)
        group = [asyncio.ensure_future(store.update("env", b, batch_id=f"b{i}")) for i, b in enumerate(batches[1:])]
        await first  # the group behind it went out as first returned
        await asyncio.sleep(0)
        assert store.coalescer.requests_sent == 2
        group[0].cancel()
        final = await group[1]
        with pytest.raises(asyncio.CancelledError):
            await group[0]
        assert final.count == 48
        again = await store.update("env", batches[1], batch_id="b0")  # the cancelled caller tries again
        assert again.count == 48 and store.duplicates == 1
        assert store.coalescer.requests_sent == 3  # the retry went alone, as its group's request
        await store.aclose()

    asyncio.run(run())
    assert_summarizes(StatsStore(url, namespace).get("env"), [v for batch in batches for v in batch])


def port_of(url: str) -> int:
    return redis.connection.parse_url(url)["port"]


def test_batches_that_cannot_be_combined_go_out_one_by_one(url: Any, namespace: str) -> None:
    """Two batches valid alone whose combination is not finite: each is sent on its own and
    gets its own answer (here the second one's merge overflows on the server, the first's not)."""

    async def run() -> list[Any]:
        store = AsyncStatsStore(url, namespace)
        first = asyncio.ensure_future(store.update("env", [1.0]))
        await asyncio.sleep(0)  # in flight: the next two form a group behind it
        results = await asyncio.gather(first, store.update("env", [1e154]), store.update("env", [-1e154]),
                                       return_exceptions=True)
        assert store.coalescer.requests_sent == 3
        await store.aclose()
        return results

    results = asyncio.run(run())
    assert results[1].count == 2
    assert isinstance(results[2], StatsOverflowError) and "not finite" in str(results[2])
    assert StatsStore(url, namespace).get("env").count == 2


@pytest.mark.real_redis
def test_a_lone_caller_cancelled_in_flight_counts_once_and_frees_the_env(real_redis_url: str, namespace: str,
                                                                        real_client: Any) -> None:
    """A batch sent alone (the env was idle) by a caller then cancelled: the batches waiting
    behind it go out at once, and the caller's retry is recognized whatever became of the
    first send. (Through a proxy holding each direction 0.1 s, so the first is still in flight
    when it is cancelled.)"""
    batches = make_batches(8, 2)
    with DelayProxy(port_of(real_redis_url), delay=0.1) as proxy:

        async def run() -> None:
            store = AsyncStatsStore(proxy.url, namespace, functions=False)
            await store.get("env")  # connected, so the first merge below goes out at once
            first = asyncio.ensure_future(store.update("env", batches[0], batch_id="first"))
            await asyncio.sleep(0.05)  # sent, not answered yet
            second = asyncio.ensure_future(store.update("env", batches[1]))
            await asyncio.sleep(0)  # waiting behind it
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert (await second).count in (16, 32)
            assert (await store.update("env", batches[0], batch_id="first")).count == 32  # the retry: counted once
            assert store.coalescer.requests_sent == 3
            await store.aclose()

        asyncio.run(run())
    assert_summarizes(StatsStore(real_client, namespace).get("env"), batches[0] + batches[1])


ZEROS = [0.0] * 16


def test_an_unnamed_member_cancelled_after_its_group_landed_counts_again_when_resent(
        url: Any, namespace: str) -> None:
    """Nothing is guessed from values: a member without a batch_id, cancelled after its group's
    merge landed, that sends the same values again is a new batch (the documented price of not
    naming batches); a later batch of the same values is a new batch too."""
    batches = make_batches(9, 2)

    async def run() -> None:
        store = AsyncStatsStore(url, namespace)
        first = asyncio.ensure_future(store.update("env", batches[0]))
        await asyncio.sleep(0)
        group = [asyncio.ensure_future(store.update("env", batch)) for batch in (ZEROS, batches[1])]
        await first
        await asyncio.sleep(0)  # the group went out
        group[0].cancel()
        assert (await group[1]).count == 48
        with pytest.raises(asyncio.CancelledError):
            await group[0]
        assert (await store.update("env", ZEROS)).count == 64
        assert (await store.update("env", ZEROS)).count == 80
        assert store.duplicates == 0 and store.ledger.remembered(store.key("env")) == 0
        await store.aclose()

    asyncio.run(run())


def test_a_name_twice_in_one_forming_group_counts_once(url: Any, namespace: str) -> None:
    """Two concurrent calls under one batch_id while the env is busy: the second waits for the
    first's group to go out and is then sent as its retry, so the batch counts once."""
    batches = make_batches(10, 2)

    async def run() -> None:
        store = AsyncStatsStore(url, namespace)
        first = asyncio.ensure_future(store.update("env", batches[0]))
        await asyncio.sleep(0)  # in flight: the next two form a group behind it
        results = await asyncio.gather(first, store.update("env", batches[1], batch_id="x"),
                                       store.update("env", batches[1], batch_id="x"))
        assert [result.count for result in results] == [16, 32, 32]
        assert store.duplicates == 1 and store.coalescer.calls == 3
        await store.aclose()

    asyncio.run(run())
    assert_summarizes(StatsStore(url, namespace).get("env"), batches[0] + batches[1])


def test_a_name_reused_for_other_values_is_refused_before_sending(url: Any, namespace: str) -> None:
    async def run() -> None:
        store = AsyncStatsStore(url, namespace)
        await store.update("env", [1.0, 2.0], batch_id="g7")
        with pytest.raises(ValueError, match=r"batch_id 'g7' was already used in .* for a different batch "
                                             r"\(2 values, mean 1.5.*; now 1 values, mean 3"):
            await store.update("env", [3.0], batch_id="g7")
        assert store.coalescer.requests_sent == 1
        await store.aclose()

    asyncio.run(run())
    assert StatsStore(url, namespace).get("env").count == 2


def test_every_member_of_a_failed_group_gets_its_own_error(url: Any, namespace: str) -> None:
    """An error the server raises for the env reaches every member of the group, each as its
    own exception object (equal in class, message and attributes), so that one caller's raise
    does not pile its traceback onto the others'."""

    async def run() -> list[Any]:
        store = AsyncStatsStore(url, namespace)
        await store.update("env", [1.0])
        await store.client.hset(store.key("env"), "mean", "abc")
        first = asyncio.ensure_future(store.update("env", [1.0]))
        await asyncio.sleep(0)  # in flight: the next two form a group behind it
        results = await asyncio.gather(first, store.update("env", [2.0]), store.update("env", [3.0]),
                                       return_exceptions=True)
        assert store.coalescer.requests_sent == 3  # the setup, the one in flight, then the group of two
        await store.aclose()
        return results

    results = asyncio.run(run())
    assert all(isinstance(result, CorruptStatsError) for result in results)
    grouped = results[1:]
    assert grouped[0] is not grouped[1]
    assert str(grouped[0]) == str(grouped[1]) and re.search(r"mean must be", str(grouped[0]))
    assert (grouped[0].key, grouped[0].field) == (grouped[1].key, grouped[1].field) == (f"{namespace}:{{env}}", "mean")
    assert isinstance(grouped[0].__cause__, redis.ResponseError)  # the server's reply, kept
    assert grouped[0].__cause__ is grouped[1].__cause__
