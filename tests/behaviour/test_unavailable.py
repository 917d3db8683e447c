"""An unreachable store raises ``StoreUnavailableError`` once the retry policy is spent: a
library error (also a ``ConnectionError``) naming the server and how long it tried, with the
driver's error as its cause. Nothing listens on the port these tests use."""

from __future__ import annotations

import asyncio
import builtins

import pytest
import redis

from shared_rewardnorm import (
    AsyncSharedRewardNormalizer,
    AsyncStatsStore,
    RetryPolicy,
    RewardNormError,
    SharedRewardNormalizer,
    StatsStore,
    StoreUnavailableError,
)
from tests.support.redis_servers import free_port

QUICK = RetryPolicy(attempts=3, base=0.001, cap=0.002)


def test_a_spent_retry_policy_raises_a_library_error_naming_the_store(namespace: str) -> None:
    port = free_port()
    store = StatsStore(f"redis://:secret@127.0.0.1:{port}/0", namespace, retry=QUICK)
    with pytest.raises(StoreUnavailableError, match=rf"store at 127\.0\.0\.1:{port} is unavailable: "
                                                    r"ConnectionError: .* \(after 3 tries in \d+\.\d\d s") as caught:
        store.update("env", [1.0])
    error = caught.value
    assert isinstance(error, RewardNormError)
    assert isinstance(error, redis.ConnectionError)  # existing handlers keep working
    assert isinstance(error, builtins.ConnectionError)
    assert isinstance(error.__cause__, redis.ConnectionError) and not isinstance(error.__cause__, RewardNormError)
    assert (error.store, error.attempts) == (f"127.0.0.1:{port}", 3)
    assert error.elapsed >= 0
    assert "secret" not in str(error)
    assert store.retries == 2
    store.close()


def test_without_a_retry_policy_one_try_then_the_same_error(namespace: str) -> None:
    with SharedRewardNormalizer("env", f"redis://127.0.0.1:{free_port()}/0", namespace=namespace) as norm:
        norm.store._retry = None  # the normalizer's own store: never retry
        with pytest.raises(StoreUnavailableError, match=r"after 1 try in"):
            norm.normalize([1.0, 2.0])


def test_asyncio_raises_it_too(namespace: str) -> None:
    async def scenario() -> None:
        port = free_port()
        async with AsyncStatsStore(f"redis://127.0.0.1:{port}/0", namespace, retry=QUICK) as store:
            norm = AsyncSharedRewardNormalizer("env", store)
            with pytest.raises(StoreUnavailableError, match=rf"127\.0\.0\.1:{port} is unavailable"):
                await norm.normalize([1.0, 2.0])
            results = await asyncio.gather(*(store.update("env", [float(i)]) for i in range(5)),
                                           return_exceptions=True)
            assert all(isinstance(result, StoreUnavailableError) for result in results), results

    asyncio.run(scenario())
