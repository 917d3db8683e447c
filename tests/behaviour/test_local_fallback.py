"""``on_unavailable="local"``: an unreachable store never raises from ``normalize``; calls
answer from the last shared statistics plus the local samples, at most one call per interval
tries the store, and when it answers the local samples are merged exactly once (a merge whose
fate was unknown is resent under its id, never also folded into the local summary).

The breaker's clock is replaced by a hand-driven one, so no test sleeps for it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from shared_rewardnorm import (
    AsyncSharedRewardNormalizer,
    AsyncStatsStore,
    RetryPolicy,
    RunningStats,
    SharedRewardNormalizer,
    StatsStore,
    StoreUnavailableError,
)
from shared_rewardnorm._core.outage import LocalFallback
from tests.support.drop_proxy import DropProxy
from tests.support.helpers import require_binaries
from tests.support.redis_servers import NO_PERSISTENCE, RedisServer

QUICK = RetryPolicy(attempts=2, base=0.001, cap=0.002)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_clock(norm: Any) -> Clock:
    clock = Clock()
    norm._fallback = LocalFallback(norm.env, clock)
    return clock


def counting_sends(store: StatsStore) -> list[Any]:
    sent: list[Any] = []
    issue = store._issue

    def counted(request: Any, *retry: Any) -> Any:
        sent.append(request)
        return issue(request, *retry)

    store._issue = counted  # type: ignore[method-assign]
    return sent


def test_on_unavailable_is_validated() -> None:
    with pytest.raises(ValueError, match=r"on_unavailable must be one of 'raise', 'local', got 'ignore'"):
        SharedRewardNormalizer("env", None, on_unavailable="ignore")


@pytest.mark.own_server
def test_an_outage_is_ridden_out_and_the_local_samples_merged_once(tmp_path: Path, namespace: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    require_binaries("redis-server")
    server = RedisServer(tmp_path, NO_PERSISTENCE)  # not started yet: its port refuses connections
    store = StatsStore(server.url, namespace, retry=QUICK)
    norm = SharedRewardNormalizer("env", store, warmup=4, clip=None, on_unavailable="local")
    clock = with_clock(norm)
    sent = counting_sends(store)
    assert norm.metrics_dict()["reward_norm/degraded"] == 1.0  # (unreachable from the start)
    assert norm.degraded
    with caplog.at_level(logging.INFO, logger="shared_rewardnorm"):
        assert norm.normalize([1.0, 2.0]) == [1.0, 2.0]  # warming up: raw, from the local view
        tries = len(sent)
        outputs = norm.normalize([3.0, 4.0, 5.0])  # no interval passed: no I/O at all
        assert len(sent) == tries
        assert norm.count == 5 and norm.mean == pytest.approx(3.0)  # the count keeps growing
        local = RunningStats.from_values([1.0, 2.0, 3.0, 4.0, 5.0])
        assert outputs == pytest.approx([(x - local.mean) / (local.std + 1e-8) for x in (3.0, 4.0, 5.0)])
        clock.now += 1.5
        norm.normalize([6.0])  # one try, refused again
        assert len(sent) == tries + 1
        server.start()
        try:
            assert norm.normalize([7.0]) == pytest.approx([norm.normalize([7.0], update=False)[0]])
            assert norm.degraded  # the breaker waits for its interval even though the server is back
            clock.now += 1.5
            norm.normalize([8.0])
            assert not norm.degraded
            assert norm.metrics_dict()["reward_norm/degraded"] == 0.0
            everything = RunningStats.from_values([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
            stored = store.get("env")
            assert stored.count == everything.count
            assert stored.mean == pytest.approx(everything.mean) and stored.m2 == pytest.approx(everything.m2)
            assert norm.count == everything.count
        finally:
            store.close()
            server.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unavailable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one per outage
    assert any("answers again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


@pytest.mark.own_server
def test_a_merge_whose_reply_was_lost_is_resent_under_its_id(server: RedisServer, namespace: str) -> None:
    """The proxy runs every merge and drops its reply: the store gives up with the merge stored.
    After the outage it is resent under the id it was first sent with, and counts once."""
    with DropProxy(server.port, drop_rate=0.0, trigger=b"EVALSHA") as proxy:
        store = StatsStore(proxy.url, namespace, retry=QUICK, functions=False)
        norm = SharedRewardNormalizer("env", store, warmup=0, on_unavailable="local")
        clock = with_clock(norm)
        norm.normalize([5.0])  # the server caches the script (a NOSCRIPT reply would be dropped too)
        proxy.drop_rate = 1.0
        norm.normalize([0.0, 10.0])  # lands, but its reply is lost
        assert norm.degraded
        assert StatsStore(server.url, namespace).get("env").count == 3  # it did land
        proxy.drop_rate = 0.0
        clock.now += 1.5
        norm.normalize([4.0, 6.0])
        assert not norm.degraded
        assert store.duplicates == 1  # the resend was recognized
        assert store.get("env") == RunningStats.combine(map(RunningStats.from_values, ([5.0], [0.0, 10.0], [4.0, 6.0])))
        store.close()


def test_raise_stays_the_default(namespace: str) -> None:
    server_url = "redis://127.0.0.1:1/0"  # port 1: nothing listens
    with SharedRewardNormalizer("env", StatsStore(server_url, namespace, retry=QUICK)) as norm:
        assert norm.on_unavailable == "raise"
        with pytest.raises(StoreUnavailableError):
            norm.normalize([1.0])
        assert not norm.degraded


@pytest.mark.own_server
def test_asyncio_rides_out_an_outage_too(tmp_path: Path, namespace: str) -> None:
    require_binaries("redis-server")
    server = RedisServer(tmp_path, NO_PERSISTENCE)

    async def scenario() -> None:
        async with AsyncStatsStore(server.url, namespace, retry=QUICK) as store:
            norm = AsyncSharedRewardNormalizer("env", store, warmup=0, on_unavailable="local")
            clock = with_clock(norm)
            batches = [[float(i), float(i) + 1.0] for i in range(20)]
            results = await asyncio.gather(*(norm.normalize(batch) for batch in batches[:10]))
            assert all(len(result) == 2 for result in results)
            assert norm.degraded and norm.count == 20
            server.start()
            clock.now += 1.5
            await asyncio.gather(*(norm.normalize(batch) for batch in batches[10:]))
            await norm.normalize([100.0])
            assert not norm.degraded
            expected = RunningStats.from_values([x for batch in batches for x in batch] + [100.0])
            stored = await store.get("env")
            assert stored.count == expected.count and stored.mean == pytest.approx(expected.mean)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
