"""Per-prompt statistics without I/O: keys, the record codec, input checks and the operations.

An env's prompts live in its hash slot (``lua/stats_lib.lua``'s prompt section describes the
layout): a settings hash ``<ns>:{<env>}:prompts`` (decay, bucket count) and ``buckets`` small
hashes ``<ns>:{<env>}:p:<b>``, one field per prompt, ``b = crc32(utf-8 id) mod buckets``. Small
buckets keep Redis's compact hash encoding (listpack), and a compact exact record keeps each
prompt near 40 bytes (benchmarks/prompt_scale.py measures it). Writes are scripts
(``prompt_update``, ``prompt_write``, ``prompt_configure``, ``prompt_forget``), exactly once
through the store's ``BatchLedger``; reads are plain pipelined ``HMGET``/``HGETALL`` (a
read-only user can read), decoded here.

``PromptCore`` holds one env's prompt set and expresses each public method of ``PromptStats``
and ``AsyncPromptStats`` as an operation (a generator of requests) that the store runs.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shared_rewardnorm._core.inputs import MAX_NAME_LENGTH, coerce_scores, validate_batch_id, validate_env
from shared_rewardnorm._core.keys import stats_key
from shared_rewardnorm._core.protocol import as_text
from shared_rewardnorm._core.requests import Operation, ReadCommands, RunScript
from shared_rewardnorm._core.store_ops import StoreCore
from shared_rewardnorm.errors import CorruptStatsError, WrongTypeError
from shared_rewardnorm.stats import MAX_COUNT, summarize

__all__ = [
    "DEFAULT_BUCKETS",
    "MAX_BUCKETS",
    "PromptCore",
    "PromptInfo",
    "PromptSettings",
    "bucket_of",
    "decode_double",
    "encode_double",
    "format_record",
    "parse_record",
    "settings_key",
]

#: Buckets of a prompt set unless configured otherwise: about 61 prompts per bucket at 1M
#: prompts, well inside the listpack limit of 128 fields (stats_lib.lua's DEFAULT_PROMPT_BUCKETS).
DEFAULT_BUCKETS = 16384
#: The most buckets a set may have (stats_lib.lua's MAX_PROMPT_BUCKETS).
MAX_BUCKETS = 1 << 20
#: Buckets read per round trip when reading a whole set (each bucket is one HGETALL: the server
#: is never busy with more than one bucket, about 128 prompts at most, at a time).
READ_CHUNK = 256
#: Prompts per prompt_write call of a restore.
WRITE_CHUNK = 1000
#: Buckets per prompt_forget call (its MAX_RANGE).
FORGET_CHUNK = 1024

_SETTINGS_SUFFIX = ":prompts"
_BUCKET_INFIX = ":p:"
_ZERO = 48  # the codec's digits are the 64 characters from '0' (ASCII 48) to 'o'
_FRACTION = (1 << 52) - 1
_DOUBLE = struct.Struct(">d")
_BITS = struct.Struct(">Q")


def settings_key(namespace: str, env: str) -> str:
    """The settings hash of an env's prompt set, ``<ns>:{<env>}:prompts`` (the env's hash tag)."""
    return stats_key(namespace, env) + _SETTINGS_SUFFIX


def bucket_key(settings: str, bucket: int) -> str:
    """The key of bucket ``bucket`` of the prompt set whose settings hash is ``settings``."""
    return f"{settings[:-len(_SETTINGS_SUFFIX)]}{_BUCKET_INFIX}{bucket}"


def bucket_of(prompt_id: str, buckets: int) -> int:
    """The bucket of a prompt: CRC-32 (zlib's) of its UTF-8 bytes, modulo the bucket count."""
    return zlib.crc32(prompt_id.encode("utf-8")) % buckets


def encode_double(value: float) -> str:
    """A double as 11 characters from '0' to 'o' (base 64 of its IEEE-754 bits: sign and biased
    exponent in two characters, the fraction in nine), exactly as stats_lib.lua's encode_double."""
    bits = _BITS.unpack(_DOUBLE.pack(value))[0]
    high, fraction = bits >> 52, bits & _FRACTION
    digits = [_ZERO + (high >> 6), _ZERO + (high & 63)]
    digits.extend(_ZERO + ((fraction >> shift) & 63) for shift in range(48, -1, -6))
    return bytes(digits).decode("ascii")


def decode_double(text: str, at: int = 0) -> float | None:
    """The double of the 11 characters at ``at``, or ``None`` if they are not a finite double's."""
    chunk = text[at:at + 11]
    if len(chunk) != 11 or any(not "0" <= char <= "o" for char in chunk) or chunk[2] > "?":
        return None
    high = (ord(chunk[0]) - _ZERO) << 6 | (ord(chunk[1]) - _ZERO)
    if high & 2047 == 2047:
        return None
    fraction = 0
    for char in chunk[2:]:
        fraction = fraction << 6 | (ord(char) - _ZERO)
    return float(_DOUBLE.unpack(_BITS.pack(high << 52 | fraction))[0])


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """One prompt's statistics: ``visits`` (calls that held it), ``count`` (its rewards, not
    decayed), ``weight`` (the sum of their weights: ``count`` without decay), the weighted
    ``mean`` and ``m2`` (the weighted sum of squared deviations from it). A seeded prompt has
    ``visits == count == 0`` and the prior's weight and mean."""

    visits: int
    count: int
    weight: float
    mean: float
    m2: float

    @property
    def std(self) -> float:
        """The weighted standard deviation, ``sqrt(m2 / weight)`` (0 without weight)."""
        return math.sqrt(self.m2 / self.weight) if self.weight > 0 else 0.0

    def to_list(self) -> list[float | int]:
        """``[visits, count, weight, mean, m2]``, as snapshots hold it."""
        return [self.visits, self.count, self.weight, self.mean, self.m2]


@dataclass(frozen=True, slots=True)
class PromptSettings:
    """A prompt set's decay (1: none) and bucket count."""

    decay: float = 1.0
    buckets: int = DEFAULT_BUCKETS


def format_record(info: PromptInfo) -> str:
    """A prompt's stored record (stats_lib.lua's format_prompt)."""
    text = f"{info.visits},{info.count},{encode_double(info.mean)}{encode_double(info.m2)}"
    return text + encode_double(info.weight) if info.weight != info.count else text


def parse_record(key: str, prompt_id: str, text: str) -> PromptInfo:
    """A stored record as a ``PromptInfo``; ``CorruptStatsError`` naming the bucket and the prompt
    if it is malformed (the scripts refuse the same records)."""
    head, _, rest = text.partition(",")
    middle, _, doubles = rest.partition(",")
    mean = decode_double(doubles, 0) if len(doubles) in (22, 33) else None
    m2 = decode_double(doubles, 11) if mean is not None else None
    if head.isdigit() and middle.isdigit() and head.isascii() and middle.isascii() and m2 is not None:
        visits, count = int(head), int(middle)
        weight = decode_double(doubles, 22) if len(doubles) == 33 else float(count)
        if weight is not None and weight >= 0 and m2 >= 0 and visits <= MAX_COUNT and count <= MAX_COUNT:
            return PromptInfo(visits, count, weight, mean, m2)  # type: ignore[arg-type]
    raise CorruptStatsError(f"corrupt prompt record in {key}: prompt {prompt_id!r} holds {text[:60]!r}", key=key,
                            field=prompt_id)


def validate_prompt_ids(prompt_ids: Any, what: str = "prompt_ids") -> list[str]:
    """A list of prompt ids: non-empty str of at most 256 characters, encodable as UTF-8."""
    if isinstance(prompt_ids, (str, bytes, bytearray)):
        raise TypeError(f"{what} must be a sequence of str ids, not a bare {type(prompt_ids).__name__}")
    try:
        ids = list(prompt_ids)
    except TypeError:
        raise TypeError(f"{what} must be a sequence of str ids, got {type(prompt_ids).__name__}") from None
    for position, prompt_id in enumerate(ids):
        if not isinstance(prompt_id, str):
            raise TypeError(f"{what}[{position}] is a {type(prompt_id).__name__} ({prompt_id!r}), not a str "
                            "(use str(index) for a dataset index)")
        if not prompt_id:
            raise ValueError(f"{what}[{position}] is empty")
        if len(prompt_id) > MAX_NAME_LENGTH:
            raise ValueError(f"{what}[{position}] is {len(prompt_id)} characters long; the limit is "
                             f"{MAX_NAME_LENGTH}")
        try:
            prompt_id.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what}[{position}] {prompt_id!r} cannot be encoded as UTF-8") from None
    return ids


