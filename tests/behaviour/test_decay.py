"""Decayed statistics, the half-life, read-only normalize, staleness and the new stored fields,
on the embedded store and a real Redis (cluster: tests/deployment/test_cluster.py)."""

from __future__ import annotations

import math
import random
import re
from typing import Any

import pytest
import redis

from shared_rewardnorm import (
    AsyncSharedRewardNormalizer,
    AsyncStatsStore,
    CorruptStatsError,
    DecayedStats,
    RunningStats,
    SharedRewardNormalizer,
    StatsStore,
)
from shared_rewardnorm._redis.scripts import script_source
from tests.support.decay_oracle import assert_decayed, decayed_by_definition


def mixed_batches(seed: int, count: int, offset: float) -> list[list[float]]:
    """Batches of 1 to 64 samples (now and then 500), around ``offset``, with a drifting mean
    (a policy that learns) and a changing spread."""
    rng = random.Random(seed)
    batches = []
    for i in range(count):
        size = 500 if rng.random() < 0.01 else rng.randint(1, 64)
        center = offset + 3.0 * math.sin(i / 150.0)
        spread = 0.5 + (i % 97) / 50.0
        batches.append([rng.gauss(center, spread) for _ in range(size)])
    return batches


@pytest.mark.parametrize("half_life, offset", [(50.0, 1e6), (3000.0, 1e6), (3000.0, 0.0), (1e9, 1e6)])
def test_decayed_statistics_follow_the_definition(backend: Any, namespace: str, half_life: float,
                                                  offset: float) -> None:
    """Thousands of batches of mixed sizes: the script's incremental weighted Chan update equals
    the per-sample definition (fsum) within 1e-9 relative, checked along the way and at the end;
    the totals stay exact alongside."""
    store = StatsStore(backend, namespace)
    assert store.configure("env", half_life=half_life) is True
    batches = mixed_batches(int(half_life) + int(offset), 2000, offset)
    for i, batch in enumerate(batches, 1):
        store.update("env", batch)
        if i % 500 == 0:
            assert_decayed(store.info("env").decayed, batches[:i], half_life)
    info = store.info("env")
    assert info.half_life == half_life and info.merges == len(batches)
    everything = [v for batch in batches for v in batch]
    assert info.stats.count == len(everything)
    assert math.isclose(info.stats.mean, math.fsum(everything) / len(everything), rel_tol=1e-12)


def test_the_definition_by_hand() -> None:
    """The oracle itself, on numbers small enough to check on paper: H = 2 samples, batches
    [1, 3] then [5]: weights 2^(-1/2) for the first two and 1 for the last."""
    w = 2 ** -0.5
    weight, mean, m2 = decayed_by_definition([[1.0, 3.0], [5.0]], 2.0)
    assert math.isclose(weight, 2 * w + 1)
    assert math.isclose(mean, (w * 1 + w * 3 + 5) / (2 * w + 1))
    assert math.isclose(m2, w * (1 - mean) ** 2 + w * (3 - mean) ** 2 + (5 - mean) ** 2)


def test_configure_sets_changes_and_clears_the_half_life(backend: Any, namespace: str) -> None:
    """Setting or changing the half-life restarts the decayed statistics (weight 0), setting the
    same one keeps them, None removes them; the totals are never touched."""
    store = StatsStore(backend, namespace)
    store.update("env", [1.0, 2.0, 3.0])
    assert store.info("env").decayed is None and store.info("env").half_life is None
    assert store.configure("env", half_life=100) is True
    info = store.info("env")
    assert info.half_life == 100.0 and info.decayed == DecayedStats(0.0, 0.0, 0.0)
    assert info.stats.count == 3  # history before the half-life is not in the decayed statistics
    store.update("env", [10.0, 20.0])
    kept = store.info("env").decayed
    assert kept is not None and kept.weight == 2.0 and kept.mean == 15.0
    assert store.configure("env", half_life=100.0) is False  # the same: nothing restarts
    assert store.info("env").decayed == kept
    assert store.configure("env", half_life=250.5) is True  # changed: restart
    assert store.info("env").decayed == DecayedStats() and store.info("env").half_life == 250.5
    assert store.configure("env", half_life=None) is True
    info = store.info("env")
    assert info.decayed is None and info.half_life is None and info.stats.count == 5
    assert store.configure("env", half_life=None) is False
    # An env with nothing yet can be configured before its first batch.
    assert store.configure("fresh", half_life=10) is True
    assert store.info("fresh").stats.is_empty and store.info("fresh").half_life == 10.0
    assert store.update("fresh", [4.0]).count == 1 and store.info("fresh").decayed == DecayedStats(1.0, 4.0, 0.0)


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "10", None.__class__])
def test_configure_refuses_bad_half_lives(backend: Any, namespace: str, bad: Any) -> None:
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=10)
    with pytest.raises(ValueError, match="half_life must be a positive finite number"):
        store.configure("env", half_life=bad)
    assert store.info("env").half_life == 10.0


