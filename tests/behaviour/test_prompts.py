"""PromptStats on the embedded store and a real Redis: the decayed per-prompt statistics equal an
independent per-sample computation of the definition, advantages use the means from before the
call, select/weights/seed/forget/export do what they say, bad stored records and bad input are
refused with nothing stored, and (real Redis) processes and lost replies count exactly once."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import random
from typing import Any

import pytest
import redis

from shared_rewardnorm import (
    AsyncPromptStats,
    CorruptStatsError,
    InvalidStatsError,
    PromptInfo,
    PromptStats,
    RetryPolicy,
    StatsStore,
)
from shared_rewardnorm._core.prompt_ops import bucket_key, bucket_of
from tests.support.drop_proxy import DropProxy
from tests.support.prompt_oracle import OFFSET, DefinitionOracle, assert_matches

FAST_RETRY = RetryPolicy(attempts=10, base=0.001, cap=0.01)


def run_against_the_definition(prompts: PromptStats, calls: int, decay: float, seed: int) -> None:
    rng = random.Random(seed)
    oracle = DefinitionOracle(decay)
    pool = [f"prompt-{i}" for i in range(60)] + ["ünï", "with space", "{braces}"]
    prompts.configure(decay=decay)
    for _ in range(calls):
        chosen = rng.sample(pool, rng.randint(1, 12))
        ids = [prompt_id for prompt_id in chosen for _ in range(rng.choice((1, 1, 2, 4, 8)))]
        rng.shuffle(ids)
        rewards = [OFFSET + (rng.random() < 0.4) + rng.gauss(0, 0.1) for _ in ids]
        prompts.update(ids, rewards)
        oracle.call(ids, rewards)
    infos = prompts.get(list(oracle.visits))
    for prompt_id, info in zip(oracle.visits, infos, strict=True):
        assert_matches(info, oracle.expected(prompt_id))


@pytest.mark.parametrize("decay", [1.0, 0.9])
def test_decayed_statistics_equal_the_definition_per_sample(backend: Any, namespace: str, decay: float) -> None:
    with PromptStats("math", backend, namespace=namespace) as prompts:
        run_against_the_definition(prompts, 300, decay, seed=int(decay * 10))


@pytest.mark.slow
def test_decayed_statistics_equal_the_definition_over_thousands_of_calls(backend: Any, namespace: str) -> None:
    with PromptStats("math", backend, namespace=namespace) as prompts:
        run_against_the_definition(prompts, 3000, 0.97, seed=3)


def test_advantages_use_the_means_from_before_the_call(backend: Any, namespace: str) -> None:
    prompts = PromptStats("math", backend, namespace=namespace)
    assert prompts.advantages(["a", "a", "b"], [1.0, 0.0, 1.0]) == [0.5, -0.5, 0.0]  # new: the call's own mean
    assert prompts.advantages(["a", "b", "a"], [1.0, 0.0, 1.0]) == [0.5, -1.0, 0.5]  # before: a 0.5, b 1.0
    info = prompts.get(["a"])[0]
    assert info is not None and (info.visits, info.count, info.mean) == (2, 4, 0.75)


def test_select_keeps_the_prompts_in_range_and_the_unknown_ones(backend: Any, namespace: str) -> None:
    prompts = PromptStats("math", backend, namespace=namespace)
    prompts.update(["solved", "hopeless", "medium", "medium"], [1.0, 0.0, 1.0, 0.0])
    assert prompts.select(["new", "solved", "medium", "hopeless", "new", "medium"], low=0.0, high=1.0) \
        == ["new", "medium"]
    weights = prompts.weights(["medium", "solved", "new"], eps=0.05)
    assert weights == [pytest.approx(0.55), pytest.approx(0.05), pytest.approx(0.55)]
    assert prompts.weights(["medium"], low=-1.0, high=1.0) == [pytest.approx(math.sqrt(0.75 * 0.25) + 0.05)]


def test_seed_sets_a_prior_that_later_visits_decay(backend: Any, namespace: str) -> None:
    prompts = PromptStats("math", backend, namespace=namespace)
    prompts.configure(decay=0.5)
    assert prompts.seed(["p", "q"], [0.25, 0.5], [4.0, 2.0]) == 2
    assert prompts.get(["p"]) == [PromptInfo(0, 0, 4.0, 0.25, 0.0)]
    prompts.update(["p"], [1.0])
    info = prompts.get(["p"])[0]  # alpha = 0.5 * 1 + 1 = 1.5, beta = 0.5 * 3 = 1.5
    assert info is not None and (info.visits, info.count, info.weight, info.mean) == (1, 1, 3.0, 0.5)
    with pytest.raises(ValueError, match=r"prompt \"p\" already has statistics \(pass replace=True"):
        prompts.seed(["new", "p"], [0.5, 0.5], [1.0, 1.0])
    assert prompts.get(["new"]) == [None]  # nothing of the refused call was written
    prompts.seed(["p"], [0.9], [1.0], replace=True)
    assert prompts.get(["p"]) == [PromptInfo(0, 0, 1.0, 0.9, 0.0)]


def test_a_corrupt_record_is_refused_by_name_and_nothing_is_written(backend: Any, raw_client: Any,
                                                                    namespace: str) -> None:
    prompts = PromptStats("math", backend, namespace=namespace)
    prompts.update(["good", "bad"], [1.0, 1.0])
    bad_key = bucket_key(prompts.key, bucket_of("bad", prompts.settings().buckets))
    raw_client.hset(bad_key, "bad", "1,1,garbage")
    with pytest.raises(CorruptStatsError, match="prompt \"bad\" holds"):
        prompts.update(["good", "bad"], [0.0, 0.0])
    with pytest.raises(CorruptStatsError, match="prompt 'bad' holds '1,1,garbage'"):
        prompts.get(["bad"])
    assert prompts.get(["good"]) == [PromptInfo(1, 1, 1.0, 1.0, 0.0)]


def test_a_retry_under_the_same_batch_id_counts_once(backend: Any, namespace: str) -> None:
    prompts = PromptStats("math", backend, namespace=namespace)
    prompts.update(["a", "b"], [1.0, 0.0], batch_id="step-1")
    prompts.update(["a", "b"], [1.0, 0.0], batch_id="step-1")
    assert [info.count for info in prompts.get(["a", "b"]) if info] == [1, 1]
    with pytest.raises(ValueError, match="batch_id 'step-1' was already used"):
        prompts.update(["a", "b"], [0.0, 0.0], batch_id="step-1")


def test_a_call_made_for_another_bucket_count_is_refused_and_writes_nothing(backend: Any, namespace: str) -> None:
    """A client that read the settings before another changed the (empty) set's bucket count is
    told to read them again by every call that names buckets: update, seed and forget."""
    stale = PromptStats("math", backend, namespace=namespace)
    stale.get(["x"])  # reads the default bucket count
    PromptStats("math", backend, namespace=namespace).configure(decay=1.0, buckets=64)
    refused = r"the prompt set has 64 buckets, the call was made for \"16384\" \(read the settings again\)"
    for call in (lambda: stale.update(["x"], [1.0]), lambda: stale.seed(["x"], [0.5], [2.0]),
                 lambda: stale.forget(["x"])):
        with pytest.raises(InvalidStatsError, match=refused):
            call()
    assert PromptStats("math", backend, namespace=namespace).get(["x"]) == [None]


def test_forget_export_and_restore(backend: Any, raw_client: Any, namespace: str) -> None:
    prompts = PromptStats("math", backend, namespace=namespace)
    prompts.configure(decay=0.8, buckets=64)
    rng = random.Random(2)
    ids = [str(index) for index in range(500)]
    for _ in range(5):
        prompts.update(ids, [rng.random() for _ in ids])
    snapshot = prompts.export()
    assert len(snapshot["prompts"]) == 500 and snapshot["decay"] == 0.8 and snapshot["buckets"] == 64
    assert prompts.forget(["3", "4", "never"]) == 2
    assert prompts.get(["3", "5"])[0] is None
    with pytest.raises(ValueError, match="already uses 64 buckets"):
        prompts.configure(buckets=128)
    prompts.forget()
    # what stays is a tombstone of the set's identity (running clients adopt it, not heal), expiring in a day
    assert [key for key in raw_client.scan_iter(f"{namespace}*") if b":batches:" not in key] == [
        prompts.key.encode()]
    tombstone = raw_client.hgetall(prompts.key)
    assert set(tombstone) == {b"epoch", b"origin"} and tombstone[b"origin"] == b"forget"
    assert 86000 < raw_client.ttl(prompts.key) <= 86400
    copy = PromptStats("math", StatsStore(backend, namespace + "-copy"))
    copy.configure(buckets=32)
    assert copy.restore(snapshot) == 500
    restored = copy.export()
    assert restored["prompts"] == snapshot["prompts"] and restored["buckets"] == 32 and restored["decay"] == 0.8


def test_the_asyncio_twin(url: Any, namespace: str) -> None:
    async def run() -> tuple[list[float], list[PromptInfo | None], int]:
        async with AsyncPromptStats("math", url, namespace=namespace) as prompts:
            await prompts.configure(decay=0.5)
            await asyncio.gather(*(prompts.update([f"p{i % 3}"], [1.0]) for i in range(9)))
            advantages = await prompts.advantages(["p0", "new"], [0.0, 1.0])
            seen = [item async for item in prompts.items()]
            return advantages, await prompts.get(["p0", "new"]), len(seen)

    advantages, infos, seen = asyncio.run(run())
    assert advantages == [-1.0, 0.0]
    assert infos[0] is not None and (infos[0].visits, infos[0].count) == (4, 4)
    assert infos[0].weight == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert seen == 4


# -- real Redis: processes and lost replies --------------------------------------------------------


def _worker(url: str, namespace: str, worker: int, calls: int) -> None:
    rng = random.Random(worker)
    with PromptStats("shared", url, namespace=namespace) as prompts:
        for _ in range(calls):
            ids = [f"p{rng.randrange(40)}" for _ in range(rng.randint(1, 16))]
            prompts.update(ids, [float(worker) + rng.random() for _ in ids])


def _sent(worker: int, calls: int) -> list[tuple[list[str], list[float]]]:
    rng = random.Random(worker)
    out = []
    for _ in range(calls):
        ids = [f"p{rng.randrange(40)}" for _ in range(rng.randint(1, 16))]
        out.append((ids, [float(worker) + rng.random() for _ in ids]))
    return out


@pytest.mark.real_redis
def test_eight_processes_on_overlapping_prompts_end_with_exact_counts(real_redis_url: str, namespace: str) -> None:
    calls = 40
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(real_redis_url, namespace, worker, calls)) for worker in range(8)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    visits: dict[str, int] = {}
    rewards: dict[str, list[float]] = {}
    for worker in range(8):
        for ids, values in _sent(worker, calls):
            for prompt_id in set(ids):
                visits[prompt_id] = visits.get(prompt_id, 0) + 1
            for prompt_id, value in zip(ids, values, strict=True):
                rewards.setdefault(prompt_id, []).append(value)
    prompts = PromptStats("shared", real_redis_url, namespace=namespace)
    for prompt_id, info in zip(visits, prompts.get(list(visits)), strict=True):
        assert info is not None
        assert (info.visits, info.count) == (visits[prompt_id], len(rewards[prompt_id]))
        assert info.mean == pytest.approx(math.fsum(rewards[prompt_id]) / len(rewards[prompt_id]), rel=1e-12)
    prompts.close()


@pytest.mark.real_redis
@pytest.mark.parametrize("who_retries", ["store", "caller with batch_id"])
def test_retries_through_lost_replies_count_once(real_redis_url: str, real_client: redis.Redis, namespace: str,
                                                 who_retries: str) -> None:
    port = redis.connection.parse_url(real_redis_url)["port"]
    rng = random.Random(9)
    sent = [([f"p{rng.randrange(30)}" for _ in range(rng.randint(1, 8))]) for _ in range(200)]
    oracle = DefinitionOracle(0.9)
    with DropProxy(port, drop_rate=0.08, seed=5) as proxy:
        client = redis.Redis.from_url(proxy.url, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        store = StatsStore(client, namespace, retry=FAST_RETRY if who_retries == "store" else None, functions=False)
        prompts = PromptStats("env", store)
        PromptStats("env", StatsStore(real_client, namespace)).configure(decay=0.9)
        caller_retries = 0
        for index, ids in enumerate(sent):
            values = [OFFSET + rng.random() for _ in ids]
            while True:
                try:
                    prompts.update(ids, values, batch_id=f"call-{index}")
                    break
                except redis.ConnectionError:
                    caller_retries += 1
            oracle.call(ids, values)
        client.close()
        assert proxy.drops > 0
    assert (store.retries > 0) == (who_retries == "store")
    assert (caller_retries > 0) == (who_retries != "store")
    reader = PromptStats("env", StatsStore(real_client, namespace))
    for prompt_id, info in zip(oracle.visits, reader.get(list(oracle.visits)), strict=True):
        assert_matches(info, oracle.expected(prompt_id))
