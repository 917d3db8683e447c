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
from .schema import STAT_FIELDS
from .stats import MAX_COUNT, RunningStats

__all__ = [
    "STAT_FIELDS",
    "as_text",
    "encode_stats",
    "encode_sequence",
    "decode_reply",
    "decode_stored",
    "batch_record_key",
]

def encode_stats(stats: RunningStats) -> str:
    """The stats argument of a script, ``"count mean m2 min max"``: fixed-width text, so every
    merge sends the same bytes whatever the batch size, with 17 significant digits, so every
    double round-trips exactly."""
    return "%016d %+.16e %+.16e %+.16e %+.16e" % (stats.count, stats.mean, stats.m2, stats.min, stats.max)


def encode_sequence(sequence: int) -> str:
    """A batch sequence number, fixed-width like the stats (16 digits hold any count < 2^53)."""
    return "%016d" % sequence


def batch_record_key(stats_key: str, client_id: str) -> str:
    """The key recording which batches of one client were merged into one env: it extends the
    env's stats key, so it shares the env's hash tag (and cluster slot)."""
    return f"{stats_key}:batches:{client_id}"


def decode_reply(reply: Any) -> tuple[RunningStats, bool]:
    """Parse a script's reply, ``"count mean m2 min max [merged]"`` (``bytes`` or ``str``):
    the statistics (validated by the script itself; a count of 0 means empty) and whether this
    call merged its batch (``False``: it had been merged before)."""
    words = reply.split()
    merged = len(words) < 6 or words[5] in (b"1", "1")
    count = int(words[0])
    if count == 0:
        return RunningStats(), merged
    return RunningStats.trusted(count, float(words[1]), float(words[2]), float(words[3]), float(words[4])), merged


def as_text(value: Any) -> str:
    """A reply element as text (clients may or may not decode responses)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_stored(key: str, values: Sequence[Any]) -> RunningStats:
    """Parse an ``HMGET key count mean m2 min max`` reply, refusing malformed fields.

    All fields absent means the env has no statistics yet. Anything else must be a complete,
    valid summary; otherwise ``CorruptStatsError`` names the key and the first bad field, so a
    hand-edited hash is never silently read as something else.
    """
    if all(value is None for value in values):
        return RunningStats()
    texts = [None if value is None else as_text(value) for value in values]
    parsed: list[Any] = []
    for field, text in zip(STAT_FIELDS, texts, strict=True):
        if text is None:
            raise CorruptStatsError(f"corrupt stats hash {key}: {field} is missing", key=key, field=field)
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


def _parse_field(field: str, text: str) -> int | float | None:
    """The number in one stored field, with the same rules as the scripts' parsers."""
    if not text or any(char not in "0123456789eE.+-" for char in text):
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if field == "count":  # like the scripts: any decimal text of an integer value ("5", "5.0")
        return int(number) if number.is_integer() and 1 <= number <= MAX_COUNT else None
    return number