@pytest.mark.parametrize("argument", ["0", "-5", "nan", "inf", "abc", "", "0x10", "1e400"])
def test_configure_script_validates_its_argument(raw_client: Any, namespace: str, argument: str) -> None:
    key = f"{namespace}:{{env}}"
    raw_client.hset(key, mapping={"half_life": "10", "weight": "0", "wmean": "0", "wm2": "0"})
    before = raw_client.hgetall(key)
    with pytest.raises(redis.ResponseError, match=rf"REWARDNORM_INVALID {key} half_life must be a positive"):
        raw_client.eval(script_source("configure"), 1, key, argument)
    assert raw_client.hgetall(key) == before


@pytest.mark.parametrize("stored", ["1e4", "10000.0", "1E+4"])
def test_configure_compares_the_stored_half_life_as_a_number(backend: Any, raw_client: Any, namespace: str,
                                                             stored: str) -> None:
    """A stored half-life written otherwise (by hand) but equal to the wanted one is the same
    half-life: configure changes nothing and the decayed statistics are kept."""
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=10000)
    store.update("env", [1.0, 2.0])
    key = f"{namespace}:{{env}}"
    raw_client.hset(key, "half_life", stored)
    before = raw_client.hgetall(key)
    assert store.configure("env", half_life=10000) is False
    assert raw_client.hgetall(key) == before and store.info("env").decayed.weight == 2.0
    assert store.configure("env", half_life=10001) is True  # a different one still restarts them
    assert store.info("env").decayed == DecayedStats()


def test_recent_normalizes_with_the_decayed_statistics(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=40)
    norm = SharedRewardNormalizer("env", store, statistics="recent", warmup=5, clip=None)
    total = SharedRewardNormalizer("env", store, warmup=5, clip=None)
    batches = mixed_batches(7, 60, 0.0)
    for i, batch in enumerate(batches):
        got = norm.normalize(batch)
        weight, mean, m2 = decayed_by_definition(batches[:i + 1], 40)
        if norm.count >= 5:
            std = math.sqrt(m2 / weight)
            assert got == pytest.approx([(v - mean) / (std + 1e-8) for v in batch], rel=1e-9, abs=1e-9)
        else:  # warmup counts all samples, as with statistics="total"
            assert got == batch
    assert norm.info.decayed is not None and norm.statistics == "recent"
    # The same data normalized against all history differs: the mean drifted.
    assert total.normalize(batches[-1], update=False) != norm.normalize(batches[-1], update=False)


