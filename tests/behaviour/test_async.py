"""The asyncio classes give exactly what the sync classes give, and lose nothing under many
concurrent coroutines."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest
import redis

from shared_rewardnorm import (
    AsyncSharedRewardNormalizer,
    AsyncStatsStore,
    CorruptStatsError,
    RunningStats,
    SharedRewardNormalizer,
    StatsStore,
    WrongTypeError,
)


@pytest.fixture(autouse=True)
def cleanup(url: Any, namespace: str) -> Any:
    yield
    store = StatsStore(url, namespace)
    for env in store.envs():
        store.reset(env)
    if url is not None:
        store.client.close()


def scenario_batches() -> list[tuple[str, list[float]]]:
    rng = random.Random(5)
    return [(rng.choice(["gsm8k", "tool", "code"]), [rng.gauss(0, 3) for _ in range(rng.randint(1, 80))])
            for _ in range(60)]


def run_sync(url: Any, namespace: str) -> list[Any]:
    store = StatsStore(url, namespace)
    norms = {env: SharedRewardNormalizer(env, store, mode=mode, warmup=7)
             for env, mode in [("gsm8k", "zscore"), ("tool", "minmax"), ("code", "zscore")]}
    results: list[Any] = []
    for env, batch in scenario_batches():
        results.append(norms[env].normalize(batch))
        results.append((norms[env].count, norms[env].mean, norms[env].std, norms[env].is_warmed_up))
    results.append(norms["gsm8k"].metrics_dict())
    state = norms["tool"].state_dict()
    results.append(state)
    norms["code"].load_state_dict(state)
    results.append((norms["code"].mode, norms["code"].count, norms["code"].refresh()))
    results.append(store.get_many(["gsm8k", "tool", "missing"]))
    results.append((store.envs(), store.all(), store.aggregate(), store.metrics(["tool"])))
    snapshot = store.export()
    store.reset("gsm8k")
    results.append((store.get("gsm8k"), store.restore(snapshot), store.get("gsm8k")))
    results.append((store.update("new", [1.0, 2.0]), store.merge("new", RunningStats(1, 3.0, 0.0, 3.0, 3.0)),
                    store.set("new", RunningStats(2, 0.0, 2.0, -1.0, 1.0))))
    if url is not None:
        store.client.close()
    return results


async def run_async(url: Any, namespace: str) -> list[Any]:
    store = AsyncStatsStore(url, namespace)
    norms = {env: AsyncSharedRewardNormalizer(env, store, mode=mode, warmup=7)
             for env, mode in [("gsm8k", "zscore"), ("tool", "minmax"), ("code", "zscore")]}
    results: list[Any] = []
    for env, batch in scenario_batches():
        results.append(await norms[env].normalize(batch))
        results.append((norms[env].count, norms[env].mean, norms[env].std, norms[env].is_warmed_up))
    results.append(await norms["gsm8k"].metrics_dict())
    state = await norms["tool"].state_dict()
    results.append(state)
    await norms["code"].load_state_dict(state)
    results.append((norms["code"].mode, norms["code"].count, await norms["code"].refresh()))
    results.append(await store.get_many(["gsm8k", "tool", "missing"]))
    results.append((await store.envs(), await store.all(), await store.aggregate(), await store.metrics(["tool"])))
    snapshot = await store.export()
    await store.reset("gsm8k")
    results.append((await store.get("gsm8k"), await store.restore(snapshot), await store.get("gsm8k")))
    results.append((await store.update("new", [1.0, 2.0]),
                    await store.merge("new", RunningStats(1, 3.0, 0.0, 3.0, 3.0)),
                    await store.set("new", RunningStats(2, 0.0, 2.0, -1.0, 1.0))))
    await store.aclose()
    return results


def test_sync_and_async_give_identical_results(url: Any, namespace: str) -> None:
    sync_results = run_sync(url, namespace + "-sync")
    async_results = asyncio.run(run_async(url, namespace + "-async"))
    assert len(sync_results) == len(async_results)
    for index, (ours, theirs) in enumerate(zip(sync_results, async_results)):
        assert ours == theirs, f"step {index} differs"
    for suffix in ("-sync", "-async"):
        store = StatsStore(url, namespace + suffix)
        for env in store.envs():
            store.reset(env)


def test_many_coroutines_lose_nothing(url: Any, namespace: str) -> None:
    batches = [[float(i % 13), float(i % 7) * 0.5, -float(i % 3)] for i in range(400)]

    async def main() -> RunningStats:
        store = AsyncStatsStore(url, namespace)
        norm = AsyncSharedRewardNormalizer("busy", store, warmup=0)
        outputs = await asyncio.gather(*(norm.normalize(batch) for batch in batches))
        assert all(len(out) == 3 for out in outputs)
        stats = await store.get("busy")
        await store.aclose()
        return stats

    stats = asyncio.run(main())
    everything = [v for batch in batches for v in batch]
    mean = math.fsum(everything) / len(everything)
    assert stats.count == len(everything)
    assert math.isclose(stats.mean, mean, rel_tol=1e-12)
    assert math.isclose(stats.m2, math.fsum((v - mean) ** 2 for v in everything), rel_tol=1e-12)


def test_async_errors_match_sync(url: Any, namespace: str) -> None:
    raw = StatsStore(url, namespace).client
    raw.set(f"{namespace}:{{taken}}", "x")
    raw.hset(f"{namespace}:{{broken}}", mapping={"count": "2", "mean": "x", "m2": "0", "min": "0", "max": "0"})

    async def main() -> None:
        store = AsyncStatsStore(url, namespace)
        try:
            with pytest.raises(WrongTypeError):
                await store.update("taken", [1.0])
            with pytest.raises(WrongTypeError):
                await store.get_many(["taken"])
            with pytest.raises(CorruptStatsError) as info:
                await store.get("broken")
            assert info.value.field == "mean"
            with pytest.raises(ValueError):
                await AsyncSharedRewardNormalizer("ok", store).normalize([1.0, math.nan])
            assert (await store.get("ok")).is_empty
        finally:
            await store.aclose()

    asyncio.run(main())
    raw.delete(f"{namespace}:{{taken}}", f"{namespace}:{{broken}}")


def test_clients_of_the_wrong_kind_are_refused(real_redis_url: str) -> None:
    sync_client = redis.Redis.from_url(real_redis_url)
    with pytest.raises(TypeError, match="blocking client"):
        AsyncStatsStore(sync_client)
    sync_client.close()

    async def main() -> None:
        async_client = redis.asyncio.Redis.from_url(real_redis_url)
        with pytest.raises(TypeError, match="asyncio client"):
            StatsStore(async_client)
        await async_client.aclose()

    asyncio.run(main())
