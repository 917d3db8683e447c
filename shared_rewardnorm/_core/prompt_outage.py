"""Prompt statistics through an outage and after a loss, sans-I/O.

The env statistics' two guarantees (``outage.py``, ``identity.py``), for a prompt set:

- **Outage** (``on_unavailable="local"``): an unreachable store never stops training. A call
  whose store is down is *owed*: kept, in order, under a batch id of its own (the caller's, or
  one made here), and sent when the store answers again, each call on its own (a call is one
  visit of each of its prompts, so owed calls are never folded together) and exactly once (a
  call whose fate is unknown is resent under the same id, which the script counts once).
  Meanwhile the calls answer from what this client knows: the records it has seen (the
  *cache*) with its owed calls applied, as the store will apply them; a prompt it never saw is
  unknown (``get`` says ``None``, ``select`` keeps it, ``advantages`` uses the call's own mean).
  At most ``max_owed`` calls are kept; beyond that the oldest is dropped, counted and logged.
  The breaker (``outage.Breaker``) keeps calls from each waiting out the retry policy.
- **Loss**: the set's identity (``epoch``, ``origin``) comes back with every write and read. A
  client that knew one epoch and finds none, or another whose origin created the set from
  nothing (``update``, ``configure``, ``seed``), knows the set was lost (an empty restart, a
  failover to a replica without it, a flush, eviction): it logs an ERROR and, with
  ``on_lost="reseed"``, puts back the records of its cache (``prompt_write``'s heal mode: each
  merged as the older visits with what the prompt gathered since, the first client to put a
  prompt back wins). Found with origin ``reseed``, another client is healing: this one puts
  back its own records too (the script skips prompts already put back). Origins ``replace`` (a
  restore) and ``forget`` (the whole set deleted, which leaves a tombstone of its identity for a
  day) are deliberate: adopted, and the cache, now stale, is cleared.

The cache holds the ``cache_size`` most recently seen prompts: what one client can put back. A
set larger than every client's cache heals partly; persistence (``docs/operations``) is what
keeps all of it.
"""

from __future__ import annotations

import enum
import itertools
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from shared_rewardnorm._core.outage import Breaker
from shared_rewardnorm._core.prompt_info import PromptInfo

__all__ = ["DEFAULT_CACHE_SIZE", "DEFAULT_MAX_OWED", "IDENTITY_NONE", "OwedCall", "PromptCache", "PromptFallback",
           "PromptVerdict", "Summary", "judge_prompt_set", "older_then", "visited"]

logger = logging.getLogger("shared_rewardnorm")

#: Prompts a client remembers by default (for its local answers and for healing a loss).
DEFAULT_CACHE_SIZE = 100_000
#: Calls a client keeps owed by default while its store is unreachable.
DEFAULT_MAX_OWED = 10_000
#: The identity of a set that has none (the scripts' '0' and '-').
IDENTITY_NONE = ("0", "-")
#: Origins of an identity created from nothing (a first write): found new, the set was lost.
_CREATING = frozenset({"update", "configure", "seed"})

#: One prompt's rewards in one call: (count, mean, m2).
Summary = tuple[int, float, float]


def visited(before: PromptInfo | None, summary: Summary, decay: float) -> PromptInfo:
    """A prompt's record after one visit with ``summary``, as ``prompt_update.lua`` computes it
    (the stored weight and m2 shrink by ``decay``, the visit's rewards weigh 1 each)."""
    count, mean, m2 = summary
    if before is None:
        return PromptInfo(1, count, float(count), mean, m2)
    old_weight = before.weight * decay
    if old_weight <= 0:
        return PromptInfo(before.visits + 1, before.count + count, float(count), mean, m2)
    weight = old_weight + count
    delta = mean - before.mean
    return PromptInfo(before.visits + 1, before.count + count, weight, before.mean + delta * (count / weight),
                  before.m2 * decay + m2 + delta * delta * (old_weight * count / weight))


def older_then(older: PromptInfo, now: PromptInfo | None, decay: float) -> PromptInfo:
    """``older`` (a record from before a loss) followed by ``now`` (the visits since), as
    ``prompt_write.lua``'s heal merges them: ``older``'s weight and m2 decay by
    ``decay ** now.visits``."""
    if now is None:
        return older
    factor = decay ** now.visits
    old_weight = older.weight * factor
    total = old_weight + now.weight
    mean, m2 = older.mean, older.m2 * factor + now.m2
    if total > 0:
        delta = now.mean - older.mean
        mean = older.mean + delta * (now.weight / total)
        m2 += delta * delta * (old_weight * now.weight / total)
    return PromptInfo(older.visits + now.visits, older.count + now.count, total, mean, m2)


