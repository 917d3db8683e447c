"""Lost statistics are noticed and healed, never silently re-warmed: every env's statistics
carry an identity (epoch, origin); a normalizer that finds the env it knew gone (or recreated
from nothing by a merge) logs an ERROR with the counts and re-seeds it from its last view,
first writer wins; a deliberate reset or restore is told apart and never undone."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from shared_rewardnorm import EnvInfo, RunningStats, SharedRewardNormalizer, StatsStore
from shared_rewardnorm._core.identity import Verdict, judge


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_lost_env_is_reseeded_from_the_last_view(backend: Any, namespace: str, raw_client: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=50)
    norm = SharedRewardNormalizer("env", store, warmup=10)
    before = [float(i) for i in range(15)]
    norm.normalize(before)
    first = store.info("env")
    assert first.origin == "merge" and first.epoch is not None
    assert first.identity_age() is not None and first.identity_age() < 3600
    raw_client.delete(store.key("env"))  # a FLUSHDB, an empty restart, eviction...
    with caplog.at_level(logging.WARNING, logger="shared_rewardnorm"):
        out = norm.normalize([3.0, 4.0])
    assert any("env 'env' lost its statistics" in m and "knew count 15" in m and "found count 2" in m
               for m in errors(caplog)), errors(caplog)
    assert norm.is_warmed_up and out != [3.0, 4.0]  # normalized, not raw: never silently re-warmed
    healed = store.info("env")
    assert healed.stats == RunningStats.from_values(before).merge(RunningStats.from_values([3.0, 4.0]))
    assert healed.origin == "reseed" and healed.epoch != first.epoch
    assert healed.half_life == 50 and healed.decayed is not None and healed.decayed.weight > 0
    assert norm.count == 17 and (norm.losses, norm.reseeds) == (1, 1)
    assert norm.metrics_dict()["reward_norm/reseeds"] == 1.0


def test_the_first_writer_wins_and_a_second_client_merges_only_its_own(backend: Any, namespace: str,
                                                                        raw_client: Any,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    store = StatsStore(backend, namespace)
    a = SharedRewardNormalizer("env", store, warmup=0)
    b = SharedRewardNormalizer("env", store, warmup=0)
    a.normalize([1.0, 2.0])
    b.normalize([3.0])  # b's view includes a's batch; a's does not include b's
    raw_client.delete(store.key("env"))
    with caplog.at_level(logging.WARNING, logger="shared_rewardnorm"):
        a.normalize([10.0])  # a notices first and re-seeds from its view (count 2)
        b.normalize([20.0])  # b finds it re-seeded by another client: no second re-seed
    stored = store.get("env")
    assert stored.count == 2 + 1 + 1  # a's view, a's batch, b's batch; b's [3.0] after a's view is the loss
    assert stored == RunningStats.combine(map(RunningStats.from_values, ([1.0, 2.0], [10.0], [20.0])))
    assert (a.reseeds, b.reseeds, b.losses) == (1, 0, 0)
    assert any("re-seeded it" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_deliberate_reset_or_restore_is_never_undone(backend: Any, namespace: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    store = StatsStore(backend, namespace)
    norm = SharedRewardNormalizer("env", store, warmup=0)
    norm.normalize([1.0, 2.0, 3.0])
    snapshot = store.export()
    store.reset("env")
    assert store.info("env").origin == "replace"
    with caplog.at_level(logging.INFO, logger="shared_rewardnorm"):
        norm.normalize([5.0])
    assert store.get("env") == RunningStats.from_values([5.0])  # the reset stands
    assert not errors(caplog) and norm.reseeds == 0
    assert any("replaced deliberately" in r.getMessage() for r in caplog.records)
    store.restore(snapshot)
    norm.normalize([7.0])
    assert store.get("env") == RunningStats.from_values([1.0, 2.0, 3.0]).merge(RunningStats.from_values([7.0]))
    assert norm.reseeds == 0


def test_a_read_that_finds_the_env_gone_reseeds_it_too(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    norm = SharedRewardNormalizer("env", store, warmup=0)
    norm.normalize([1.0, 5.0])
    raw_client.delete(store.key("env"))
    assert norm.refresh() == RunningStats.from_values([1.0, 5.0])
    assert store.info("env").origin == "reseed"


def test_on_lost_log_only_logs(backend: Any, namespace: str, raw_client: Any,
                               caplog: pytest.LogCaptureFixture) -> None:
    store = StatsStore(backend, namespace)
    norm = SharedRewardNormalizer("env", store, warmup=0, on_lost="log")
    norm.normalize([1.0, 5.0])
    raw_client.delete(store.key("env"))
    with caplog.at_level(logging.ERROR, logger="shared_rewardnorm"):
        norm.normalize([2.0])
    assert any('on_lost="log": not repairing it' in m for m in errors(caplog))
    assert store.get("env") == RunningStats.from_values([2.0]) and norm.losses == 1 and norm.reseeds == 0
    with pytest.raises(ValueError, match=r"on_lost must be one of 'reseed', 'log', got 'heal'"):
        SharedRewardNormalizer("env", store, on_lost="heal")


def test_reseed_refuses_bad_arguments_and_writes_nothing(raw_client: Any, namespace: str) -> None:
    import redis

    from shared_rewardnorm._redis.scripts import script_source

    key = f"{namespace}:{{env}}"
    raw_client.hset(key, mapping={"count": "1", "mean": "5", "m2": "0", "min": "5", "max": "5"})
    before = raw_client.hgetall(key)
    for args, message in ((("x", "1 1 0 1 1", "0 0 0 0 0 0 0"), "expected epoch must be an integer"),
                          (("0", "0 0 0 0 0", "0 0 0 0 0 0 0"), "count must be an integer >= 1"),
                          (("0", "1 1 0 1 1", "1 0 0 0 0 0 0"), "weight must be 0 without a half_life")):
        with pytest.raises(redis.ResponseError, match=f"REWARDNORM_INVALID {key} {message}"):
            raw_client.eval(script_source("reseed"), 1, key, *args)
    assert raw_client.hgetall(key) == before


def test_the_judge_tells_the_cases_apart() -> None:
    known = EnvInfo(RunningStats.from_values([1.0]), epoch=10, origin="merge")
    assert judge(known, EnvInfo(RunningStats.from_values([1.0, 2.0]), epoch=10, origin="merge"), set()) \
        is Verdict.SAME
    assert judge(known, EnvInfo(), set()) is Verdict.LOST
    assert judge(known, EnvInfo(RunningStats.from_values([2.0]), epoch=11, origin="merge"), set()) is Verdict.LOST
    assert judge(known, EnvInfo(epoch=11, origin="replace"), set()) is Verdict.REPLACED
    assert judge(known, EnvInfo(epoch=11, origin="reseed"), set()) is Verdict.RESEEDED
    assert judge(known, EnvInfo(epoch=9, origin="merge"), {9}) is Verdict.STALE  # overtaken by a later reply
    assert judge(EnvInfo(), EnvInfo(), set()) is Verdict.SAME  # nothing known, nothing lost
    assert judge(EnvInfo(RunningStats.from_values([1.0])), EnvInfo(), set()) is Verdict.SAME  # no identity known
