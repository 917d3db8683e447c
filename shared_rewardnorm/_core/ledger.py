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
    stats: RunningStats
    request: RunScript
    sequence: int
    expires: float


def _described(stats: RunningStats) -> str:
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
        if entry.encoded != batch.encoded:
            raise ValueError(f"batch_id {batch.batch_id!r} was already used in {batch.key} for a different batch "
                             f"({_described(entry.stats)}; now {_described(batch.stats)}): a batch_id names one "
                             "batch, sent again only to retry it")
        return entry.request

    def request_for_group(self, key: str, batches: Sequence[MergeBatch], encoded: str) -> RunScript:
        """A new request merging ``encoded`` (the combined summary of ``batches``) into ``key``,
        with the env's next sequence number; each named batch is remembered with it."""
        client_id = self.client_id  # first: a forked child renews its identity and sequences
        counter = self._sequences.get(key)
        if counter is None:
            counter = self._sequences[key] = itertools.count(1)
        sequence = next(counter)
        self._latest[key] = sequence
        request = RunScript("merge", (key, batch_record_key(key, client_id)),
                            (encoded, encode_sequence(sequence), self._ttl_text), self._wait)
        named = [batch for batch in batches if batch.batch_id is not None]
        if named:
            memory = self._named.setdefault(key, OrderedDict())
            expires = self._clock() + self._record_ttl
            for batch in named:
                assert batch.batch_id is not None
                memory.pop(batch.batch_id, None)  # re-inserted as the newest
                memory[batch.batch_id] = _Named(batch.encoded, batch.stats, request, sequence, expires)
            self._expire(key, memory)
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
