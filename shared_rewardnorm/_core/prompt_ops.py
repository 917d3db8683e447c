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

import logging
import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shared_rewardnorm._core.identity import ON_LOST
from shared_rewardnorm._core.inputs import MAX_NAME_LENGTH, coerce_scores, validate_batch_id, validate_env
from shared_rewardnorm._core.keys import stats_key
from shared_rewardnorm._core.outage import validate_on_unavailable
from shared_rewardnorm._core.prompt_info import PromptInfo
from shared_rewardnorm._core.prompt_outage import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_OWED,
    IDENTITY_NONE,
    PromptCache,
    PromptFallback,
    PromptVerdict,
    Summary,
    judge_prompt_set,
    older_then,
    visited,
)
from shared_rewardnorm._core.protocol import as_text
from shared_rewardnorm._core.requests import Operation, ReadCommands, RunScript
from shared_rewardnorm._core.served import single_tries
from shared_rewardnorm._core.store_ops import StoreCore
from shared_rewardnorm.errors import CorruptStatsError, StoreUnavailableError, WrongTypeError
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
_IDENTITY = ("epoch", "origin")

logger = logging.getLogger("shared_rewardnorm")
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

    def __init__(self, env: str, store: StoreCore, on_unavailable: Any = "raise", on_lost: Any = "reseed",
                 cache_size: Any = DEFAULT_CACHE_SIZE, max_owed: Any = DEFAULT_MAX_OWED) -> None:
        self._env = validate_env(env)
        self.validate_options(on_unavailable, on_lost, cache_size, max_owed)
        self._store_core = store
        self._key = settings_key(store.namespace, self._env)
        self._settings: PromptSettings | None = None
        #: Whether the latest read found the bucket count stored (fixed by a write or configure).
        self._buckets_fixed = False
        self._on_lost = on_lost
        #: The records this client saw last (local answers in an outage; what it puts back after a loss).
        self._cache = PromptCache(cache_size)
        #: With on_unavailable="local": the owed calls and the breaker; else None.
        self._fallback = PromptFallback(self._env, max_owed) if on_unavailable == "local" else None
        #: The set's epoch as last seen (None: none seen), and the epochs seen replaced.
        self._epoch: str | None = None
        self._origin: str | None = None
        self._retired: set[str] = set()
        #: Losses of the set this client noticed, and prompts it put back.
        self.losses = 0
        self.healed = 0

    @staticmethod
    def validate_options(on_unavailable: Any, on_lost: Any, cache_size: Any, max_owed: Any) -> None:
        """Check the fault options (the shells call this before they create a store)."""
        validate_on_unavailable(on_unavailable)
        if on_lost not in ON_LOST:
            raise ValueError(f"on_lost must be one of {', '.join(map(repr, ON_LOST))}, got {on_lost!r}")
        for name, value in (("cache_size", cache_size), ("max_owed", max_owed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")

    @property
    def env(self) -> str:
        """The env whose prompts these are."""
        return self._env

    @property
    def key(self) -> str:
        """The settings hash, ``<namespace>:{<env>}:prompts``."""
        return self._key

    @property
    def on_unavailable(self) -> str:
        """``"raise"`` (an unreachable store raises ``StoreUnavailableError``) or ``"local"``
        (updates are kept and reads answered from the records seen, until it answers again)."""
        return "raise" if self._fallback is None else "local"

    @property
    def degraded(self) -> bool:
        """Whether this client answers locally because its store is unreachable."""
        return self._fallback is not None and self._fallback.degraded

    @property
    def owed(self) -> int:
        """Update calls kept for the store while it was unreachable, not yet acknowledged."""
        return 0 if self._fallback is None else self._fallback.owed

    @property
    def dropped(self) -> int:
        """Owed update calls dropped (the oldest, beyond ``max_owed``) during outages."""
        return 0 if self._fallback is None else self._fallback.dropped

    @property
    def cached(self) -> int:
        """Prompts whose records this client remembers (at most ``cache_size``)."""
        return len(self._cache)

    def metrics(self) -> dict[str, float]:
        """``prompts/<env>/degraded|owed|dropped|losses|healed``, from this client's own state
        (no network): for a trainer's logger."""
        prefix = f"prompts/{self._env}"
        return {f"{prefix}/degraded": float(self.degraded), f"{prefix}/owed": float(self.owed),
                f"{prefix}/dropped": float(self.dropped), f"{prefix}/losses": float(self.losses),
                f"{prefix}/healed": float(self.healed)}

    # -- identity, loss and healing (_core/prompt_outage.py) ----------------------------------

    def _observed_op(self, found: tuple[str, str]) -> Operation[bool]:
        """Compare the set's identity in a reply with the one last seen; a loss is logged and,
        with ``on_lost="reseed"``, healed from the cache. Returns whether the cache was put back
        (its records now precede what the store held)."""
        verdict = judge_prompt_set(self._epoch, found, self._retired)
        if verdict is PromptVerdict.STALE:
            return False
        healed = False
        if verdict is PromptVerdict.REPLACED:
            logger.info("shared_rewardnorm: the prompt set of env %r was replaced deliberately (a restore or a "
                        "forget); "
                        "forgetting the %d records this client remembered", self._env, len(self._cache))
            self._cache.clear()
        elif verdict is not PromptVerdict.SAME:
            if verdict is PromptVerdict.LOST:
                self.losses += 1
                logger.error("shared_rewardnorm: the prompt set of env %r was lost (the server came back empty, "
                             "failed over to a replica without it, was flushed or evicted it): %s; %s", self._env,
                             "it is gone" if found == IDENTITY_NONE else f"recreated ({found[1]}) since",
                             f"putting back the {len(self._cache)} records this client remembers"
                             if self._on_lost == "reseed" else 'on_lost="log": not repairing it')
            else:
                logger.warning("shared_rewardnorm: the prompt set of env %r was lost and another client is putting "
                               "it back; adding the records this client remembers that it has not", self._env)
            if self._on_lost == "reseed":
                found = yield from self._heal_op(found)
                healed = True
        self._adopt(found)
        return healed

    def _adopt(self, found: tuple[str, str]) -> None:
        epoch = None if found == IDENTITY_NONE else found[0]
        if self._epoch is not None and epoch != self._epoch:
            self._retired.add(self._epoch)
        self._epoch = epoch
        self._origin = None if epoch is None else found[1]

    @property
    def identity(self) -> tuple[str, str] | None:
        """The set's identity (epoch: server microseconds when it was created; origin: how) as of
        this client's last round trip, or ``None`` (none seen: the set holds nothing yet)."""
        return None if self._epoch is None or self._origin is None else (self._epoch, self._origin)

    def _heal_op(self, found: tuple[str, str]) -> Operation[tuple[str, str]]:
        """Put the cache's records back (``prompt_write``'s heal mode, ``WRITE_CHUNK`` per call),
        restoring the set's decay first; returns the identity the set has after."""
        records = self._cache.items()
        if not records:
            return found
        settings = self._settings or PromptSettings()
        if settings.decay != 1.0:  # (on a set found gone this gives it an identity: heal for that one)
            words = as_text((yield RunScript("prompt_configure", (self._key,), ("%.17g" % settings.decay, "")))).split()
            found = (words[3], words[4])
        identity = found
        for start in range(0, len(records), WRITE_CHUNK):
            reply = yield from self._write_op(dict(records[start:start + WRITE_CHUNK]), f"heal:{found[0]}", None)
            outcome, identity = as_text(reply[0]), (as_text(reply[1]), as_text(reply[2]))
            if outcome == "moved":  # changed again since: the next reply tells what it is
                logger.warning("shared_rewardnorm: the prompt set of env %r changed while it was being put back; "
                               "stopping", self._env)
                return identity
            self.healed += int(reply[3])
            found = identity
        logger.error("shared_rewardnorm: the prompt set of env %r: %d records put back so far by this client",
                     self._env, self.healed)
        return identity

    # -- settings ---------------------------------------------------------------------------

    def _settings_op(self) -> Operation[PromptSettings]:
        """Read the settings (and remember them: the bucket count never changes while the set
        holds prompts, and every write checks it)."""
        replies = yield ReadCommands((("HMGET", self._key, "decay", "buckets", *_IDENTITY),))
        _raise_errors([self._key], replies)
        decay, buckets, epoch, origin = (None if value is None else as_text(value) for value in replies[0])
        try:
            settings = PromptSettings(1.0 if decay is None else _decay(float(decay)),
                                      DEFAULT_BUCKETS if buckets is None else _buckets(int(buckets)))
        except ValueError as exc:
            raise CorruptStatsError(f"corrupt prompt settings {self._key}: {exc}", key=self._key) from None
        # A loss is healed with the settings this client knew (a lost set reads as the defaults).
        yield from self._observed_op((epoch or IDENTITY_NONE[0], origin or IDENTITY_NONE[1]))
        self._settings = settings
        self._buckets_fixed = buckets is not None
        return settings

    def _known_settings_op(self) -> Operation[PromptSettings]:
        if self._settings is None:
            return (yield from self._settings_op())
        return self._settings

    def _configure_op(self, decay: Any, buckets: Any, renew: bool = False) -> Operation[tuple[PromptSettings, bool]]:
        """Set the decay and bucket count; ``renew`` (a restore) gives the set a new identity of
        origin ``replace``, so that its clients adopt it rather than take it for a loss."""
        args = ("" if decay is None else "%.17g" % _decay(decay), "" if buckets is None else str(_buckets(buckets)))
        reply = as_text((yield RunScript("prompt_configure", (self._key,), (*args, "replace") if renew else args)))
        words = reply.split()
        self._settings = PromptSettings(float(words[0]), int(words[1]))
        if renew:  # this client's own replacement: adopted without a word, the old records dropped
            self._cache.clear()
            self._adopt((words[3], words[4]))
        else:
            yield from self._observed_op((words[3], words[4]))
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
                   ) -> Operation[tuple[list[str], dict[str, Summary], list[PromptInfo | None]]]:
        """Merge a call's rewards (one visit per distinct prompt). Returns the ids, the rewards
        grouped by prompt as (count, mean, m2) in first-seen order, and each distinct prompt's
        record from before the call (``None``: never seen); with the store unreachable and
        ``on_unavailable="local"``, the call is owed and the records are this client's view."""
        ids = validate_prompt_ids(prompt_ids)
        values = _numbers(rewards, "rewards", len(ids))
        name = validate_batch_id(batch_id)
        grouped: dict[str, list[float]] = {}
        for prompt_id, value in zip(ids, values, strict=True):
            grouped.setdefault(prompt_id, []).append(value)
        summaries: dict[str, Summary] = {}
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
        fallback = self._fallback
        if fallback is None:
            return ids, summaries, (yield from self._send_update_op(summaries, name))
        name = name if name is not None else fallback.batch_id()
        if fallback.claim():
            operation = self._paid_then(self._send_update_op(summaries, name))
            try:
                before = yield from (single_tries(operation) if fallback.probing else operation)
            except StoreUnavailableError as exc:
                fallback.failed(exc)
            else:
                fallback.recovered()
                return ids, summaries, before
        before_local = [fallback.view(prompt_id, self._cache) for prompt_id in summaries]
        fallback.owe(summaries, name, self._cache, (self._settings or PromptSettings()).decay)
        return ids, summaries, before_local

    def _paid_then(self, operation: Operation[Any]) -> Operation[Any]:
        """Send the owed calls, oldest first (each under its id: counted once), then ``operation``."""
        fallback = self._fallback
        assert fallback is not None
        while (owed := fallback.next_owed()) is not None:
            yield from self._send_update_op(owed.summaries, owed.batch_id)
            fallback.paid(owed)
        return (yield from operation)

    def _send_update_op(self, summaries: dict[str, Summary], name: str | None) -> Operation[list[PromptInfo | None]]:
        """One prompt_update call; returns the records from before it, as this client sees them
        (after healing a loss the reply showed, the records put back come first), and
        remembers the records after it."""
        settings = yield from self._known_settings_op()
        tail: list[str] = []
        for prompt_id, (count, mean, m2) in summaries.items():
            tail += (str(bucket_of(prompt_id, settings.buckets)), prompt_id, "%d" % count, "%.17g" % mean,
                     "%.17g" % m2)
        request = self._write("prompt_update", settings.buckets, (), tail, name,
                              f"{sum(summary[0] for summary in summaries.values())} rewards for "
                              f"{len(summaries)} prompts")
        reply = self._reply_of_write((yield request))
        remembered = {prompt_id: self._cache.get(prompt_id) for prompt_id in summaries}
        healed = yield from self._observed_op((as_text(reply[1]), as_text(reply[2])))
        merged_now = as_text(reply[0]) == "1"
        before: list[PromptInfo | None] = []
        for index, (prompt_id, summary) in enumerate(summaries.items()):
            text = as_text(reply[3 + index])
            stored = (parse_record(bucket_key(self._key, int(request.args[3 + 5 * index])), prompt_id, text)
                      if text else None)
            older = remembered[prompt_id]
            if healed and older is not None:
                stored = older_then(older, stored, settings.decay)
            before.append(stored)
            self._cache.put(prompt_id, visited(stored, summary, settings.decay) if merged_now else stored)
        return before

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
        reply = yield from self._write_op(records, "1" if replace else "0", batch_id)
        yield from self._observed_op((as_text(reply[1]), as_text(reply[2])))
        for prompt_id, info in records.items():
            self._cache.put(prompt_id, info)
        return len(records)

    def _write_op(self, records: dict[str, PromptInfo], mode: str, batch_id: Any) -> Operation[Any]:
        """One prompt_write call of ``mode`` (``0`` seed, ``1`` replace, ``heal:<epoch>``); its reply."""
        settings = yield from self._known_settings_op()
        tail: list[str] = []
        for prompt_id, info in records.items():
            tail += (str(bucket_of(prompt_id, settings.buckets)), prompt_id, "%d" % info.visits, "%d" % info.count,
                     "%.17g" % info.weight, "%.17g" % info.mean, "%.17g" % info.m2)
        request = self._write("prompt_write", settings.buckets, (), [mode, *tail], batch_id,
                              f"{len(records)} prompt records")
        # (the mode sits after the record lifetime: ARGV[4])
        return self._reply_of_write((yield request))

    def _forget_op(self, prompt_ids: Any) -> Operation[int]:
        if prompt_ids is not None:
            ids = list(dict.fromkeys(validate_prompt_ids(prompt_ids)))
            if not ids:
                return 0
            settings = yield from self._known_settings_op()
            args = ["ids", str(settings.buckets)]
            for prompt_id in ids:
                args += (str(bucket_of(prompt_id, settings.buckets)), prompt_id)
            deleted = int((yield RunScript("prompt_forget", (self._key,), tuple(args))))
            for prompt_id in ids:
                self._cache.put(prompt_id, None)
            return deleted
        settings = yield from self._settings_op()
        deleted = 0
        for first in range(0, settings.buckets, FORGET_CHUNK):
            last = min(first + FORGET_CHUNK, settings.buckets) - 1
            deleted += int((yield RunScript("prompt_forget", (self._key,), ("buckets", str(first), str(last)))))
        deleted += int((yield RunScript("prompt_forget", (self._key,), ("settings",))))
        self._settings = None
        self._cache.clear()  # this client's own forget: it knows no set now (the tombstone is adopted silently)
        self._adopt(IDENTITY_NONE)
        return deleted

    # -- reads ------------------------------------------------------------------------------

    def _get_op(self, prompt_ids: Any) -> Operation[list[PromptInfo | None]]:
        ids = validate_prompt_ids(prompt_ids)
        distinct = list(dict.fromkeys(ids))
        if not distinct:
            return []
        fallback = self._fallback
        found: dict[str, PromptInfo | None] | None = None
        if fallback is None:
            found = yield from self._read_op(distinct)
        else:
            if fallback.claim():
                operation = self._paid_then(self._read_op(distinct))
                try:
                    found = yield from (single_tries(operation) if fallback.probing else operation)
                except StoreUnavailableError as exc:
                    fallback.failed(exc)
                else:
                    fallback.recovered()
            if found is None:
                found = {prompt_id: fallback.view(prompt_id, self._cache) for prompt_id in distinct}
        assert found is not None
        return [found[prompt_id] for prompt_id in ids]

    def _read_op(self, distinct: list[str]) -> Operation[dict[str, PromptInfo | None]]:
        """The records of ``distinct`` ids: one HMGET per bucket and one of the set's identity, in
        one round trip; remembered in the cache."""
        settings = yield from self._known_settings_op()
        by_bucket: dict[int, list[str]] = {}
        for prompt_id in distinct:
            by_bucket.setdefault(bucket_of(prompt_id, settings.buckets), []).append(prompt_id)
        keys = [bucket_key(self._key, bucket) for bucket in by_bucket]
        replies = yield ReadCommands((*(("HMGET", key, *members) for key, members in
                                        zip(keys, by_bucket.values(), strict=True)),
                                      ("HMGET", self._key, *_IDENTITY)))
        _raise_errors([*keys, self._key], replies)
        epoch, origin = (None if value is None else as_text(value) for value in replies[-1])
        healed = yield from self._observed_op((epoch or IDENTITY_NONE[0], origin or IDENTITY_NONE[1]))
        found: dict[str, PromptInfo | None] = {}
        for key, members, reply in zip(keys, by_bucket.values(), replies[:-1], strict=True):
            for prompt_id, stored in zip(members, reply, strict=True):
                info = None if stored is None else parse_record(key, prompt_id, as_text(stored))
                older = self._cache.get(prompt_id)
                if healed and older is not None:
                    info = older_then(older, info, settings.decay)
                found[prompt_id] = info
                self._cache.put(prompt_id, info)
        return found

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
        self._cache.clear()  # the restore replaces what this client knew: nothing to put back first
        yield from self._settings_op()
        # A target whose bucket count is fixed keeps it: the ids are bucketed for it here.
        yield from self._configure_op(settings.decay, None if self._buckets_fixed else settings.buckets, renew=True)
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
