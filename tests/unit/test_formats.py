"""The formats besides the hash, without a server: JSON snapshots, the reference's checkpoint
dicts and the metric names, each written and parsed by ``shared_rewardnorm._core.formats``."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from shared_rewardnorm import DecayedStats, EnvInfo, RunningStats
from shared_rewardnorm._core.formats import (
    checkpoint_from,
    metrics_from_info,
    parse_checkpoint,
    parse_snapshot,
    snapshot_of,
)
from shared_rewardnorm._core.normalization import NormalizerSettings

CONFIGURED = EnvInfo(RunningStats(4, 3.0, 14.0, 1.0, 6.0), DecayedStats(3.5, 3.25, 9.5), 8.0, True, 2, 1700000000000)
FROZEN_ONLY = EnvInfo(frozen=True)


def test_a_snapshot_is_strict_json_and_parses_back_to_the_same_envs() -> None:
    snapshot = snapshot_of("ns", {"b": FROZEN_ONLY, "a": CONFIGURED})
    assert (snapshot["format"], snapshot["version"], snapshot["namespace"]) == ("shared_rewardnorm.snapshot", 2, "ns")
    assert list(snapshot["envs"]) == ["a", "b"]
    text = json.dumps(snapshot, allow_nan=False)  # an env without statistics writes no infinities
    assert parse_snapshot(json.loads(text)) == {"a": CONFIGURED, "b": FROZEN_ONLY}


def test_a_version_1_snapshot_holds_totals_only() -> None:
    snapshot = {"format": "shared_rewardnorm.snapshot", "version": 1,
                "envs": {"e": RunningStats(2, 1.5, 0.5, 1.0, 2.0).to_dict()}}
    assert parse_snapshot(snapshot) == {"e": RunningStats(2, 1.5, 0.5, 1.0, 2.0)}


GOOD = {"format": "shared_rewardnorm.snapshot", "version": 2, "envs": {}}


@pytest.mark.parametrize(("snapshot", "error", "match"), [
    ([GOOD], TypeError, "snapshot must be a JSON object, got list"),
    ({**GOOD, "format": "x"}, ValueError, "not a shared_rewardnorm snapshot: format is 'x'"),
    ({**GOOD, "version": True}, ValueError, "unsupported snapshot version True"),
    ({**GOOD, "version": 3}, ValueError, "unsupported snapshot version 3; this library reads versions 1, 2"),
    ({**GOOD, "envs": []}, ValueError, "snapshot has no 'envs' object"),
    ({**GOOD, "envs": {"a}": CONFIGURED.to_dict()}}, ValueError, "braces"),
    ({**GOOD, "envs": {"e": {**CONFIGURED.to_dict(), "frozen": 1}}}, ValueError,
     "snapshot env 'e': frozen must be true or false, got 1"),
    ({**GOOD, "envs": {"e": {**CONFIGURED.to_dict(), "decayed": None}}}, ValueError,
     "snapshot env 'e': decayed and half_life must both be set or both be null"),
])
def test_a_bad_snapshot_names_the_first_problem(snapshot: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_snapshot(snapshot)


def test_metrics_use_the_references_keys_and_add_recent_ones_with_a_half_life() -> None:
    assert metrics_from_info(EnvInfo(RunningStats(2, 1.5, 0.5, 1.0, 2.0))) == {
        "reward_norm/count": 2.0, "reward_norm/mean": 1.5, "reward_norm/std": 0.5, "reward_norm/min": 1.0,
        "reward_norm/max": 2.0}
    metrics = metrics_from_info(CONFIGURED, prefix="reward_norm/gsm8k")
    assert metrics["reward_norm/gsm8k/recent_mean"] == 3.25
    assert metrics["reward_norm/gsm8k/recent_std"] == math.sqrt(9.5 / 3.5)
    assert len(metrics) == 7


def test_a_checkpoint_round_trips_and_is_the_references_format() -> None:
    settings = NormalizerSettings.create("minmax", 2.0, 3, 1e-6)
    stats = RunningStats(2, 1.5, 0.5, 1.0, 2.0)
    checkpoint = checkpoint_from(settings, stats)
    assert checkpoint == {"mode": "minmax", "clip": 2.0, "warmup": 3, "eps": 1e-6, "accumulator": stats.to_dict()}
    assert parse_checkpoint(checkpoint) == (settings, stats)


@pytest.mark.parametrize(("state", "error", "match"), [
    ("zscore", TypeError, "state must be a mapping, got str"),
    ({"mode": "zscore", "clip": 5.0}, ValueError, "normalizer state is missing warmup, eps, accumulator"),
])
def test_a_bad_checkpoint_is_refused(state: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_checkpoint(state)