def _numbers(values: Any, what: str, count: int) -> list[float]:
    """Finite floats, as many as there are ids, with errors naming ``what`` and the position."""
    try:
        numbers = coerce_scores(values)
    except (TypeError, ValueError) as exc:
        raise type(exc)(str(exc).replace("scores", what)) from None
    if len(numbers) != count:
        raise ValueError(f"{what} has {len(numbers)} values for {count} prompt ids: one per id")
    return [float(value) for value in numbers]


def _decay(decay: Any) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise ValueError(f"decay must be a number in (0, 1] (1: no decay), got {decay!r}")
    return float(decay)


def _buckets(buckets: Any) -> int:
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"buckets must be an int from 1 to {MAX_BUCKETS}, got {buckets!r}")
    return buckets


def _raise_errors(keys: Sequence[str], replies: Sequence[Any]) -> None:
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, Exception):
            if str(reply).startswith("WRONGTYPE"):
                raise WrongTypeError(f"{key}: holds a non-hash value, not a prompt bucket", key=key) from reply
            raise reply


class PromptCore:
    """One env's prompt set: its keys, the cached settings, and the operations (see the module
    docstring). ``store`` is the ``StatsStore``/``AsyncStatsStore`` that runs them."""

    def __init__(self, env: str, store: StoreCore) -> None:
        self._env = validate_env(env)
        self._store_core = store
        self._key = settings_key(store.namespace, self._env)
        self._settings: PromptSettings | None = None
        #: Whether the latest read found the bucket count stored (fixed by a write or configure).
        self._buckets_fixed = False

    @property
    def env(self) -> str:
        """The env whose prompts these are."""
        return self._env

    @property
    def key(self) -> str:
        """The settings hash, ``<namespace>:{<env>}:prompts``."""
        return self._key

    # -- settings ---------------------------------------------------------------------------

    def _settings_op(self) -> Operation[PromptSettings]:
        """Read the settings (and remember them: the bucket count never changes while the set
        holds prompts, and every write checks it)."""
        replies = yield ReadCommands((("HMGET", self._key, "decay", "buckets"),))
        _raise_errors([self._key], replies)
        decay, buckets = (None if value is None else as_text(value) for value in replies[0])
        try:
            settings = PromptSettings(1.0 if decay is None else _decay(float(decay)),
                                      DEFAULT_BUCKETS if buckets is None else _buckets(int(buckets)))
        except ValueError as exc:
            raise CorruptStatsError(f"corrupt prompt settings {self._key}: {exc}", key=self._key) from None
        self._settings = settings
        self._buckets_fixed = buckets is not None
        return settings

    def _known_settings_op(self) -> Operation[PromptSettings]:
        if self._settings is None:
            return (yield from self._settings_op())
        return self._settings

    def _configure_op(self, decay: Any, buckets: Any) -> Operation[tuple[PromptSettings, bool]]:
        args = ("" if decay is None else "%.17g" % _decay(decay), "" if buckets is None else str(_buckets(buckets)))
        reply = as_text((yield RunScript("prompt_configure", (self._key,), args)))
        words = reply.split()
        self._settings = PromptSettings(float(words[0]), int(words[1]))
        return self._settings, words[2] == "1"

    # -- writes -----------------------------------------------------------------------------

    def _write(self, operation: str, buckets: int, head: tuple[str, ...], tail: list[str], batch_id: Any,
               about: str) -> RunScript:
        name = validate_batch_id(batch_id)
        return self._store_core.ledger.request_for_write(
            self._key, operation, (str(buckets), *head), tuple(tail), batch_id=name,
            encoded="\0".join(tail) + "\0" + "\0".join(head) if name is not None else "", about=about)

    def _reply_of_write(self, reply: Any) -> Any:
        """The script's reply of a write, after checking the replicas with ``replicas=``."""
        wait = self._store_core._wait  # the store's replica settings, as its merges use them
        if wait is None:
            return reply
        reply, acknowledged = reply
        wait.check(self._key, acknowledged)
        return reply

    def _update_op(self, prompt_ids: Any, rewards: Any, batch_id: Any = None
                   ) -> Operation[tuple[list[str], dict[str, tuple[int, float, float]], list[PromptInfo | None]]]:
        """Merge a call's rewards (one visit per distinct prompt). Returns the ids, the rewards
        grouped by prompt as (count, mean, m2) in first-seen order, and each distinct prompt's
        record from before the call (``None``: never seen)."""
        ids = validate_prompt_ids(prompt_ids)
        values = _numbers(rewards, "rewards", len(ids))
        validate_batch_id(batch_id)
        grouped: dict[str, list[float]] = {}
        for prompt_id, value in zip(ids, values, strict=True):
            grouped.setdefault(prompt_id, []).append(value)
        summaries: dict[str, tuple[int, float, float]] = {}
        for prompt_id, group in grouped.items():
            if len(group) == 1:
                summaries[prompt_id] = (1, group[0], 0.0)
            else:
                stats = summarize(group)
                if not (math.isfinite(stats.mean) and math.isfinite(stats.m2)):
                    raise ValueError(f"the rewards of prompt {prompt_id!r} overflow a float when summarized")
                summaries[prompt_id] = (stats.count, stats.mean, stats.m2)
        if not summaries:
            return ids, summaries, []
        settings = yield from self._known_settings_op()
        tail: list[str] = []
        for prompt_id, (count, mean, m2) in summaries.items():
            tail += (str(bucket_of(prompt_id, settings.buckets)), prompt_id, "%d" % count, "%.17g" % mean,
                     "%.17g" % m2)
        request = self._write("prompt_update", settings.buckets, (), tail, batch_id,
                              f"{len(ids)} rewards for {len(summaries)} prompts")
        reply = self._reply_of_write((yield request))
        before: list[PromptInfo | None] = []
        for prompt_id, (index, stored) in zip(summaries, enumerate(reply[1:]), strict=True):
            text = as_text(stored)
            before.append(parse_record(bucket_key(self._key, int(request.args[3 + 5 * index])), prompt_id, text)
                          if text else None)
        return ids, summaries, before

    def _advantages_op(self, prompt_ids: Any, rewards: Any, batch_id: Any = None) -> Operation[list[float]]:
        ids, summaries, before = yield from self._update_op(prompt_ids, rewards, batch_id)
        baseline = {prompt_id: (info.mean if info is not None else summaries[prompt_id][1])
                    for prompt_id, info in zip(summaries, before, strict=True)}
        values = _numbers(rewards, "rewards", len(ids))
        return [value - baseline[prompt_id] for prompt_id, value in zip(ids, values, strict=True)]

    def _seed_op(self, prompt_ids: Any, means: Any, weights: Any, replace: Any, batch_id: Any
                 ) -> Operation[int]:
        if not isinstance(replace, bool):
            raise TypeError(f"replace must be True or False, got {replace!r}")
        ids = validate_prompt_ids(prompt_ids)
        mean_values = _numbers(means, "means", len(ids))
        weight_values = _numbers(weights, "weights", len(ids))
        for position, weight in enumerate(weight_values):
            if weight <= 0:
                raise ValueError(f"weights[{position}] = {weight!r} must be > 0 (a prior of that many samples)")
        if len(set(ids)) != len(ids):
            raise ValueError("prompt_ids holds an id twice: seed each prompt once per call")
        records = {prompt_id: PromptInfo(0, 0, weight, mean, 0.0)
                   for prompt_id, mean, weight in zip(ids, mean_values, weight_values, strict=True)}
        return (yield from self._write_records_op(records, replace, batch_id))

    def _write_records_op(self, records: dict[str, PromptInfo], replace: bool, batch_id: Any) -> Operation[int]:
        if not records:
            return 0
        settings = yield from self._known_settings_op()
        tail: list[str] = []
        for prompt_id, info in records.items():
            tail += (str(bucket_of(prompt_id, settings.buckets)), prompt_id, "%d" % info.visits, "%d" % info.count,
                     "%.17g" % info.weight, "%.17g" % info.mean, "%.17g" % info.m2)
        request = self._write("prompt_write", settings.buckets, (), ["1" if replace else "0", *tail], batch_id,
                              f"{len(records)} prompt records")
        # (the replace flag sits after the record lifetime: ARGV[4])
        self._reply_of_write((yield request))
        return len(records)

    def _forget_op(self, prompt_ids: Any) -> Operation[int]:
        if prompt_ids is not None:
            ids = list(dict.fromkeys(validate_prompt_ids(prompt_ids)))
            if not ids:
                return 0
            settings = yield from self._known_settings_op()
            args = ["ids", str(settings.buckets)]
            for prompt_id in ids:
                args += (str(bucket_of(prompt_id, settings.buckets)), prompt_id)
            return int((yield RunScript("prompt_forget", (self._key,), tuple(args))))
        settings = yield from self._settings_op()
        deleted = 0
        for first in range(0, settings.buckets, FORGET_CHUNK):
            last = min(first + FORGET_CHUNK, settings.buckets) - 1
            deleted += int((yield RunScript("prompt_forget", (self._key,), ("buckets", str(first), str(last)))))
        deleted += int((yield RunScript("prompt_forget", (self._key,), ("settings",))))
        self._settings = None
        return deleted

    # -- reads ------------------------------------------------------------------------------

    def _get_op(self, prompt_ids: Any) -> Operation[list[PromptInfo | None]]:
        ids = validate_prompt_ids(prompt_ids)
        distinct = list(dict.fromkeys(ids))
        if not distinct:
            return []
        settings = yield from self._known_settings_op()
        by_bucket: dict[int, list[str]] = {}
        for prompt_id in distinct:
            by_bucket.setdefault(bucket_of(prompt_id, settings.buckets), []).append(prompt_id)
        keys = [bucket_key(self._key, bucket) for bucket in by_bucket]
        replies = yield ReadCommands(tuple(("HMGET", key, *members)
                                           for key, members in zip(keys, by_bucket.values(), strict=True)))
        _raise_errors(keys, replies)
        found: dict[str, PromptInfo | None] = {}
        for key, members, reply in zip(keys, by_bucket.values(), replies, strict=True):
            for prompt_id, stored in zip(members, reply, strict=True):
                found[prompt_id] = None if stored is None else parse_record(key, prompt_id, as_text(stored))
        return [found[prompt_id] for prompt_id in ids]

    def _select_op(self, prompt_ids: Any, low: Any, high: Any) -> Operation[list[str]]:
        bounds = _numbers([low, high], "bounds (low, high)", 2)
        ids = list(dict.fromkeys(validate_prompt_ids(prompt_ids)))
        infos = yield from self._get_op(ids)
        return [prompt_id for prompt_id, info in zip(ids, infos, strict=True)
                if info is None or bounds[0] < info.mean < bounds[1]]

    def _weights_op(self, prompt_ids: Any, eps: Any, low: Any, high: Any) -> Operation[list[float]]:
        eps_value, low_value, high_value = _numbers([eps, low, high], "eps, low, high", 3)
        if eps_value < 0 or not low_value < high_value:
            raise ValueError(f"weights need eps >= 0 and low < high, got eps={eps!r}, low={low!r}, high={high!r}")
        infos = yield from self._get_op(prompt_ids)
        weights = []
        for info in infos:
            p = 0.5 if info is None else min(1.0, max(0.0, (info.mean - low_value) / (high_value - low_value)))
            weights.append(math.sqrt(p * (1.0 - p)) + eps_value)
        return weights

    def _read_buckets_op(self, first: int, stop: int,
                         settings: PromptSettings) -> Operation[list[tuple[str, PromptInfo]]]:
        """Every prompt of buckets ``first`` to ``stop - 1``: one HGETALL per bucket, one round trip."""
        keys = [bucket_key(self._key, bucket) for bucket in range(first, min(stop, settings.buckets))]
        replies = yield ReadCommands(tuple(("HGETALL", key) for key in keys))
        _raise_errors(keys, replies)
        found = []
        for key, reply in zip(keys, replies, strict=True):
            items = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
            for field, value in items:
                prompt_id = as_text(field)
                found.append((prompt_id, parse_record(key, prompt_id, as_text(value))))
        return found

    def snapshot(self, settings: PromptSettings, items: Iterable[tuple[str, PromptInfo]]) -> dict[str, Any]:
        """A JSON-safe snapshot of the set (floats as JSON numbers: Python's repr round-trips)."""
        return {"format": SNAPSHOT_FORMAT, "version": 1, "namespace": self._store_core.namespace, "env": self._env,
                "decay": settings.decay, "buckets": settings.buckets,
                "prompts": {prompt_id: info.to_list() for prompt_id, info in sorted(items)}}

    def _restore_op(self, snapshot: Any) -> Operation[int]:
        """Write a snapshot's prompts (replacing those with the same ids) and its decay, in calls
        of ``WRITE_CHUNK`` prompts; the whole snapshot is validated first."""
        settings, records = parse_prompt_snapshot(snapshot)
        yield from self._settings_op()
        # A target whose bucket count is fixed keeps it: the ids are bucketed for it here.
        yield from self._configure_op(settings.decay, None if self._buckets_fixed else settings.buckets)
        written = 0
        items = list(records.items())
        for start in range(0, len(items), WRITE_CHUNK):
            written += yield from self._write_records_op(dict(items[start:start + WRITE_CHUNK]), True, None)
        return written


