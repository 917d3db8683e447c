"""Coalesced merges for the asyncio store: concurrent merges into one env share a script call.

An asyncio environment scores many rollouts at once, so dozens of ``normalize`` calls into the
same env can be waiting on the same store together. Sending each as its own merge makes the
server run the script once per call, and one Redis core is the capacity of one env. Instead,
per env, at most one merge is in flight while any caller waits for it; batches that arrive
meanwhile form a group, and when the merge in flight returns, the group goes out as one summary
(Chan's formula makes the combination exact: ``RunningStats.combine``). Every member of a group
receives the statistics its group's merge returned. When every caller of the merge in flight
has been cancelled (a stuck connection, timeouts), the group behind it goes out at once and the
abandoned merge finishes in the background: more than one merge of the env is then in flight,
but only one that anybody waits for. Nobody waits longer than the merge already in flight: an
idle env sends a batch at once, from the caller's own task (so a lone caller pays what an
uncoalesced merge pays); only groups go out in a task of their own.

Exactly once holds for a group as for a single batch, because a group is one merge with one
batch identity:

- a lost reply that the store's retry policy retries sends the same request again;
- a caller cancelled (a timeout) after its group went out does not stop the group, which still
  answers the other members (a batch sent alone is cancelled with its caller, and the group
  behind it goes out at once); a cancelled caller's batch is remembered with its group's request,
  and when the caller sends the same batch again, that request goes again, so the script
  reports it as merged (or merges it, if the group never arrived) and it counts once;
- a group whose fate is unknown (the retries ran out) fails for every member, and every member's
  batch is remembered the same way, for the members that try again;
- a group merged once but not acknowledged by enough replicas (``replicas=``,
  ``NotReplicatedError``) is remembered the same way: a member's retry resends the group's merge,
  which counts nothing twice and waits for the replicas again.

A remembered batch is forgotten when a batch with the same summary is merged into that env
through this store (it is then sent as that batch's retry), or once it has expired, whichever
comes first. It expires ``REMEMBER_SECONDS`` after it was remembered (``time.monotonic``), or
once ``REMEMBER_MERGES`` further merge requests have gone from this store into that env (groups,
lone batches and re-sent remembered ones alike), whichever comes first; and each env keeps at
most ``REMEMBER_LIMIT`` remembered batches (the oldest forgotten first), whatever their
summaries. Unlike the single merge (which forgets after the very next merge into the env),
members of one failed group retry in no particular order, mixed with other coroutines' new
batches; a retry comes within seconds, and within a few merges. The price: within that window
a new batch whose summary equals a remembered one (same count, mean, m2, min and max) is taken as
its retry, so if the remembered batch had been merged, the new one is not; after it, a caller's
late retry of a batch whose merge had landed is a new batch and counts again.

A caller's own errors stay its own: scores are validated before a batch joins a group. Errors
the server raises for the env (a corrupt hash, a key of another type) reach every member, each
its own copy of the exception (``_own_copy``).

The coalescer does not look into what a merge returns: whatever ``StoreCore._send_merge``
returns is handed to every member. Operations reach it through one seam: with coalescing on,
``StoreCore._merge_at`` yields a ``MergeBatch`` request instead of the script call, and the
asyncio driver hands it here; so every operation that merges (``update``, ``merge``,
``normalize``, whatever it does around the merge) coalesces without knowing it.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from shared_rewardnorm._core.protocol import encode_stats
from shared_rewardnorm._core.requests import RunScript
from shared_rewardnorm.errors import NotReplicatedError, RewardNormError
from shared_rewardnorm.stats import RunningStats

if TYPE_CHECKING:
    from shared_rewardnorm.aio import AsyncStatsStore

__all__ = ["MergeCoalescer"]

#: Errors that mean the server refused a merge (nothing was written): not worth remembering.
_REFUSED = (RewardNormError, ResponseError)


def _refused(error: BaseException) -> bool:
    """Whether ``error`` means nothing was written. ``NotReplicatedError`` does not: its merge is
    stored once, and the callers' retry must send that same request (to wait for the replicas
    again without counting twice), so it is remembered like a merge whose reply was lost."""
    return isinstance(error, _REFUSED) and not isinstance(error, NotReplicatedError)


def _own_copy(error: BaseException) -> BaseException:
    """A copy of ``error`` for one member of a group, so that each caller's raise adds its
    traceback to its own exception rather than to one shared by every member. It keeps the
    message, attributes, cause, context and the traceback so far. An exception that cannot be
    rebuilt from its ``args`` (a library's own with a different constructor) is shared as is."""
    try:
        own = copy.copy(error)
    except Exception:
        return error
    if type(own) is not type(error):
        return error
    own.__cause__, own.__context__ = error.__cause__, error.__context__
    own.__suppress_context__ = error.__suppress_context__
    return own.with_traceback(error.__traceback__)


@dataclass(eq=False)
class _Member:
    """One caller's batch in a group, and where its answer goes."""

    stats: RunningStats
    encoded: str
    answer: asyncio.Future[Any]
    request: RunScript | None = None  # the merge that carried it, once sent


@dataclass(eq=False)
class _Group:
    """Batches merged as one (each member notes the request that carried it)."""

    members: list[_Member] = field(default_factory=list)


@dataclass(eq=False)
class _Lane:
    """One env's state: the group whose merge is in flight, and the group forming behind it."""

    in_flight: _Group | None = None
    forming: _Group | None = None


#: Remembered batches kept per env at most, whatever their summaries (the oldest are forgotten
#: first): callers that never send their batch again must not make the memory grow without bound.
REMEMBER_LIMIT = 1024
#: Seconds after which a remembered batch is forgotten: a caller retries within seconds, and a
#: batch with the same summary sent later is a new batch.
REMEMBER_SECONDS = 30.0
#: Merge requests from this store into the env after which a remembered batch is forgotten (the
#: members of a failed group retry while a few groups go out).
REMEMBER_MERGES = 32

#: The clock remembered batches expire by (a seam for tests).
_now = time.monotonic


@dataclass(eq=False)
class _Remembered:
    """A batch whose caller never saw the answer of ``request``, the merge that carried it."""

    encoded: str
    request: RunScript
    merge: int  # the env's merge number when it was remembered
    expires: float  # on the ``_now`` clock


@dataclass(eq=False)
class _Memory:
    """One env's remembered batches, oldest first, and the merges sent into it meanwhile."""

    entries: deque[_Remembered] = field(default_factory=lambda: deque(maxlen=REMEMBER_LIMIT))
    merges: int = 0

    def expire(self) -> None:
        """Forget the batches past their time or their number of merges (oldest first, and both
        grow with age)."""
        now = _now()
        entries = self.entries
        while entries and (entries[0].expires <= now or self.merges - entries[0].merge > REMEMBER_MERGES):
            entries.popleft()


class MergeCoalescer:
    """Runs an ``AsyncStatsStore``'s merges, combining concurrent ones per env (see the module
    docstring). One per store; it lives in the store's event loop."""

    def __init__(self, store: AsyncStatsStore) -> None:
        self._store = store
        self._lanes: dict[str, _Lane] = {}
        # Per env: batches whose merge's answer their callers never saw (oldest first).
        self._remembered: dict[str, _Memory] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Merge requests sent (groups, single batches and re-sent remembered ones; the store's
        #: own retries of one request are not counted again): for benchmarks and monitoring.
        self.requests_sent = 0
        #: Merges asked of this coalescer (a caller sending a batch again counts again).
        self.calls = 0

    async def merge(self, key: str, stats: RunningStats) -> Any:
        """Merge one non-empty, validated batch summary into ``key``, exactly once, and return
        the statistics of the merge that carried it."""
        encoded = encode_stats(stats)
        self.calls += 1
        remembered = self._recall(key, encoded)
        if remembered is not None:
            return await self._send_one(key, remembered, encoded)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.in_flight is None:
            return await self._send_alone(key, lane, encoded)
        member = _Member(stats, encoded, asyncio.get_running_loop().create_future())
        if lane.forming is None:
            lane.forming = _Group()
        group = lane.forming
        group.members.append(member)
        try:
            return await member.answer
        except asyncio.CancelledError:
            if member.request is None:  # not sent yet: leave the group, nothing to remember
                if member in group.members:
                    group.members.remove(member)
            else:  # sent: the group goes on without this caller, who may send its batch again
                self._remember(key, member.request, [encoded])
                if all(other.answer.done() for other in group.members):
                    # Nobody waits for this merge any more (a stuck connection, timeouts): let
                    # the next group go out now; this one finishes in the background.
                    self._next(key, lane, group, cancelled=False)
            raise

    async def _send_alone(self, key: str, lane: _Lane, encoded: str) -> Any:
        """The env is idle: send this batch at once, from the caller's own task (no task or
        future of its own: a lone caller pays what an uncoalesced merge pays). Batches arriving
        meanwhile form the group that goes out when this returns, or when this caller is
        cancelled (then its batch is remembered, as any merge whose answer was never seen)."""
        group = lane.in_flight = _Group()  # no members: nobody waits on an answer slot
        try:
            return await self._send_one(key, self._store._merge_request(key, encoded), encoded)
        finally:
            self._next(key, lane, group, cancelled=False)

    def _launch(self, key: str, lane: _Lane, group: _Group) -> None:
        lane.in_flight = group
        task = asyncio.get_running_loop().create_task(self._send_group(key, group))
        self._tasks.add(task)  # keep a reference: the loop holds tasks only weakly
        task.add_done_callback(lambda done: self._sent(key, lane, group, done))

    def _sent(self, key: str, lane: _Lane, group: _Group, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # A safety net: whatever ended the send (cancelled before it started, a bug), no member
        # may wait for ever; members already answered are skipped.
        if task.cancelled():
            self._answer(group.members, error=asyncio.CancelledError())
        elif task.exception() is not None:
            self._answer(group.members, error=task.exception())
        self._next(key, lane, group, cancelled=task.cancelled())

    def _next(self, key: str, lane: _Lane, group: _Group, cancelled: bool) -> None:
        """``group``'s merge returned, or nobody waits for it any more (it then goes on in the
        background, no longer the env's merge in flight): send the group that formed meanwhile,
        or mark the env idle. A cancelled send (the loop is shutting down) cancels
        the waiting group instead of starting it."""
        if lane.in_flight is not group:
            return  # the lane moved on already
        waiting, lane.forming = lane.forming, None
        if waiting is not None and waiting.members:
            if cancelled:
                self._answer(waiting.members, error=asyncio.CancelledError())
            else:
                self._launch(key, lane, waiting)
                return
        lane.in_flight = None
        if self._lanes.get(key) is lane:
            del self._lanes[key]

    async def _send_group(self, key: str, group: _Group) -> None:
        members = list(group.members)
        if not members:  # every caller left before it went out
            return
        try:
            combined = RunningStats.combine(member.stats for member in members)
        except ValueError:
            # The batches are valid alone but their combination is not finite (a combine of one
            # batch is that batch, so there are several): each goes out alone, and gets its own
            # answer or error.
            for member in members:
                if not member.answer.done():  # skip a caller cancelled meanwhile
                    await self._send_group(key, _Group([member]))
            return
        store = self._store
        request = store._merge_request(key, encode_stats(combined))
        for member in members:
            member.request = request
        self._sending(key)
        try:
            result = await store.run(store._send_merge(request))
        except BaseException as exc:
            if not _refused(exc):  # the fate of the merge is unknown, or it is not replicated
                self._remember(key, request, [m.encoded for m in members if not m.answer.done()])
            self._answer(members, error=exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._answer(members, result=result)

    @staticmethod
    def _answer(members: list[_Member], result: Any = None, error: BaseException | None = None) -> None:
        for member in members:
            if member.answer.done():  # a cancelled caller
                continue
            if isinstance(error, asyncio.CancelledError):
                member.answer.cancel()
            elif error is not None:
                member.answer.set_exception(_own_copy(error))
            else:
                member.answer.set_result(result)

    async def _send_one(self, key: str, request: RunScript, encoded: str) -> Any:
        """Send one caller's merge from its own task: a batch alone (``_send_alone``), or a batch
        sent again whose merge its caller never saw answered, as the same request, so that the
        script merges it only if it never arrived. Remembered again if its answer is lost again."""
        self._sending(key)
        try:
            return await self._store.run(self._store._send_merge(request))
        except BaseException as exc:
            if not _refused(exc):
                self._remember(key, request, [encoded])
            raise

    def _sending(self, key: str) -> None:
        """Count a merge request going out into ``key`` (remembered batches expire by it)."""
        self.requests_sent += 1
        memory = self._remembered.get(key)
        if memory is not None:
            memory.merges += 1

    def _remember(self, key: str, request: RunScript, encodings: list[str]) -> None:
        """Note that the callers of these batches never saw ``request``'s answer."""
        if not encodings:
            return
        memory = self._remembered.get(key)
        if memory is None:
            memory = self._remembered[key] = _Memory()
        expires = _now() + REMEMBER_SECONDS
        for encoded in encodings:  # the deque's maxlen drops the oldest
            memory.entries.append(_Remembered(encoded, request, memory.merges, expires))

    def _recall(self, key: str, encoded: str) -> RunScript | None:
        """The oldest unexpired remembered merge that carried a batch with this summary,
        forgotten as it is handed out (each remembered batch is sent again once)."""
        memory = self._remembered.get(key)
        if memory is None:
            return None
        memory.expire()
        found = next((entry for entry in memory.entries if entry.encoded == encoded), None)
        if found is not None:
            memory.entries.remove(found)
        if not memory.entries:
            del self._remembered[key]
        return None if found is None else found.request

    def remembered(self, key: str) -> int:
        """How many batches are remembered for ``key`` now (expired ones not counted)."""
        memory = self._remembered.get(key)
        if memory is None:
            return 0
        memory.expire()
        return len(memory.entries)
