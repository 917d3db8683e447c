"""Freeze: while an env is frozen no merge from any process adds anything, normalization keeps
working against the frozen statistics, and a batch sent meanwhile is never counted, not even
when retried after an unfreeze."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import redis

from shared_rewardnorm import SharedRewardNormalizer, StatsStore
from shared_rewardnorm._core.keys import batch_record_key
from shared_rewardnorm._core.protocol import DUPLICATE, FROZEN, MERGED, decode_reply, encode_stats
from shared_rewardnorm._redis.scripts import script_source
from shared_rewardnorm.stats import RunningStats
from tests.support.worker_processes import run_workers

PROCESSES, BATCHES = 8, 60


def test_a_frozen_env_adds_nothing_and_still_normalizes(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=50)
    store.update("env", [1.0, 2.0, 3.0, 4.0])
    assert store.freeze("env") is True and store.freeze("env") is False
    key = store.key("env")
    before = raw_client.hgetall(key)
    info = store.info("env")
    assert info.frozen
    norm = SharedRewardNormalizer("env", store, warmup=0, clip=None)
    got = norm.normalize([100.0, -3.0])
    expected = [(v - info.stats.mean) / (info.stats.std + 1e-8) for v in (100.0, -3.0)]
    assert got == pytest.approx(expected) and norm.info.frozen and norm.count == 4
    assert store.update("env", [7.0]) == info.stats
    assert raw_client.hgetall(key) == before  # not a field written: totals, decay, merges, updated_at
    assert store.duplicates == 0
    assert store.unfreeze("env") is True and store.unfreeze("env") is False
    assert store.update("env", [7.0]).count == 5 and not store.info("env").frozen


def test_a_batch_sent_while_frozen_is_never_counted(raw_client: Any, namespace: str) -> None:
    """The script records a refused batch as handled: retried after the unfreeze, it is a
    duplicate, not a merge."""
    key = f"{namespace}:{{env}}"
    record = batch_record_key(key, "client-f")
    batch = encode_stats(RunningStats.from_values([5.0, 6.0]))

    def merge(seq: int) -> tuple[int, int]:
        info, outcome = decode_reply(raw_client.eval(script_source("merge"), 2, key, record, batch, str(seq), "60"))
        return info.stats.count, outcome

    assert merge(1) == (2, MERGED)
    raw_client.eval(script_source("freeze"), 1, key, "1")
    assert merge(2) == (2, FROZEN)
    assert merge(2) == (2, DUPLICATE)
    raw_client.eval(script_source("freeze"), 1, key, "0")
    assert merge(2) == (2, DUPLICATE)  # the retry after the unfreeze: still not counted
    assert merge(3) == (4, MERGED)


def test_freeze_an_env_without_statistics(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    assert store.freeze("new") is True
    info = store.info("new")
    assert info.frozen and info.stats.is_empty and "new" in store.envs()
    assert store.update("new", [1.0]).is_empty
    snapshot = json.loads(json.dumps(store.export(), allow_nan=False))  # strict JSON, as the CLI writes
    assert store.unfreeze("new") is True
    assert raw_client.exists(store.key("new")) == 0  # nothing else was in the hash
    store.restore(snapshot)
    assert store.info("new").frozen and store.info("new").stats.is_empty


def test_reset_set_and_restore_and_the_flag(backend: Any, namespace: str) -> None:
    """reset and set keep the flag (and the half-life); a version-1 restore keeps it; a
    version-2 restore sets what the snapshot says."""
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=10)
    store.update("env", [1.0, 2.0])
    snapshot = store.export()  # not frozen
    store.freeze("env")
    store.reset("env")
    info = store.info("env")
    assert info.frozen and info.half_life == 10.0 and info.stats.is_empty and info.merges == 0
    store.set("env", RunningStats.from_values([3.0]))
    assert store.info("env").frozen and store.get("env").count == 1
    v1 = {**snapshot, "version": 1, "envs": {"env": RunningStats.from_values([4.0, 5.0]).to_dict()}}
    store.restore(v1)
    assert store.info("env").frozen and store.get("env").count == 2
    store.restore(snapshot)
    restored = store.info("env")
    assert not restored.frozen and restored.to_dict() == snapshot["envs"]["env"]


@pytest.mark.parametrize("argument", ["", "2", "yes", "true"])
def test_freeze_script_validates_its_argument(raw_client: Any, namespace: str, argument: str) -> None:
    key = f"{namespace}:{{env}}"
    with pytest.raises(redis.ResponseError, match=rf"REWARDNORM_INVALID {key} frozen must be 1"):
        raw_client.eval(script_source("freeze"), 1, key, argument)
    assert raw_client.exists(key) == 0


def test_freeze_refuses_a_key_of_another_type(backend: Any, namespace: str, raw_client: Any) -> None:
    from shared_rewardnorm import WrongTypeError

    store = StatsStore(backend, namespace)
    raw_client.set(store.key("taken"), "x")
    for operation in (lambda: store.freeze("taken"), lambda: store.configure("taken", half_life=3)):
        with pytest.raises(WrongTypeError, match="holds a string"):
            operation()
    assert raw_client.get(store.key("taken")) == b"x"


def frozen_worker(url: str, namespace: str, mean: float, std: float, worker: int,
                  start: Any, failures: Any) -> None:
    """Normalize BATCHES batches into the frozen env; each result must be the z-score against
    the frozen statistics, and the normalizer must see the env frozen."""
    try:
        norm = SharedRewardNormalizer("shared", url, namespace=namespace, warmup=0, clip=None)
        rng = random.Random(worker)
        start.wait(30)
        for _ in range(BATCHES):
            batch = [rng.gauss(50.0, 9.0) for _ in range(rng.randint(1, 30))]
            got = norm.normalize(batch)
            expected = [(v - mean) / (std + 1e-8) for v in batch]
            if not norm.info.frozen or any(abs(a - b) > 1e-9 * max(1.0, abs(b)) for a, b in zip(got, expected)):
                failures.put(f"worker {worker}: {got[:3]} != {expected[:3]}")
                return
    except Exception as exc:  # reported to the parent, which fails the test
        failures.put(f"worker {worker}: {exc!r}")


@pytest.mark.real_redis
def test_a_frozen_env_stays_unchanged_while_8_processes_normalize(real_redis_url: str, namespace: str,
                                                                   real_client: redis.Redis) -> None:
    store = StatsStore(real_redis_url, namespace)
    store.configure("shared", half_life=100)
    store.update("shared", [1.0, 2.0, 3.0, 10.0])
    store.freeze("shared")
    before = real_client.hgetall(store.key("shared"))
    stats = store.get("shared")
    exit_codes, reported = run_workers(frozen_worker, PROCESSES, real_redis_url, namespace, stats.mean, stats.std)
    assert reported == []
    assert exit_codes == [0] * PROCESSES
    assert real_client.hgetall(store.key("shared")) == before
    store.unfreeze("shared")
    assert store.update("shared", [4.0]).count == 5
    store.close()