def test_recent_without_a_half_life_is_an_error_before_anything_is_counted(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    store.update("env", [1.0, 2.0])
    norm = SharedRewardNormalizer("env", store, statistics="recent")
    for update in (True, False):
        with pytest.raises(ValueError, match="'env' has no half-life"):
            norm.normalize([3.0], update=update)
    assert store.get("env").count == 2
    # A half-life removed while the normalizer runs: the error says the batch was counted.
    store.configure("env", half_life=10)
    norm.normalize([3.0])
    store.configure("env", half_life=None)
    with pytest.raises(ValueError, match="this batch was counted in the totals"):
        norm.normalize([4.0])
    assert store.get("env").count == 4


def test_recent_settings_are_validated() -> None:
    with pytest.raises(ValueError, match='statistics="recent" needs mode="zscore"'):
        SharedRewardNormalizer("env", None, mode="minmax", statistics="recent")
    with pytest.raises(ValueError, match="invalid statistics 'latest'"):
        SharedRewardNormalizer("env", None, statistics="latest")


def test_recent_with_no_batch_since_the_half_life_was_set_is_an_error_past_warmup(backend: Any,
                                                                                   namespace: str) -> None:
    """Weight 0 past warmup has no recent mean or std: an error saying why, never raw scores
    passed on as if normalized. Before warmup raw scores are the documented behaviour."""
    store = StatsStore(backend, namespace)
    store.update("env", [float(v) for v in range(20)])
    store.configure("env", half_life=10)
    assert SharedRewardNormalizer("env", store, statistics="recent", warmup=50, clip=3.0).normalize(
        [1.0, 100.0], update=False) == [1.0, 3.0]  # warming up: raw, clipped
    norm = SharedRewardNormalizer("env", store, statistics="recent", warmup=1, clip=3.0)
    with pytest.raises(ValueError, match=r"env 'env' has no recent statistics yet \(decayed weight 0.*update=False\) "
                                         r"adds none"):
        norm.normalize([1.0, 100.0], update=False)
    store.freeze("env")  # frozen: a merge adds no weight either, and nothing is counted
    with pytest.raises(ValueError, match=r"decayed weight 0.*it is frozen(?!.*was counted)"):
        norm.normalize([1.0, 100.0])
    store.unfreeze("env")
    norm.normalize([1.0, 100.0])  # a merged batch gives the decayed statistics weight
    for replace in (lambda: store.set("env", RunningStats.from_values([1.0, 2.0])),
                    lambda: norm.load_state_dict(norm.state_dict())):
        replace()
        with pytest.raises(ValueError, match="decayed weight 0"):
            norm.normalize([3.0], update=False)


def test_normalize_values_refuses_empty_decayed_statistics_past_warmup() -> None:
    from shared_rewardnorm._core.normalization import NormalizerSettings, normalize_values

    settings = NormalizerSettings.create(warmup=1, statistics="recent")
    stats = RunningStats.from_values([1.0, 2.0])
    with pytest.raises(ValueError, match="past warmup with decayed weight 0"):
        normalize_values([1.0], stats, settings, DecayedStats())
    assert normalize_values([1.0], stats, NormalizerSettings.create(warmup=5, statistics="recent"),
                            DecayedStats()) == [1.0]


def test_update_false_reads_without_counting(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    norm = SharedRewardNormalizer("env", store, warmup=2, clip=None)
    norm.normalize([1.0, 2.0, 3.0, 4.0])
    before = store.info("env")
    got = norm.normalize([2.5, 10.0], update=False)
    assert store.info("env") == before  # nothing counted, no merge recorded
    stats = before.stats
    assert got == pytest.approx([(2.5 - stats.mean) / (stats.std + 1e-8), (10.0 - stats.mean) / (stats.std + 1e-8)])
    with pytest.raises(TypeError, match="update must be True or False"):
        norm.normalize([1.0], update="no")  # type: ignore[arg-type]


def test_update_false_is_one_read(backend: Any, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StatsStore(backend, namespace)
    norm = SharedRewardNormalizer("env", store)
    norm.normalize([1.0, 2.0])
    sent = []
    issue = store._issue
    monkeypatch.setattr(store, "_issue", lambda request: sent.append(type(request).__name__) or issue(request))
    norm.normalize([1.0], update=False)
    assert sent == ["ReadStats"]


def test_asyncio_twins(namespace: str) -> None:
    """The asyncio classes run the same operations (embedded store)."""
    import asyncio

    async def scenario() -> None:
        store = AsyncStatsStore(None, namespace)
        assert await store.configure("env", half_life=5) is True
        norm = AsyncSharedRewardNormalizer("env", store, statistics="recent", warmup=0, clip=None)
        await norm.normalize([1.0, 3.0])
        assert (await store.info("env")).decayed == DecayedStats(2.0, 2.0, 2.0)
        assert await norm.normalize([2.0], update=False) == [0.0]
        assert await store.freeze("env") is True
        await norm.normalize([100.0])
        assert (await store.info("env")).stats.count == 2
        assert await store.unfreeze("env") is True
        await store.reset("env")
        await store.configure("env", half_life=None)

    asyncio.run(scenario())


def test_info_reports_staleness(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    assert store.info("env").updated_at is None and store.info("env").age() is None
    store.update("env", [1.0])
    store.update("env", [2.0])
    info = store.info("env")
    seconds, micros = raw_client.time()
    assert info.merges == 2
    assert 0 <= seconds * 1000 + micros // 1000 - info.updated_at < 5000  # the server's clock, in ms
    assert info.age(now=info.updated_at / 1000 + 3) == pytest.approx(3.0)
    store.set("env", store.get("env"))
    assert store.info("env").merges == 0 and store.info("env").updated_at is None


def test_metrics_add_the_decayed_statistics_where_configured(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    store.update("plain", [1.0, 2.0])
    store.configure("decayed", half_life=100)
    store.update("decayed", [1.0, 3.0])
    metrics = store.metrics()
    assert "reward_norm/plain/recent_mean" not in metrics
    assert metrics["reward_norm/decayed/recent_mean"] == 2.0 and metrics["reward_norm/decayed/recent_std"] == 1.0
    norm = SharedRewardNormalizer("decayed", store)
    assert norm.metrics_dict()["reward_norm/recent_std"] == 1.0


@pytest.mark.parametrize(
    "field, text",
    [("half_life", "-1"), ("half_life", "abc"), ("weight", "-1"), ("weight", "nan"), ("wmean", "x"),
     ("wm2", "-2"), ("frozen", "2"), ("merges", "1.5"), ("merges", "-1"), ("updated_at", "soon")],
)
def test_corrupt_new_fields_are_refused_and_kept(backend: Any, namespace: str, raw_client: Any,
                                                 field: str, text: str) -> None:
    """Every read and the merge refuse a malformed new field, naming it; nothing is written."""
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=100)
    store.update("env", [1.0, 2.0, 3.0])
    key = store.key("env")
    raw_client.hset(key, field, text)
    before = raw_client.hgetall(key)
    norm = SharedRewardNormalizer("env", store)
    for operation in (lambda: store.update("env", [1.0]), lambda: store.info("env"), lambda: store.get("env"),
                      lambda: norm.normalize([1.0]), lambda: norm.normalize([1.0], update=False),
                      lambda: store.export()):
        with pytest.raises(CorruptStatsError, match=rf"{field}") as info:
            operation()
        assert (info.value.key, info.value.field) == (key, field)
    assert raw_client.hgetall(key) == before


@pytest.mark.parametrize("field", ["weight", "wmean", "wm2"])
def test_a_missing_decayed_field_is_reported_as_missing(backend: Any, namespace: str, raw_client: Any,
                                                        field: str) -> None:
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=100)
    store.update("env", [1.0, 2.0])
    raw_client.hdel(store.key("env"), field)
    for operation in (lambda: store.update("env", [1.0]), lambda: store.info("env")):
        with pytest.raises(CorruptStatsError, match=rf"{field} is missing"):
            operation()


def test_configure_repairs_a_corrupt_half_life(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    store.update("env", [1.0, 2.0])
    raw_client.hset(store.key("env"), "half_life", "oops")
    key = re.escape(store.key("env"))
    with pytest.raises(CorruptStatsError, match=rf"corrupt stats hash {key}: half_life is 'oops'"):
        store.info("env")
    assert store.configure("env", half_life=20) is True
    assert store.info("env").half_life == 20.0 and store.update("env", [3.0]).count == 3


def test_load_state_dict_updates_info(backend: Any, namespace: str) -> None:
    """``norm.info`` is what the latest round trip returned, the load's replace included: not
    the merges and decayed statistics from before it."""
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=10)
    norm = SharedRewardNormalizer("env", store, warmup=0)
    norm.normalize([1.0, 2.0, 3.0])
    assert norm.info.merges == 1 and norm.info.decayed.weight == 3
    norm.load_state_dict({**norm.state_dict(), "accumulator": RunningStats.from_values([7.0, 9.0]).to_dict()})
    assert norm.info == store.info("env")
    assert norm.info.merges == 0 and norm.info.decayed.weight == 0 and norm.info.stats.count == 2
    assert norm.info.half_life == 10.0 and norm.stats == norm.info.stats
