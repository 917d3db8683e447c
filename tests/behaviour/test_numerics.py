"""Merged through Redis, the statistics stay as accurate as a two-pass fsum over everything,
and more accurate than per-element Welford (what the reference does) at large offsets."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from shared_rewardnorm import StatsStore
from tests.support.reference_oracle import OracleNormalizer

BATCHES, BATCH_SIZE = 1200, 16


def two_pass(values: list[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values)
    return mean, math.fsum((v - mean) ** 2 for v in values) / len(values)


def relative_error(value: float, exact: float) -> float:
    return abs(value - exact) / abs(exact)


@pytest.mark.parametrize("offset, variance_bound", [(1e6, 1e-10), (1e9, 1e-8)])
def test_merged_stats_match_two_pass(backend: Any, namespace: str, offset: float, variance_bound: float) -> None:
    rng = random.Random(int(math.log10(offset)))
    store = StatsStore(backend, namespace)
    welford = OracleNormalizer(mode="zscore", warmup=0)
    everything: list[float] = []
    for _ in range(BATCHES):
        batch = [rng.gauss(offset, 1.0) for _ in range(BATCH_SIZE)]
        everything.extend(batch)
        store.update("env", batch)
        welford.normalize(batch)
    stats = store.get("env")
    mean, variance = two_pass(everything)
    assert stats.count == len(everything) == BATCHES * BATCH_SIZE
    assert relative_error(stats.mean, mean) <= 1e-12
    assert relative_error(stats.variance, variance) <= variance_bound
    ours = relative_error(stats.variance, variance)
    reference = relative_error(welford.sq / welford.n, variance)
    if offset >= 1e9:
        # The reference's per-element Welford drifts at this offset; the batched merge does not.
        assert ours < reference, f"ours {ours:.3g} vs per-element Welford {reference:.3g}"
