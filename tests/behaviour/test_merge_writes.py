"""What the cheaper merge script (issue 9, item 1) must still do: refuse every text that Lua's
tonumber() reads but that is not a plain finite decimal (the byte checks replaced a pattern),
and leave a field it did not change exactly as stored (it is neither formatted again nor
written), while still rewriting what it did change."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis

from shared_rewardnorm import CorruptStatsError, StatsStore
from shared_rewardnorm._core.protocol import encode_stats
from shared_rewardnorm._redis.scripts import script_source
from shared_rewardnorm.stats import RunningStats

#: Texts tonumber() turns into a number (in Lua 5.1, or in fakeredis's Lua) that are not plain
#: decimal, or not finite: whitespace around, hex integers and hex floats, a NUL and what
#: follows it, infinities and NaN.
NOT_PLAIN = ["1 ", " 1", "\t1", "1\n", "0x10", "-0x1p4", "+0X10", "0x1P-2", "1\x00x", "1\x0025", "infinity", "-inf",
             "nan", "1e400"]


@pytest.mark.parametrize("text", NOT_PLAIN)
@pytest.mark.parametrize("field", ["mean", "max", "merges"])
def test_stored_texts_that_are_not_plain_decimal_are_corrupt(backend: Any, namespace: str, raw_client: Any,
                                                               field: str, text: str) -> None:
    store = StatsStore(backend, namespace)
    store.update("env", [1.0, 2.0, 3.0])
    key = store.key("env")
    raw_client.hset(key, field, text)
    before = raw_client.hgetall(key)
    with pytest.raises(CorruptStatsError, match=rf"{re.escape(key)}.*\b{field}\b") as info:
        store.update("env", [2.0])
    assert info.value.field == field
    assert raw_client.hgetall(key) == before


@pytest.mark.parametrize("text", [t for t in NOT_PLAIN if not any(c.isspace() for c in t)])
@pytest.mark.parametrize("index, field", [(1, "mean"), (4, "max")])
def test_argument_words_that_are_not_plain_decimal_are_invalid(raw_client: Any, namespace: str, text: str,
                                                                 index: int, field: str) -> None:
    """Through the script itself, as another language's client would call it (spaces would
    change the number of words: test_store.py covers those)."""
    key = f"{namespace}:{{env}}"
    words = encode_stats(RunningStats(2, 1.0, 0.5, 0.5, 1.5)).split(" ")
    words[index] = text
    with pytest.raises(redis.ResponseError, match=rf"^REWARDNORM_INVALID {re.escape(key)} {field} must be a finite"):
        raw_client.eval(script_source("merge"), 1, key, " ".join(words))
    assert raw_client.exists(key) == 0


def test_a_merge_leaves_unchanged_fields_as_stored(backend: Any, namespace: str, raw_client: Any) -> None:
    """Valid texts in another spelling ("1.0", "3e0", "1e2") stay byte for byte while their
    value does not change, and the statistics returned are right; a field whose value changes
    is rewritten with %.17g."""
    store = StatsStore(backend, namespace)
    store.configure("env", half_life=100)
    store.update("env", [1.0, 2.0, 3.0])
    key = store.key("env")
    raw_client.hset(key, mapping={"min": "1.0", "max": "3e0", "half_life": "1e2"})

    merged = store.update("env", [2.0, 2.5])
    stored = raw_client.hgetall(key)
    assert (stored[b"min"], stored[b"max"], stored[b"half_life"]) == (b"1.0", b"3e0", b"1e2")
    assert (merged.count, merged.min, merged.max) == (5, 1.0, 3.0)
    assert stored[b"count"] == b"5" and float(stored[b"mean"]) == merged.mean == 2.1
    assert store.info("env").half_life == 100.0

    merged = store.update("env", [-0.1, 4.0])
    stored = raw_client.hgetall(key)
    assert (stored[b"min"], stored[b"max"]) == (b"-0.10000000000000001", b"4")
    assert (merged.min, merged.max) == (-0.1, 4.0)
    assert stored[b"half_life"] == b"1e2" and stored[b"merges"] == b"3"


def test_a_duplicate_reply_reuses_the_stored_texts(raw_client: Any, namespace: str) -> None:
    """A retried batch changes nothing and answers with the env as stored, unchanged texts
    included (they parse to the same doubles as a fresh %.17g would)."""
    key = f"{namespace}:{{env}}"
    record = f"{key}:batches:client"
    args = ("4 0.5 3 -1 1", "1", "60")
    raw_client.eval(script_source("merge"), 2, key, record, *args)
    raw_client.hset(key, "max", "1.000")
    before = raw_client.hgetall(key)
    again = raw_client.eval(script_source("merge"), 2, key, record, *args).split()
    assert again[-1] == b"0" and again[4] == b"1.000"
    assert raw_client.hgetall(key) == before
