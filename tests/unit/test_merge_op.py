"""The merge operation against canned replies, with no server: what it yields and how it reads
the script's reply (the shells' resolution through the ledger: tests/behaviour/test_batch_ids.py)."""

from __future__ import annotations

from typing import Any

import pytest

from shared_rewardnorm import NotReplicatedError, RunningStats
from shared_rewardnorm._core.protocol import encode_stats
from shared_rewardnorm._core.requests import MergeBatch, ReadStats, RunScript
from shared_rewardnorm._core.store_ops import StoreCore


def reply_for(stats: RunningStats, outcome: int) -> str:
    """A merge reply: the env's record in ENV_FIELDS order, then the outcome word."""
    return (f"{stats.count} {stats.mean!r} {stats.m2!r} {stats.min!r} {stats.max!r} 0 0 0 0 0 1 1700000000000 "
            f"1700000000000000 merge {outcome}")


def finish(operation: Any, reply: Any) -> Any:
    with pytest.raises(StopIteration) as done:
        operation.send(reply)
    return done.value.value


def test_update_yields_one_merge_batch_with_its_summary_and_name() -> None:
    core = StoreCore("ns")
    operation = core._update_op("env", [1.0, 3.0], 42)
    request = next(operation)
    stats = RunningStats.from_values([1.0, 3.0])
    assert request == MergeBatch("ns:{env}", stats, encode_stats(stats), "42")
    assert finish(operation, reply_for(stats, 1)) == stats
    assert core.duplicates == 0


def test_a_duplicate_reply_is_counted_and_returns_the_current_statistics() -> None:
    core = StoreCore("ns")
    operation = core._update_op("env", [1.0])
    next(operation)
    current = RunningStats.from_values([1.0, 5.0, 9.0])
    assert finish(operation, reply_for(current, 0)) == current
    assert core.duplicates == 1


def test_an_empty_batch_only_reads_and_a_bad_name_is_refused_before_anything_is_yielded() -> None:
    core = StoreCore("ns")
    assert next(core._update_op("env", [])) == ReadStats("ns:{env}")
    with pytest.raises(TypeError, match="batch_id must be a str, an int or None"):
        next(core._update_op("env", [1.0], 1.5))


def test_with_replicas_a_short_wait_raises_after_reading_the_merge() -> None:
    core = StoreCore("ns", replicas=1, replica_timeout=0.25)
    operation = core._update_op("env", [2.0])
    batch = next(operation)
    request = core.merge_request(batch)
    assert isinstance(request, RunScript) and request.wait == ("1", "250")
    with pytest.raises(NotReplicatedError, match=r"only 0 of the 1 required replicas"):
        operation.send([reply_for(RunningStats.from_values([2.0]), 1), 0])
