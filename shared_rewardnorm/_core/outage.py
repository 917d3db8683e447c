"""Normalizing through an outage of the store (``on_unavailable="local"``), sans-I/O.

A trainer should not stop because Redis restarted. With ``on_unavailable="local"`` a normalizer
whose store is unreachable (``StoreUnavailableError``: the store's retry policy is spent) answers
from what it knows: the last shared statistics it saw, merged (Chan) with the batches it has
normalized since, so its count keeps growing and normalization stays continuous. Those batches
are *owed* to the store, and paid exactly once when it answers again:

- A batch whose merge was sent when the store went away has an unknown fate (it may have
  landed before the connection broke). Every merge of such a normalizer is sent under a batch
  id (the caller's, or one made here), so the batch is resent later under that same id: the
  ledger sends the very request that carried it and the script counts it once. It is never
  also folded into another batch.
- Batches normalized while the store is known to be down were never sent: they are folded
  into one summary (``unsent``), which gets an id of its own when it is first sent.

While the store is down, a circuit breaker keeps calls from each waiting for a connection: at
most one call per ``interval`` seconds (the clock is injected) tries the store again, with a
single try (``Once``), and the calls in between answer at once. The first call that meets the
outage has already waited out the store's retry policy (that is what tells a blip from an
outage). One WARNING is logged per outage and one INFO line when it ends.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from shared_rewardnorm.envinfo import DecayedStats, EnvInfo
from shared_rewardnorm.stats import RunningStats

__all__ = ["ON_UNAVAILABLE", "RECONNECT_INTERVAL", "Breaker", "LocalFallback", "Owed", "decayed_after",
           "validate_on_unavailable", "view_with"]

#: The accepted values of ``on_unavailable=``.
ON_UNAVAILABLE = ("raise", "local")
#: Seconds between two tries of an unreachable store (one call tries; the others answer locally).
RECONNECT_INTERVAL = 1.0

logger = logging.getLogger("shared_rewardnorm")


def validate_on_unavailable(value: object) -> str:
    """``value`` if it is one of ``ON_UNAVAILABLE``, else ``ValueError`` naming the choices."""
    if value not in ON_UNAVAILABLE:
        raise ValueError(f"on_unavailable must be one of {', '.join(map(repr, ON_UNAVAILABLE))}, got {value!r}")
    return str(value)


@dataclass(frozen=True, slots=True)
class Owed:
    """A batch the store has not acknowledged, under the id it is (or will be) sent with."""

    stats: RunningStats
    batch_id: str


def decayed_after(decayed: DecayedStats | None, half_life: float | None, batch: RunningStats) -> DecayedStats | None:
    """The decayed statistics after merging ``batch``, as ``lua/merge.lua`` computes them (the
    old weights shrink by ``2 ** (-n / half_life)``, the batch weighs 1 per sample); ``None``
    without a half-life. For the local view only: the store's own arithmetic is the script's."""
    if half_life is None or batch.count == 0:
        return decayed
    before = decayed or DecayedStats()
    factor = 2.0 ** (-batch.count / half_life)
    old_weight = before.weight * factor
    if old_weight <= 0:
        return DecayedStats(float(batch.count), batch.mean, batch.m2)
    weight = old_weight + batch.count
    delta = batch.mean - before.mean
    return DecayedStats(weight, before.mean + delta * (batch.count / weight),
                        before.m2 * factor + batch.m2 + delta * delta * (old_weight * batch.count / weight))


def view_with(known: EnvInfo, pending: RunningStats) -> EnvInfo:
    """``known`` (a shared view) with the samples ``pending`` merged in, as the store would merge
    them (nothing, for a frozen env: the store would not count them)."""
    if pending.count == 0 or known.frozen:
        return known
    return replace(known, stats=known.stats.merge(pending),
                   decayed=decayed_after(known.decayed, known.half_life, pending))


class Breaker:
    """The circuit breaker of one client of an unreachable store (see the module docstring): at
    most one call per ``interval`` seconds tries the store; the others answer locally.

    Args:
        env: the env's name, for the log lines.
        clock: a monotonic clock in seconds (a seam for tests).
        interval: seconds between two tries of an unreachable store.
    """

    def __init__(self, env: str, clock: Callable[[], float] = time.monotonic,
                 interval: float = RECONNECT_INTERVAL) -> None:
        self._env = env
        self._clock = clock
        self._interval = interval
        #: Whether the store is unreachable as far as this client knows.
        self.degraded = False
        #: Outages met so far (each logged once).
        self.outages = 0
        self._since = 0.0
        self._next_try = 0.0

    def claim(self) -> bool:
        """Whether this call may use the store: always while healthy; while degraded, if the
        breaker's interval has passed (the caller becomes the one try, and the next try is due
        an interval later, so concurrent calls answer locally meanwhile)."""
        if not self.degraded:
            return True
        now = self._clock()
        if now < self._next_try:
            return False
        self._next_try = now + self._interval
        return True

    @property
    def probing(self) -> bool:
        """Whether a call that may use the store should try it once only (the store is down)."""
        return self.degraded

    def _trip(self) -> bool:
        """The store could not be reached: open the breaker; whether this starts an outage (the
        caller logs it once)."""
        now = self._clock()
        self._next_try = now + self._interval
        if self.degraded:
            return False
        self.degraded = True
        self.outages += 1
        self._since = now
        return True

    def _close(self) -> float | None:
        """The store answers and nothing is owed: close the breaker; the outage's length in
        seconds if there was one (the caller logs it)."""
        if not self.degraded:
            return None
        self.degraded = False
        return self._clock() - self._since


class LocalFallback(Breaker):
    """The owed batches and the circuit breaker of one normalizer (see the module docstring).

    Args:
        env: the env's name, for the log lines.
        clock: a monotonic clock in seconds (a seam for tests).
        interval: seconds between two tries of an unreachable store.
    """

    def __init__(self, env: str, clock: Callable[[], float] = time.monotonic,
                 interval: float = RECONNECT_INTERVAL) -> None:
        super().__init__(env, clock, interval)
        self._sent: list[Owed] = []
        self._unsent = RunningStats()
        self._prefix = f"srn-owed:{secrets.token_hex(8)}"
        self._numbers = itertools.count(1)

    def batch_id(self) -> str:
        """A new batch id of this normalizer's own (for a merge the caller did not name)."""
        return f"{self._prefix}:{next(self._numbers)}"

    def failed(self, error: BaseException, known: EnvInfo) -> None:
        """The store could not be reached: open the breaker (logging the outage's first
        failure once)."""
        if self._trip():
            logger.warning("shared_rewardnorm: env %r: the store is unavailable (%s); normalizing locally from the "
                           "last shared statistics seen (count %d) and the samples normalized since, and trying the "
                           "store again every %g s", self._env, error, known.stats.count, self._interval)

    def recovered(self) -> None:
        """The store answered and every owed batch is paid: close the breaker."""
        seconds = self._close()
        if seconds is not None:
            logger.info("shared_rewardnorm: env %r: the store answers again after %.1f s; the samples "
                        "normalized locally are merged", self._env, seconds)

    def owe(self, stats: RunningStats, batch_id: str | None = None, *, sent: bool = False) -> None:
        """Owe a batch: sent (its fate unknown) or named by the caller, it keeps its id; a
        batch never sent and unnamed joins the unsent summary."""
        if stats.count == 0:
            return
        if batch_id is not None:
            if all(owed.batch_id != batch_id for owed in self._sent):  # a name owed already is one batch
                self._sent.append(Owed(stats, batch_id))
        else:
            assert not sent, "a sent merge always has an id here"
            self._unsent = self._unsent.merge(stats)

    @property
    def owes(self) -> bool:
        """Whether any batch waits to be merged."""
        return bool(self._sent) or self._unsent.count > 0

    def next_owed(self) -> Owed | None:
        """The next batch to send: the oldest identified one, else the unsent summary, which gets
        its id now (and keeps it until acknowledged). ``None`` when nothing is owed."""
        if not self._sent and self._unsent.count:
            self._sent.append(Owed(self._unsent, self.batch_id()))
            self._unsent = RunningStats()
        return self._sent[0] if self._sent else None

    def paid(self, owed: Owed) -> None:
        """The store acknowledged ``owed`` (counted now, or before)."""
        if owed in self._sent:
            self._sent.remove(owed)

    def pending(self) -> RunningStats:
        """Everything owed, as one summary."""
        return RunningStats.combine([*(owed.stats for owed in self._sent), self._unsent])

    def view(self, known: EnvInfo) -> EnvInfo:
        """The statistics to normalize with locally: the last shared view ``known`` with the owed
        batches merged in (nothing, for a frozen env: the store would not count them)."""
        return view_with(known, self.pending())