#: The ``format`` of a prompt set's snapshot.
SNAPSHOT_FORMAT = "shared_rewardnorm.prompts"


def parse_prompt_snapshot(snapshot: Any) -> tuple[PromptSettings, dict[str, PromptInfo]]:
    """Validate a prompt snapshot completely (before anything is written)."""
    if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT or snapshot.get("version") != 1:
        raise ValueError(f"not a prompt snapshot (format {SNAPSHOT_FORMAT!r}, version 1)")
    decay, buckets = _decay(snapshot.get("decay")), _buckets(snapshot.get("buckets"))
    prompts = snapshot.get("prompts")
    if not isinstance(prompts, dict):
        raise ValueError("a prompt snapshot's prompts must be an object of id: [visits, count, weight, mean, m2]")
    validate_prompt_ids(list(prompts), "the snapshot's prompt ids")
    records = {}
    for prompt_id, entry in prompts.items():
        if not (isinstance(entry, list) and len(entry) == 5 and all(
                isinstance(value, (int, float)) and not isinstance(value, bool) for value in entry)):
            raise ValueError(f"prompt {prompt_id!r}: expected [visits, count, weight, mean, m2], got {entry!r}")
        visits, count, weight, mean, m2 = entry
        if not (isinstance(visits, int) and isinstance(count, int) and 0 <= visits <= MAX_COUNT
                and 0 <= count <= MAX_COUNT and all(map(math.isfinite, (weight, mean, m2))) and weight >= 0
                and m2 >= 0):
            raise ValueError(f"prompt {prompt_id!r}: visits and count must be integers >= 0, weight and m2 finite "
                             f"and >= 0, mean finite; got {entry!r}")
        records[prompt_id] = PromptInfo(visits, count, float(weight), float(mean), float(m2))
    return PromptSettings(decay, buckets), records
