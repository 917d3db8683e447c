"""RunningStats: validation, summaries, Chan merges, and the reference's checkpoint dicts."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared_rewardnorm import InvalidStatsError, RunningStats
from shared_rewardnorm._core.inputs import NUMPY_MIN_BATCH


def two_pass(values: list[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values)
    return mean, math.fsum((v - mean) ** 2 for v in values)


def test_empty_stats_are_all_zero() -> None:
    empty = RunningStats()
    assert (empty.count, empty.mean, empty.m2, empty.min, empty.max) == (0, 0.0, 0.0, 0.0, 0.0)
    assert empty.variance == 0.0 and empty.std == 0.0 and empty.is_empty


@pytest.mark.parametrize("size", [1, 2, 7, NUMPY_MIN_BATCH - 1, NUMPY_MIN_BATCH, 1000])
def test_from_values_matches_two_pass(size: int) -> None:
    rng = random.Random(size)
    values = [rng.gauss(3.0, 2.0) for _ in range(size)]
    stats = RunningStats.from_values(values)
    mean, m2 = two_pass(values)
    assert stats.count == size
    assert math.isclose(stats.mean, mean, rel_tol=1e-15)
    assert math.isclose(stats.m2, m2, rel_tol=1e-13, abs_tol=1e-300)
    assert (stats.min, stats.max) == (min(values), max(values))
    assert math.isclose(stats.variance, m2 / size if size > 1 else 0.0, rel_tol=1e-13)


def test_from_values_accepts_numpy_and_matches_lists() -> None:
    values = np.random.default_rng(0).normal(5, 1, 30)
    from_array, from_list = RunningStats.from_values(values), RunningStats.from_values(values.tolist())
    assert from_array.count == from_list.count == 30
    assert math.isclose(from_array.mean, from_list.mean, rel_tol=1e-15)
    assert math.isclose(from_array.m2, from_list.m2, rel_tol=1e-13)
    assert (from_array.min, from_array.max) == (from_list.min, from_list.max)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60), st.integers(0, 60))
def test_merge_of_split_equals_whole(values: list[float], cut: int) -> None:
    cut = min(cut, len(values))
    whole = RunningStats.from_values(values)
    merged = RunningStats.from_values(values[:cut]).merge(RunningStats.from_values(values[cut:]))
    assert merged.count == whole.count and (merged.min, merged.max) == (whole.min, whole.max)
    assert math.isclose(merged.mean, whole.mean, rel_tol=1e-12, abs_tol=1e-9)
    assert math.isclose(merged.m2, whole.m2, rel_tol=1e-9, abs_tol=1e-6)


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"count": -1}, "count"),
        ({"count": 2**53}, "count"),
        ({"count": 1.5}, "count"),
        ({"count": True}, "count"),
        ({"count": 2, "mean": math.nan}, "mean"),
        ({"count": 2, "m2": math.inf}, "m2"),
        ({"count": 2, "m2": -1.0}, "m2"),
        ({"count": 2, "min": 2.0, "max": 1.0}, "min"),
        ({"count": 2, "mean": "1"}, "mean"),
        ({"count": 0, "mean": 1.0}, "empty"),
    ],
)
def test_invalid_fields_are_refused(fields: dict, fragment: str) -> None:
    with pytest.raises(InvalidStatsError, match=fragment):
        RunningStats(**fields)


def test_to_dict_uses_reference_keys_and_empty_sentinels() -> None:
    stats = RunningStats.from_values([1.0, 2.0, 4.0])
    assert stats.to_dict() == {"count": 3, "mean": stats.mean, "m2": stats.m2, "min": 1.0, "max": 4.0}
    assert RunningStats.from_dict(stats.to_dict()) == stats
    empty = RunningStats().to_dict()
    assert empty["count"] == 0 and empty["min"] == math.inf and empty["max"] == -math.inf
    assert RunningStats.from_dict(empty) == RunningStats()


def test_from_dict_validates() -> None:
    with pytest.raises(InvalidStatsError, match="missing m2"):
        RunningStats.from_dict({"count": 1, "mean": 0.0, "min": 0.0, "max": 0.0})
    with pytest.raises(InvalidStatsError, match="m2"):
        RunningStats.from_dict({"count": 3, "mean": 0.0, "m2": -2.0, "min": 0.0, "max": 0.0})
    with pytest.raises(TypeError):
        RunningStats.from_dict([1, 2, 3])  # type: ignore[arg-type]
    assert RunningStats.from_dict({"count": 2.0, "mean": 1.0, "m2": 0.0, "min": 1.0, "max": 1.0}).count == 2


def test_immutable() -> None:
    stats = RunningStats.from_values([1.0])
    with pytest.raises(AttributeError):
        stats.count = 5  # type: ignore[misc]


def test_huge_values_give_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too large"):
        RunningStats.from_values([1e300, -1e300])
