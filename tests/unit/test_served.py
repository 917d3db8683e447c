"""The store-level metrics' view of the normalizers normalizing through a store
(``_core/served.py``), driven by hand with canned replies and stand-in normalizers: the
``degraded`` flag per env, the single tries while a normalizer is degraded, and the answer from
the local views when the store is unreachable."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared_rewardnorm import EnvInfo, RunningStats, StoreUnavailableError
from shared_rewardnorm._core.normalizer_ops import NormalizerCore
from shared_rewardnorm._core.requests import Once, ReadMany, ScanKeys
from shared_rewardnorm._core.store_ops import StoreCore
from tests.support.drive import drive


@dataclass(eq=False)
class Norm:
    """A stand-in for a normalizer: what the store reads of one."""

    env: str
    on_unavailable: str = "local"
    degraded: bool = False
    shared_info: EnvInfo = field(default_factory=EnvInfo)
    owed: RunningStats = field(default_factory=RunningStats)


def stored(values: list[float]) -> dict[bytes, bytes]:
    """A hash as HGETALL returns it, with the totals of ``values``."""
    stats = RunningStats.from_values(values)
    return {b"count": b"%d" % stats.count, b"mean": b"%.17g" % stats.mean, b"m2": b"%.17g" % stats.m2,
            b"min": b"%.17g" % stats.min, b"max": b"%.17g" % stats.max, b"merges": b"1"}


def unavailable() -> StoreUnavailableError:
    return StoreUnavailableError("the store at 127.0.0.1:1 is unavailable", store="127.0.0.1:1")


def fails_at_once(operation: Any) -> tuple[Any, Any]:
    """The first request of ``operation``, and its result after that request failed as an
    unreachable store fails (or the exception it let out)."""
    request = operation.send(None)
    try:
        operation.throw(unavailable())
    except StopIteration as done:
        return request, done.value
    except StoreUnavailableError as exc:
        return request, exc
    raise AssertionError("the operation sent another request after the store failed")


@pytest.fixture
def core() -> StoreCore:
    return StoreCore("ns")


def test_a_healthy_store_flags_each_env_normalized_through_it(core: StoreCore) -> None:
    a, b = Norm("a"), Norm("b", on_unavailable="raise")
    core.served.add(a)
    core.served.add(b)
    requests, metrics = drive(core._metrics_op(None), [[b"ns:{a}", b"ns:{c}"], [stored([1.0, 3.0]), stored([5.0])]])
    assert requests == [ScanKeys("ns:{*}"), ReadMany(("ns:{a}", "ns:{c}"))]  # healthy: the store's retries apply
    assert metrics["reward_norm/a/count"] == 2.0 and metrics["reward_norm/c/count"] == 1.0
    # b has no statistics in the store yet, but it is normalized through this store: its flag is there.
    assert {key: value for key, value in metrics.items() if key.endswith("/degraded")} == {
        "reward_norm/a/degraded": 0.0, "reward_norm/b/degraded": 0.0}
    assert "reward_norm/c/degraded" not in metrics  # another process's env: nothing here knows


def test_a_degraded_normalizer_flags_its_env_and_the_reads_get_one_try(core: StoreCore) -> None:
    norms = [Norm("a"), Norm("a", degraded=True), Norm("b")]
    for norm in norms:
        core.served.add(norm)
    requests, metrics = drive(core._metrics_op(["a", "b", "x"]), [[stored([1.0]), stored([2.0]), {}]])
    assert requests == [Once(ReadMany(("ns:{a}", "ns:{b}", "ns:{x}")))]
    assert metrics["reward_norm/a/degraded"] == 1.0  # one of a's two normalizers answers locally
    assert metrics["reward_norm/b/degraded"] == 0.0
    assert "reward_norm/x/degraded" not in metrics and metrics["reward_norm/x/count"] == 0.0


def test_an_unreachable_store_answers_from_the_local_views(core: StoreCore) -> None:
    shared = RunningStats.from_values([1.0, 2.0, 3.0, 4.0])
    older = EnvInfo(RunningStats.from_values([1.0, 2.0]))
    first = Norm("a", degraded=True, shared_info=EnvInfo(shared), owed=RunningStats.from_values([10.0]))
    second = Norm("a", shared_info=older, owed=RunningStats.from_values([20.0, 30.0]))
    unserved_locally = Norm("r", on_unavailable="raise", shared_info=EnvInfo(shared))
    empty = Norm("e")
    for norm in (first, second, unserved_locally, empty):
        core.served.add(norm)
    request, metrics = fails_at_once(core._metrics_op(None))
    assert request == Once(ScanKeys("ns:{*}"))
    # The newest shared view (count 4) with every sample owed by either normalizer merged in.
    expected = shared.merge(RunningStats.from_values([10.0, 20.0, 30.0]))
    assert metrics == {"reward_norm/a/count": 7.0, "reward_norm/a/mean": pytest.approx(expected.mean),
                       "reward_norm/a/std": pytest.approx(expected.std), "reward_norm/a/min": 1.0,
                       "reward_norm/a/max": 30.0, "reward_norm/a/degraded": 1.0}
    # Named envs: those a local normalizer serves, empty ones included; the others are left out.
    _, named = fails_at_once(core._metrics_op(["e", "r", "nobody"]))
    assert named == {"reward_norm/e/count": 0.0, "reward_norm/e/mean": 0.0, "reward_norm/e/std": 0.0,
                     "reward_norm/e/min": 0.0, "reward_norm/e/max": 0.0, "reward_norm/e/degraded": 1.0}


def test_a_frozen_env_does_not_count_the_owed_samples_in_its_local_view(core: StoreCore) -> None:
    shared = RunningStats.from_values([1.0, 2.0])
    norm = Norm("a", shared_info=EnvInfo(shared, frozen=True), owed=RunningStats.from_values([9.0]))
    core.served.add(norm)  # (held here: the store holds it weakly)
    _, metrics = fails_at_once(core._metrics_op(["a"]))
    assert metrics["reward_norm/a/count"] == 2.0 and metrics["reward_norm/a/max"] == 2.0


def test_without_a_local_normalizer_an_unreachable_store_raises(core: StoreCore) -> None:
    norm = Norm("a", on_unavailable="raise", shared_info=EnvInfo(RunningStats.from_values([1.0])))
    core.served.add(norm)
    request, error = fails_at_once(core._metrics_op(None))
    assert request == ScanKeys("ns:{*}")
    assert isinstance(error, StoreUnavailableError) and error.store == "127.0.0.1:1"
    assert isinstance(fails_at_once(StoreCore("ns")._metrics_op(["a"]))[1], StoreUnavailableError)  # none at all


def test_a_normalizer_registers_with_its_store_and_is_held_weakly(core: StoreCore) -> None:
    norm = NormalizerCore("a", core, "zscore", None, 0, 1e-8, on_unavailable="local")
    assert core.served.by_env() == {"a": [norm]}
    assert norm.shared_info == EnvInfo() and norm.shared_info is norm.info  # nothing owed: the same view
    del norm
    gc.collect()
    assert core.served.by_env() == {}
    requests, metrics = drive(core._metrics_op(["a"]), [[{}]])
    assert requests == [ReadMany(("ns:{a}",))] and "reward_norm/a/degraded" not in metrics