class PromptCache:
    """The ``size`` prompts this client saw most recently, with their records (least recently
    seen dropped first); ``size`` 0 keeps none."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._records: OrderedDict[str, PromptInfo] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def get(self, prompt_id: str) -> PromptInfo | None:
        return self._records.get(prompt_id)

    def put(self, prompt_id: str, record: PromptInfo | None) -> None:
        """Remember ``record`` as the prompt's (``None``: the store has none: forget it)."""
        if record is None:
            self._records.pop(prompt_id, None)
            return
        if self._size <= 0:
            return
        self._records[prompt_id] = record
        self._records.move_to_end(prompt_id)
        while len(self._records) > self._size:
            self._records.popitem(last=False)

    def items(self) -> list[tuple[str, PromptInfo]]:
        return list(self._records.items())

    def clear(self) -> None:
        self._records.clear()


class PromptVerdict(enum.Enum):
    """What a reply's identity says about the prompt set a client knew."""

    SAME = "same"
    STALE = "stale"
    REPLACED = "replaced"
    RESEEDED = "reseeded"
    LOST = "lost"


def judge_prompt_set(known: str | None, found: tuple[str, str], retired: Iterable[str]) -> PromptVerdict:
    """Compare a reply's identity ``found`` (epoch, origin; ``IDENTITY_NONE`` for none) with the
    epoch this client knew (``None``: it knew none, so nothing can be lost); ``retired`` holds
    the epochs it has seen replaced (a reply carrying one was overtaken by a later one)."""
    epoch, origin = found
    if known is None or epoch == known:
        return PromptVerdict.SAME
    if epoch in retired:
        return PromptVerdict.STALE
    if origin in ("replace", "forget"):
        return PromptVerdict.REPLACED
    if origin == "reseed":
        return PromptVerdict.RESEEDED
    return PromptVerdict.LOST


@dataclass(frozen=True, slots=True)
class OwedCall:
    """An update the store has not acknowledged: its prompts' summaries (first-seen order) and
    the batch id it is (or will be) sent under."""

    summaries: dict[str, Summary]
    batch_id: str


class PromptFallback(Breaker):
    """The owed calls, the breaker and the local view of one prompt set's client (see the module
    docstring)."""

    def __init__(self, env: str, max_owed: int = DEFAULT_MAX_OWED, **breaker: float) -> None:
        super().__init__(env, **breaker)  # type: ignore[arg-type]
        self._max_owed = max_owed
        self._owed: deque[OwedCall] = deque()
        #: The records after the owed calls, for the prompts they hold.
        self._overlay: dict[str, PromptInfo] = {}
        #: Owed calls dropped (the oldest, beyond ``max_owed``).
        self.dropped = 0
        self._prefix = f"srn-owed:{secrets.token_hex(8)}"
        self._numbers = itertools.count(1)

    def batch_id(self) -> str:
        """A new batch id of this client's own (for an update the caller did not name)."""
        return f"{self._prefix}:{next(self._numbers)}"

    @property
    def owed(self) -> int:
        """Calls waiting to be sent."""
        return len(self._owed)

    def view(self, prompt_id: str, cache: PromptCache) -> PromptInfo | None:
        """The prompt as this client knows it: its cached record with the owed calls applied."""
        return self._overlay.get(prompt_id) or cache.get(prompt_id)

    def owe(self, summaries: dict[str, Summary], batch_id: str, cache: PromptCache, decay: float) -> None:
        """Keep a call to send later, and apply it to the local view."""
        if any(owed.batch_id == batch_id for owed in self._owed):  # a name owed already is one call
            return
        self._owed.append(OwedCall(summaries, batch_id))
        for prompt_id, summary in summaries.items():
            self._overlay[prompt_id] = visited(self.view(prompt_id, cache), summary, decay)
        if len(self._owed) > self._max_owed:
            self._owed.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.error("shared_rewardnorm: env %r: more than %d prompt updates are owed to the unavailable "
                             "store; dropping the oldest (%d dropped so far)", self._env, self._max_owed,
                             self.dropped)

    def next_owed(self) -> OwedCall | None:
        return self._owed[0] if self._owed else None

    def paid(self, owed: OwedCall) -> None:
        """The store acknowledged ``owed``; with nothing left owed, the view is the cache's."""
        if self._owed and self._owed[0] is owed:
            self._owed.popleft()
        if not self._owed:
            self._overlay.clear()

    def failed(self, error: BaseException) -> None:
        """The store could not be reached: open the breaker, logging the outage once."""
        if self._trip():
            logger.warning("shared_rewardnorm: env %r: the store is unavailable (%s); prompt statistics answer from "
                           "the records this client has seen, and its updates are kept to send when the store "
                           "answers (trying it again every %g s)", self._env, error, self._interval)

    def recovered(self) -> None:
        """The store answered and nothing is owed: close the breaker."""
        seconds = self._close()
        if seconds is not None:
            logger.info("shared_rewardnorm: env %r: the store answers again after %.1f s; the prompt updates made "
                        "meanwhile are merged", self._env, seconds)
