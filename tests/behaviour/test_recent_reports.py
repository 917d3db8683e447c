"""``statistics="recent"`` reports the statistics it normalizes with: ``mean``/``std`` and
``metrics_dict()``'s are the decayed ones; the totals stay under their own names."""

from __future__ import annotations

from typing import Any

import pytest

from shared_rewardnorm import SharedRewardNormalizer, StatsStore


def test_recent_mean_and_std_are_the_decayed_ones(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=4)
    recent = SharedRewardNormalizer("env", store, statistics="recent", warmup=0, clip=None)
    total = SharedRewardNormalizer("env", store, warmup=0, clip=None)
    for value in (0.0, 0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 10.0):
        recent.normalize([value])
    decayed = store.info("env").decayed
    totals = store.get("env")
    assert decayed is not None and decayed.mean != pytest.approx(totals.mean)
    assert (recent.mean, recent.std) == (decayed.mean, decayed.std)
    assert (recent.total_mean, recent.total_std) == (totals.mean, totals.std)
    assert recent.count == totals.count == 8
    # the output is what the reported mean and std give
    assert recent.normalize([7.0], update=False) == pytest.approx([(7.0 - recent.mean) / (recent.std + 1e-8)])
    metrics = recent.metrics_dict()
    assert (metrics["reward_norm/mean"], metrics["reward_norm/std"]) == (decayed.mean, decayed.std)
    assert (metrics["reward_norm/total_mean"], metrics["reward_norm/total_std"]) == (totals.mean, totals.std)
    total.refresh()
    assert (total.mean, total.std) == (total.total_mean, total.total_std) == (totals.mean, totals.std)
    assert "reward_norm/total_mean" not in total.metrics_dict()
