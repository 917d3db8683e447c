"""What crosses the wire: script arguments out, replies and stored hashes in.

Pure functions with no I/O, shared by the sync and asyncio stores, so the encoding is written
once. Replies are parsed the same whether redis-py speaks RESP2 or RESP3 and whether the client
decodes responses (``bytes`` or ``str`` elements both parse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import CorruptStatsError
from .stats import MAX_COUNT, RunningStats

__all__ = ["STAT_FIELDS", "encode_stats", "decode_reply", "reply_was_merged", "decode_stored", "batch_record_key"]

#: Fields of a stats hash, in the order scripts take and return them. ``std`` is also stored,
#: for people reading the hash with ``redis-cli``, but never read back.
STAT_FIELDS = ("count", "mean", "m2", "min", "max")


def encode_stats(stats: RunningStats) -> tuple[str, str, str, str, str]:
    """Script arguments for ``stats``: fixed-width text, so every merge sends the same bytes
    whatever the batch size, and 17 significant digits, so every double round-trips exactly."""
    return (
        f"{stats.count:016d}",
        f"{stats.mean:+.16e}",
        f"{stats.m2:+.16e}",
        f"{stats.min:+.16e}",
        f"{stats.max:+.16e}",
    )


def batch_record_key(stats_key: str, client_id: str) -> str:
    """The key recording which batches of one client were merged into one env: it extends the
    env's stats key, so it shares the env's hash tag (and cluster slot)."""
    return f"{stats_key}:batches:{client_id}"


def decode_reply(reply: Sequence[Any]) -> RunningStats:
    """Parse the stats strings a script returns (validated by the script itself). Replies are
    count, mean, m2, min, max, possibly followed by more fields; no reply or a count of 0 means
    empty statistics."""
    if not reply:
        return RunningStats()
    count = int(reply[0])
    if count == 0:
        return RunningStats()
    return RunningStats(count, float(reply[1]), float(reply[2]), float(reply[3]), float(reply[4]))


def reply_was_merged(reply: Sequence[Any]) -> bool:
    """Whether a merge reply says this call merged the batch (``False``: merged before)."""
    return len(reply) < 6 or reply[5] in (b"1", "1", 1)


def _as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_stored(key: str, values: Sequence[Any]) -> RunningStats:
    """Parse an ``HMGET key count mean m2 min max`` reply, refusing malformed fields.

    All fields absent means the env has no statistics yet. Anything else must be a complete,
    valid summary; otherwise ``CorruptStatsError`` names the key and the first bad field, so a
    hand-edited hash is never silently read as something else.
    """
    if all(value is None for value in values):
        return RunningStats()
    texts = [None if value is None else _as_text(value) for value in values]
    parsed: list[Any] = []
    for field, text in zip(STAT_FIELDS, texts):
        number = _parse_field(field, text)
        if number is None:
            raise CorruptStatsError(f"corrupt stats hash {key}: {field} is {text!r}", key=key, field=field)
        parsed.append(number)
    count, mean, m2, low, high = parsed
    if m2 < 0:
        raise CorruptStatsError(f"corrupt stats hash {key}: m2 is {texts[2]!r} (negative)", key=key, field="m2")
    if low > high:
        raise CorruptStatsError(f"corrupt stats hash {key}: min {texts[3]!r} is greater than max {texts[4]!r}",
                                key=key, field="min")
    return RunningStats(count, mean, m2, low, high)


def _parse_field(field: str, text: str | None) -> int | float | None:
    """The number in one stored field, with the same rules as the scripts' parsers."""
    if text is None:
        return None
    if field == "count":
        if not text.isascii() or not text.isdigit():
            return None
        count = int(text)
        return count if 1 <= count <= MAX_COUNT else None
    if not text or any(char not in "0123456789eE.+-" for char in text):
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
