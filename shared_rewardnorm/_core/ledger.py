"""``BatchLedger``: batch identity, and the one memory of named batches, for both shells.

Exactly once rests on two halves. On the server, the merge script keeps, per client and env, a
record of the sequence numbers it has merged (the last ``RECORD_WINDOW`` of them,
``lua/stats_lib.lua``'s ``claim_batch``), so a merge request sent again is never counted twice.
Here, on the client, the ledger decides which request a batch travels in:

- Every merge gets an identity: this store's client id (random, renewed in a forked child, so
  two processes never share one) and the env's next sequence number. The store's own retries
  (``RetryPolicy``) send that same request again, so they are always safe.
- A caller may name its batch (``batch_id=``). The ledger remembers the request that carried
  each named batch, and the same name sent again into the same env goes out in that same
  request: the script answers "merged before" (or merges it, if the first try never arrived),
  so it counts once. A name is remembered for ``lifetime`` seconds (the server's record lives
  that long after the env's last merge from this client) and while its sequence number is
  within the script's window of the env's latest; so at most ``RECORD_WINDOW`` names per env.
  The same name with different values is a caller's mistake, refused before anything is sent.
- A batch without a name is a new batch every time: nothing about its values is remembered.

Coalesced asyncio merges (``aio/coalesce.py``) send several callers' batches as one group; the
group gets one identity and each member's name is remembered with it, so a member's resend
counts once too. Both shells ask this same object; nothing else assigns identities.

Sans-I/O: the clock is injected (``clock=``), and the ledger only builds requests.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from shared_rewardnorm._core.keys import batch_record_key
from shared_rewardnorm._core.protocol import encode_sequence
from shared_rewardnorm._core.requests import MergeBatch, RunScript
from shared_rewardnorm.stats import RunningStats

__all__ = ["RECORD_WINDOW", "BatchLedger"]

#: How far behind a client's latest sequence number (per env) the merge script can still judge a
#: number: the ``WINDOW`` of ``lua/stats_lib.lua`` (tests/unit checks that they agree).
RECORD_WINDOW = 1024


@dataclass(frozen=True, slots=True)
class _Named:
    """A named batch: its values (to refuse a name reused for other values) and its request."""

    encoded: str
    #: What the batch held (a merge's summary, or another write's description), for the error
    #: that refuses its name reused for other values.
    about: RunningStats | str
    request: RunScript
    sequence: int
    expires: float


def _described(about: RunningStats | str) -> str:
    if isinstance(about, str):
        return about
    stats = about
    return f"{stats.count} values, mean {stats.mean:.17g}, min {stats.min:.17g}, max {stats.max:.17g}"


class BatchLedger:
    """Assigns merge requests to batches, remembering the named ones (see the module docstring).

    Args:
        record_ttl: seconds the server keeps a client's batch record after its last merge into
            an env (sent with every merge), and so how long a name is remembered.
        wait: ``WAIT`` arguments sent in the same round trip after each merge (``replicas=``),
            or ``None``.
        clock: a monotonic clock in seconds (a seam for tests).
    """

    def __init__(self, record_ttl: int, wait: tuple[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._record_ttl = record_ttl
        self._ttl_text = str(record_ttl)
        self._wait = wait
        self._clock = clock
        self._renew()

    def _renew(self) -> None:
        self._pid = os.getpid()
        self._client_id = secrets.token_hex(8)
        self._sequences: dict[str, Iterator[int]] = {}
        self._latest: dict[str, int] = {}
        self._named: dict[str, OrderedDict[str, _Named]] = {}

    @property
    def client_id(self) -> str:
        """This store's batch identity prefix in this process (a forked child gets its own, and
        forgets its parent's names: they were the parent's batches)."""
        if os.getpid() != self._pid:
            self._renew()
        return self._client_id

    def request_for(self, batch: MergeBatch) -> RunScript:
        """The request that carries ``batch`` alone: the one that carried its name before, or a
        new one (remembered under its name, if it has one). Raises ``ValueError`` for a name
        that carried other values."""
        known = self.recall(batch)
        if known is not None:
            return known
        return self.request_for_group(batch.key, [batch], batch.encoded)

    def request_for_write(self, key: str, operation: str, head: tuple[str, ...], tail: tuple[str, ...], *,
                          batch_id: str | None, encoded: str, about: str) -> RunScript:
        """The request for one exactly-once write of another operation than merge (the prompt
        statistics' updates): ``operation`` on ``(key, <client's batch record of key>)`` with the
        arguments ``head``, the sequence number, the record lifetime, then ``tail`` (the script
        claims the batch with stats_lib.lua's ``claim_batch``). ``key`` has sequence numbers of
        its own. A named write sent again goes out in the request that carried it before;
        ``encoded`` identifies its values and ``about`` describes them, for the error that
        refuses a name reused for other values."""
        if batch_id is not None:
            self.client_id  # noqa: B018 - renews the identity in a forked child first
            named = self._live(key)
            entry = named.get(batch_id) if named is not None else None
            if entry is not None:
                self._refuse_reuse(key, batch_id, entry, encoded, about)
                return entry.request
        sequence, record_key = self._next(key)
        request = RunScript(operation, (key, record_key), (*head, encode_sequence(sequence), self._ttl_text, *tail),
                            self._wait)
        if batch_id is not None:
            self._remember(key, batch_id, _Named(encoded, about, request, sequence, self._clock() + self._record_ttl))
        return request

    def _next(self, key: str) -> tuple[int, str]:
        """The env's next sequence number and this client's batch record key for it."""
        client_id = self.client_id  # first: a forked child renews its identity and sequences
        counter = self._sequences.get(key)
        if counter is None:
            counter = self._sequences[key] = itertools.count(1)
        sequence = next(counter)
        self._latest[key] = sequence
        return sequence, batch_record_key(key, client_id)

    def _remember(self, key: str, batch_id: str, entry: _Named) -> None:
        memory = self._named.setdefault(key, OrderedDict())
        memory.pop(batch_id, None)  # re-inserted as the newest
        memory[batch_id] = entry
        self._expire(key, memory)

    @staticmethod
    def _refuse_reuse(key: str, batch_id: str, entry: _Named, encoded: str, about: RunningStats | str) -> None:
        if entry.encoded != encoded:
            raise ValueError(f"batch_id {batch_id!r} was already used in {key} for a different batch "
                             f"({_described(entry.about)}; now {_described(about)}): a batch_id names one "
                             "batch, sent again only to retry it")

    def recall(self, batch: MergeBatch) -> RunScript | None:
        """The request that carried ``batch``'s name before, if it is still remembered, else
        ``None`` (also for an unnamed batch). Raises ``ValueError`` for a name that carried
        other values."""
        if batch.batch_id is None:
            return None
        self.client_id  # noqa: B018 - renews the identity in a forked child first
        named = self._live(batch.key)
        entry = named.get(batch.batch_id) if named is not None else None
        if entry is None:
            return None
        self._refuse_reuse(batch.key, batch.batch_id, entry, batch.encoded, batch.stats)
        return entry.request

    def request_for_group(self, key: str, batches: Sequence[MergeBatch], encoded: str) -> RunScript:
        """A new request merging ``encoded`` (the combined summary of ``batches``) into ``key``,
        with the env's next sequence number; each named batch is remembered with it."""
        sequence, record_key = self._next(key)
        request = RunScript("merge", (key, record_key), (encoded, encode_sequence(sequence), self._ttl_text),
                            self._wait)
        expires = self._clock() + self._record_ttl
        for batch in batches:
            if batch.batch_id is not None:
                self._remember(key, batch.batch_id, _Named(batch.encoded, batch.stats, request, sequence, expires))
        return request

    def remembered(self, key: str) -> int:
        """How many named batches of ``key`` are remembered now."""
        named = self._live(key)
        return 0 if named is None else len(named)

    def _live(self, key: str) -> OrderedDict[str, _Named] | None:
        memory = self._named.get(key)
        if memory is not None:
            self._expire(key, memory)
        return memory

    def _expire(self, key: str, memory: OrderedDict[str, _Named]) -> None:
        """Forget the names past their lifetime or their sequence number's window, oldest first
        (both grow with age, since entries are kept in the order they were sent)."""
        now = self._clock()
        oldest_judged = self._latest.get(key, 0) - RECORD_WINDOW
        while memory:
            entry = next(iter(memory.values()))
            if entry.expires > now and entry.sequence > oldest_judged:
                break
            memory.popitem(last=False)
