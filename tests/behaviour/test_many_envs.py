"""Reading many envs at once: get_many, envs, all, aggregate, metrics, export and restore."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from shared_rewardnorm import RunningStats, StatsStore, WrongTypeError

ENV_NAMES = ["gsm8k", "tool use", "code/v2", "star*", "q?[x]", "üñí"]


def fill(store: StatsStore, seed: int = 1) -> dict[str, list[float]]:
    rng = random.Random(seed)
    sent: dict[str, list[float]] = {}
    for env in ENV_NAMES:
        values = [rng.gauss(rng.uniform(-5, 5), rng.uniform(0.1, 4)) for _ in range(rng.randint(5, 50))]
        store.update(env, values)
        sent[env] = values
    return sent


def test_get_many_returns_each_env_and_empties(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    sent = fill(store)
    found = store.get_many(["gsm8k", "missing", "gsm8k", "star*"])
    assert list(found) == ["gsm8k", "missing", "star*"]
    assert found["gsm8k"] == store.get("gsm8k") and found["missing"].is_empty
    assert found["star*"].count == len(sent["star*"])
    assert store.get_many([]) == {}
    with pytest.raises(TypeError):
        store.get_many("gsm8k")
    with pytest.raises(ValueError):
        store.get_many(["ok", "bad{name}"])


def test_envs_and_all_stay_inside_the_namespace(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    fill(store)
    # Neighbours that must not be picked up: another namespace sharing a prefix, a key with a
    # suffix after the hash tag, and a non-hash key.
    other = StatsStore(backend, namespace + "x")
    other.update("intruder", [1.0])
    raw_client.hset(f"{namespace}:{{gsm8k}}:extra", "count", "1")
    raw_client.set(f"{namespace}:{{plain-string}}", "x")
    try:
        assert store.envs() == sorted(ENV_NAMES)
        everything = store.all()
        assert sorted(everything) == sorted(ENV_NAMES)
        assert everything == store.get_many(ENV_NAMES)
    finally:
        other.reset("intruder")
        raw_client.delete(f"{namespace}:{{gsm8k}}:extra", f"{namespace}:{{plain-string}}")


def test_glob_characters_in_the_namespace_match_literally(backend: Any, namespace: str) -> None:
    tricky = StatsStore(backend, namespace + "[ab]*")
    plain = StatsStore(backend, namespace + "a")
    tricky.update("env", [1.0])
    plain.update("env", [2.0])
    try:
        assert tricky.envs() == ["env"] and tricky.all()["env"].mean == 1.0
        assert plain.envs() == ["env"] and plain.all()["env"].mean == 2.0
    finally:
        tricky.reset("env")
        plain.reset("env")


def test_aggregate_is_the_exact_merge(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    sent = fill(store)
    everything = [v for values in sent.values() for v in values]
    total = store.aggregate()
    mean = math.fsum(everything) / len(everything)
    assert total.count == len(everything)
    assert math.isclose(total.mean, mean, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(total.m2, math.fsum((v - mean) ** 2 for v in everything), rel_tol=1e-10)
    assert (total.min, total.max) == (min(everything), max(everything))
    some = store.aggregate(["gsm8k", "code/v2"])
    assert some.count == len(sent["gsm8k"]) + len(sent["code/v2"])
    assert StatsStore(backend, namespace + "-empty").aggregate() == RunningStats()


def test_metrics_have_a_key_per_env_and_stat(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    fill(store)
    metrics = store.metrics()
    assert set(metrics) == {f"reward_norm/{env}/{stat}" for env in ENV_NAMES
                            for stat in ("count", "mean", "std", "min", "max")}
    assert metrics["reward_norm/gsm8k/std"] == store.get("gsm8k").std
    assert set(store.metrics(["gsm8k"])) == {f"reward_norm/gsm8k/{s}" for s in ("count", "mean", "std", "min", "max")}


def test_export_restore_round_trip_is_exact(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    fill(store)
    before = store.all()
    snapshot = json.loads(json.dumps(store.export(), allow_nan=False))  # strict JSON survives
    assert snapshot["version"] == 2 and snapshot["namespace"] == namespace
    for env in ENV_NAMES:
        store.reset(env)
    assert store.all() == {}
    target = StatsStore(backend, namespace + "-copy")
    try:
        assert target.restore(snapshot) == before
        assert store.restore(snapshot) == before
        assert store.all() == before == target.all()
    finally:
        for env in ENV_NAMES:
            target.reset(env)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda s: s.update(format="something else"), "not a shared_rewardnorm snapshot: format is 'something else'"),
        (lambda s: s.update(version=3), "unsupported snapshot version 3"),
        (lambda s: s["envs"]["zz-last"].update(half_life=-1.0, decayed={"weight": 0, "mean": 0, "m2": 0}),
         "snapshot env 'zz-last': half_life"),
        (lambda s: s["envs"]["zz-last"].update(decayed={"weight": 1.0, "mean": 0.0, "m2": 0.0}),  # no half_life
         "snapshot env 'zz-last': .*half_life"),
        (lambda s: s["envs"]["zz-last"].update(half_life=10.0, decayed={"weight": -1.0, "mean": 0.0, "m2": 0.0}),
         "snapshot env 'zz-last': .*weight"),
        (lambda s: s["envs"]["zz-last"].update(frozen="yes"), "snapshot env 'zz-last': frozen"),
        (lambda s: s["envs"]["zz-last"].update(merges=-1), "snapshot env 'zz-last': merges"),
        (lambda s: s["envs"]["zz-last"].update(updated_at=1.5), "snapshot env 'zz-last': updated_at"),
        (lambda s: s.pop("envs"), "snapshot has no 'envs' object"),
        (lambda s: s["envs"].update({"bad{env}": {"count": 1, "mean": 0.0, "m2": 0.0, "min": 0.0, "max": 0.0}}),
         r"env name 'bad\{env\}' contains '\{'"),
        (lambda s: s["envs"]["zz-last"].update(m2=-1.0), "snapshot env 'zz-last': m2 must be >= 0, got -1.0"),
        (lambda s: s["envs"]["zz-last"].pop("max"), "snapshot env 'zz-last': .*missing max"),
        (lambda s: s["envs"]["zz-last"].update(count="many"), "snapshot env 'zz-last': count must be an int"),
        (lambda s: s["envs"]["zz-last"].update(mean=7.0),
         r"snapshot env 'zz-last': mean 7.0 lies outside \[min, max\] = \[3.0, 3.0\]"),
    ],
)
def test_bad_snapshots_write_nothing(backend: Any, namespace: str, damage: Any, match: str) -> None:
    store = StatsStore(backend, namespace)
    store.update("aa-first", [1.0, 2.0])
    store.update("zz-last", [3.0])
    snapshot = store.export()
    # A valid, different entry before the bad one: restore must not write it either.
    snapshot["envs"]["aa-first"].update(RunningStats(10, 5.0, 1.0, 4.0, 6.0).to_dict())
    damage(snapshot)
    with pytest.raises(ValueError, match=match):  # InvalidStatsError is a ValueError
        store.restore(snapshot)
    assert store.get("aa-first").count == 2  # the valid env before the bad one was not written


def test_wrong_type_key_in_get_many(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    raw_client.set(store.key("taken"), "x")
    with pytest.raises(WrongTypeError) as info:
        store.get_many(["fine", "taken"])
    assert info.value.key == store.key("taken")


def test_restore_checks_key_types_before_writing(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    snapshot = {"format": "shared_rewardnorm.snapshot", "version": 1,
                "envs": {"aa-first": RunningStats(3, 1.0, 2.0, 0.0, 2.0).to_dict(),
                         "zz-taken": RunningStats(1, 5.0, 0.0, 5.0, 5.0).to_dict()}}
    raw_client.set(store.key("zz-taken"), "somebody else's")
    with pytest.raises(WrongTypeError):
        store.restore(snapshot)
    assert store.get("aa-first").is_empty  # nothing was written
    raw_client.delete(store.key("zz-taken"))
