"""What crosses the wire: script arguments out, replies and stored hashes in.

Pure functions with no I/O, shared by the sync and asyncio stores, so the encoding is written
once. Replies are parsed the same whether redis-py speaks RESP2 or RESP3 and whether the client
decodes responses (``bytes`` or ``str`` elements both parse).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shared_rewardnorm._core.schema import (
    ACTIVITY_FIELDS,
    CONFIG_FIELDS,
    DECAY_FIELDS,
    ENV_FIELDS,
    STAT_FIELDS,
    STATE_FIELDS,
)
from shared_rewardnorm.envinfo import DecayedStats, EnvInfo
from shared_rewardnorm.errors import CorruptStatsError
from shared_rewardnorm.stats import MAX_COUNT, RunningStats

__all__ = [
    "DUPLICATE",
    "FROZEN",
    "MERGED",
    "STAT_FIELDS",
    "as_text",
    "decode_reply",
    "decode_stored",
    "encode_sequence",
    "encode_state",
    "encode_stats",
]

def encode_stats(stats: RunningStats) -> str:
    """The stats argument of a script, ``"count mean m2 min max"``: fixed-width text, so every
    merge sends the same bytes whatever the batch size, with 17 significant digits, so every
    double round-trips exactly."""
    return "%016d %+.16e %+.16e %+.16e %+.16e" % (stats.count, stats.mean, stats.m2, stats.min, stats.max)


def encode_state(info: EnvInfo) -> str:
    """The state argument of ``replace`` (a snapshot's env): the ``STATE_FIELDS`` in order
    (``"weight wmean wm2 half_life frozen merges updated_at"``), floats with 17 significant
    digits, integers and the flag with ``%d``; ``None`` (no half-life, never merged) as 0."""
    values: dict[str, float | int] = dict(zip(DECAY_FIELDS, (info.decayed or DecayedStats()).to_dict().values(),
                                              strict=True))
    values.update((name, getattr(info, name) or 0) for name in CONFIG_FIELDS + ACTIVITY_FIELDS)
    return " ".join(("%.17g" if isinstance(values[name], float) else "%d") % values[name] for name in STATE_FIELDS)


def encode_sequence(sequence: int) -> str:
    """A batch sequence number, fixed-width like the stats (16 digits hold any count < 2^53)."""
    return "%016d" % sequence


#: The last word of a merge's reply: what the call did with its batch.
MERGED, DUPLICATE, FROZEN = 1, 0, 2


def decode_reply(reply: Any) -> tuple[EnvInfo, int]:
    """Parse a script's reply, the env's record in ``ENV_FIELDS`` order and, from a merge, one
    more word (``bytes`` or ``str``): the env (validated by the script itself; a count of 0
    means empty) and what the call did (``MERGED``, ``DUPLICATE``: merged before, ``FROZEN``:
    not counted; replies of other operations count as ``MERGED``)."""
    words = reply.split()
    outcome = int(words[_OUTCOME]) if len(words) > _OUTCOME else MERGED
    count = int(words[0])
    stats = RunningStats.trusted(count, float(words[1]), float(words[2]), float(words[3]),
                                 float(words[4])) if count else RunningStats()
    half_life = float(words[_HALF_LIFE])
    decayed = DecayedStats(float(words[_WEIGHT]), float(words[_WEIGHT + 1]), float(words[_WEIGHT + 2])) \
        if half_life else None
    updated_at = int(words[_UPDATED_AT])
    epoch = int(words[_EPOCH])
    return EnvInfo(stats, decayed, half_life or None, words[_FROZEN] in (b"1", "1"), int(words[_MERGES]),
                   updated_at or None, epoch or None, as_text(words[_ORIGIN]) if epoch else None), outcome


_WEIGHT, _HALF_LIFE, _FROZEN, _MERGES, _UPDATED_AT, _EPOCH, _ORIGIN = map(
    ENV_FIELDS.index, ("weight", "half_life", "frozen", "merges", "updated_at", "epoch", "origin"))
#: How statistics came to be (the ``origin`` field).
ORIGINS = ("merge", "replace", "reseed")
_OUTCOME = len(ENV_FIELDS)


def as_text(value: Any) -> str:
    """A reply element as text (clients may or may not decode responses)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _corrupt(key: str, field: str, detail: str) -> CorruptStatsError:
    return CorruptStatsError(f"corrupt stats hash {key}: {field} {detail}", key=key, field=field)


def _number(key: str, field: str, text: str | None, minimum: float | None = None) -> float:
    if text is None:
        raise _corrupt(key, field, "is missing")
    number = _parse_field(field, text)
    if number is None or (minimum is not None and number < minimum):
        raise _corrupt(key, field, f"is {text!r}")
    return number


def decode_stored(key: str, stored: Mapping[Any, Any]) -> EnvInfo:
    """Parse an ``HGETALL key`` reply (field names and values as ``bytes`` or ``str``) with
    the scripts' rules, refusing malformed or missing fields.

    No totals at all means the env has no statistics yet; otherwise they must be a complete,
    valid summary. With a half-life the decayed fields must be complete too. Anything else
    raises ``CorruptStatsError`` naming the key and the first bad field, so a hand-edited hash
    is never silently read as something else.
    """
    found = {as_text(field): as_text(value) for field, value in stored.items()}
    texts = {field: found.get(field) for field in ENV_FIELDS}
    stats = RunningStats()
    if any(texts[field] is not None for field in STAT_FIELDS):
        count, mean, m2, low, high = (_number(key, field, texts[field]) for field in STAT_FIELDS)
        if m2 < 0:
            raise _corrupt(key, "m2", f"is {texts['m2']!r} (negative)")
        if low > high:
            raise CorruptStatsError(f"corrupt stats hash {key}: min {texts['min']!r} is greater than max "
                                    f"{texts['max']!r}", key=key, field="min")
        stats = RunningStats(int(count), mean, m2, low, high)  # _number gave count as an int
    half_life = decayed = None
    if texts["half_life"] is not None:
        half_life = _number(key, "half_life", texts["half_life"])
        if half_life <= 0:
            raise _corrupt(key, "half_life", f"is {texts['half_life']!r} (not positive)")
        weight, mean, m2 = (_number(key, field, texts[field], None if field == "wmean" else 0.0)
                            for field in DECAY_FIELDS)
        decayed = DecayedStats(weight, mean, m2)
    frozen = texts["frozen"]
    if frozen not in (None, "0", "1"):
        raise _corrupt(key, "frozen", f"is {frozen!r} (not 0 or 1)")
    merges, updated_at = (_count(key, field, texts[field]) for field in ACTIVITY_FIELDS)
    epoch_text, origin = texts["epoch"], texts["origin"]
    epoch = None
    if epoch_text is not None or origin is not None:
        if epoch_text is None or not epoch_text.isdigit() or not epoch_text.isascii() or len(epoch_text) > 16:
            raise _corrupt(key, "epoch", f"is {epoch_text!r} (not an integer)" if epoch_text else "is missing")
        if origin not in ORIGINS:
            raise _corrupt(key, "origin", f"is {origin!r} (not one of {', '.join(ORIGINS)})")
        epoch = int(epoch_text)
    return EnvInfo(stats, decayed, half_life, frozen == "1", merges, updated_at or None, epoch,
                   origin if epoch is not None else None)


def _count(key: str, field: str, text: str | None) -> int:
    """An activity count: absent is 0."""
    if text is None:
        return 0
    number = _parse_field(field, text)
    if number is None or not float(number).is_integer() or not 0 <= number <= MAX_COUNT:
        raise _corrupt(key, field, f"is {text!r}")
    return int(number)


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
