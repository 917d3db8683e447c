"""The batch ledger, sans I/O: identities, the memory of named batches, and its policy (a
lifetime on an injected clock, the script's window, a fork), with no server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared_rewardnorm._core import ledger as ledger_module
from shared_rewardnorm._core.inputs import validate_batch_id
from shared_rewardnorm._core.ledger import RECORD_WINDOW, BatchLedger
from shared_rewardnorm._core.protocol import encode_stats
from shared_rewardnorm._core.requests import MergeBatch
from shared_rewardnorm._core.store_ops import MAX_BATCH_RECORD_TTL
from shared_rewardnorm.stats import RunningStats

LUA = Path(__file__).resolve().parents[2] / "lua" / "stats_lib.lua"
KEY = "ns:{env}"


def batch(values: list[float], batch_id: str | None = None, key: str = KEY) -> MergeBatch:
    stats = RunningStats.from_values(values)
    return MergeBatch(key, stats, encode_stats(stats), batch_id)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sequence_of(request: object) -> int:
    return int(request.args[1])  # type: ignore[attr-defined]


def test_every_batch_gets_the_envs_next_sequence_number_and_this_clients_record() -> None:
    ledger = BatchLedger(60)
    first, second = ledger.request_for(batch([1.0])), ledger.request_for(batch([1.0]))
    other_env = ledger.request_for(batch([1.0], key="ns:{other}"))
    assert [sequence_of(r) for r in (first, second, other_env)] == [1, 2, 1]
    assert first.keys == (KEY, f"{KEY}:batches:{ledger.client_id}")
    assert first.args[0] == encode_stats(RunningStats.from_values([1.0])) and first.args[2] == "60"
    assert first.wait is None


def test_wait_arguments_travel_with_every_merge() -> None:
    assert BatchLedger(60, ("1", "250")).request_for(batch([1.0])).wait == ("1", "250")


def test_an_unnamed_batch_is_new_every_time_whatever_its_values() -> None:
    ledger = BatchLedger(60)
    same = [ledger.request_for(batch([0.0, 1.0])) for _ in range(3)]
    assert len({sequence_of(r) for r in same}) == 3
    assert ledger.recall(batch([0.0, 1.0])) is None and ledger.remembered(KEY) == 0


def test_a_name_sent_again_gets_its_request_and_other_values_are_refused() -> None:
    ledger = BatchLedger(60)
    first = ledger.request_for(batch([1.0, 2.0], "g1"))
    ledger.request_for(batch([5.0]))  # another batch in between
    assert ledger.request_for(batch([1.0, 2.0], "g1")) is first
    with pytest.raises(ValueError, match=r"batch_id 'g1' was already used in ns:\{env\} for a different batch "
                                         r"\(2 values, mean 1.5.*; now 1 values, mean 3"):
        ledger.request_for(batch([3.0], "g1"))
    assert ledger.request_for(batch([1.0, 2.0], "g1", key="ns:{other}")) is not first  # names are per env


def test_a_name_is_an_int_or_a_non_empty_string_and_7_names_the_same_batch_as_seven() -> None:
    assert validate_batch_id(7) == validate_batch_id("7") == "7"
    assert validate_batch_id(None) is None
    with pytest.raises(TypeError, match="batch_id must be a str, an int or None, got bool"):
        validate_batch_id(True)
    with pytest.raises(TypeError, match="got float"):
        validate_batch_id(1.5)
    with pytest.raises(ValueError, match="batch_id must not be empty"):
        validate_batch_id("")
    with pytest.raises(ValueError, match="batch_id is 257 characters long; the limit is 256"):
        validate_batch_id("x" * 257)


def test_a_name_is_forgotten_after_the_record_lifetime() -> None:
    clock = Clock()
    ledger = BatchLedger(60, clock=clock)
    first = ledger.request_for(batch([1.0], "g"))
    clock.now += 59.5
    assert ledger.request_for(batch([1.0], "g")) is first
    clock.now += 1.0
    assert ledger.remembered(KEY) == 0
    assert ledger.request_for(batch([1.0], "g")) is not first  # a new batch now


def test_a_name_is_forgotten_once_its_number_leaves_the_scripts_window() -> None:
    """Past the window the script could only refuse the old number (REWARDNORM_STALE), so the
    ledger forgets the name first: at most RECORD_WINDOW names per env."""
    ledger = BatchLedger(60)
    first = ledger.request_for(batch([1.0], "old"))
    for _ in range(RECORD_WINDOW - 1):
        ledger.request_for(batch([2.0]))
    assert ledger.recall(batch([1.0], "old")) is first  # number 1, latest 1024: still judged
    ledger.request_for(batch([2.0]))
    assert ledger.recall(batch([1.0], "old")) is None
    for number in range(RECORD_WINDOW + 10):
        ledger.request_for(batch([3.0], f"n{number}"))
    assert ledger.remembered(KEY) == RECORD_WINDOW


def test_a_group_remembers_each_members_name_with_the_groups_request() -> None:
    ledger = BatchLedger(60)
    members = [batch([1.0], "a"), batch([2.0]), batch([3.0], "c")]
    combined = RunningStats.combine(member.stats for member in members)
    group = ledger.request_for_group(KEY, members, encode_stats(combined))
    assert group.args[0] == encode_stats(combined)
    assert ledger.recall(batch([1.0], "a")) is group and ledger.recall(batch([3.0], "c")) is group
    assert ledger.remembered(KEY) == 2
    with pytest.raises(ValueError, match="batch_id 'a' was already used"):
        ledger.recall(batch([1.0, 2.0], "a"))  # checked against the member's own values


def test_a_forked_child_gets_a_new_identity_and_forgets_the_parents_names(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = BatchLedger(60)
    parent_id = ledger.client_id
    ledger.request_for(batch([1.0], "g"))
    monkeypatch.setattr(ledger_module.os, "getpid", lambda: -1)
    assert ledger.recall(batch([1.0], "g")) is None
    child = ledger.request_for(batch([1.0], "g"))
    assert ledger.client_id != parent_id and sequence_of(child) == 1


def test_the_window_and_the_longest_lifetime_are_the_scripts() -> None:
    text = LUA.read_text(encoding="utf-8")
    assert int(re.search(r"^local WINDOW = (\d+)$", text, re.M).group(1)) == RECORD_WINDOW  # type: ignore[union-attr]
    assert int(re.search(r"^local MAX_RECORD_TTL = (\d+)$", text, re.M).group(1)) == MAX_BATCH_RECORD_TTL  # type: ignore[union-attr]
