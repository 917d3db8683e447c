"""Coalesced merges for the asyncio store: concurrent merges into one env share a script call.

An asyncio environment scores many rollouts at once, so dozens of ``normalize`` calls into the
same env can be waiting on the same store together. Sending each as its own merge makes the
server run the script once per call, and one Redis core is the capacity of one env. Instead,
per env, at most one merge is in flight while any caller waits for it; batches that arrive
meanwhile form a group, and when the merge in flight returns, the group goes out as one summary
(Chan's formula makes the combination exact: ``RunningStats.combine``). Every member of a group
receives the reply of its group's merge. When every caller of the merge in flight has been
cancelled (a stuck connection, timeouts), the group behind it goes out at once and the
abandoned merge finishes in the background: more than one merge of the env is then in flight,
but only one that anybody waits for. Nobody waits longer than the merge already in flight: an
idle env sends a batch at once, from the caller's own task (so a lone caller pays what an
uncoalesced merge pays); only groups go out in a task of their own.

Exactly once holds for a group as for a single batch, because a group is one merge request with
one batch identity, built by the store's ``BatchLedger``, which remembers every named member
(``batch_id=``) with it: the store's retries resend that request, and a member that sends its
batch again under its name (after an error, or after being cancelled) gets that same request
again, sent alone, so the script counts it once. A name already waiting in the group forming
waits for that group to go out and is then sent as that retry. Unnamed members are new batches
every time, as everywhere (``_core/ledger.py``).

A caller's own errors stay its own: scores are validated before a batch joins a group. Errors
the server raises for the env (a corrupt hash, a key of another type) reach every member, each
its own copy of the exception (``_own_copy``). The coalescer does not look into replies: each
member's operation decodes the reply of the request that carried it.

The coalescer knows nothing of the store: it is given the ledger and ``send``, the store's way
to issue one request (with its retries), and is one per store, living in the store's loop.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared_rewardnorm._core.ledger import BatchLedger
from shared_rewardnorm._core.protocol import encode_stats
from shared_rewardnorm._core.requests import MergeBatch, RunScript
from shared_rewardnorm.stats import RunningStats

__all__ = ["MergeCoalescer"]


def _own_copy(error: BaseException) -> BaseException:
    """A copy of ``error`` for one member of a group, so that each caller's raise adds its
    traceback to its own exception rather than to one shared by every member. It keeps the
    message, attributes, cause, context and the traceback so far. An exception that cannot be
    rebuilt from its ``args`` (a library's own with a different constructor) is shared as is."""
    try:
        own = copy.copy(error)
    except Exception:  # any failure to rebuild it: share the original
        return error
    if type(own) is not type(error):
        return error
    own.__cause__, own.__context__ = error.__cause__, error.__context__
    own.__suppress_context__ = error.__suppress_context__
    return own.with_traceback(error.__traceback__)


@dataclass(eq=False)
class _Member:
    """One caller's batch in a group, and where its answer goes."""

    batch: MergeBatch
    answer: asyncio.Future[Any]
    sent: bool = False


@dataclass(eq=False)
class _Group:
    """Batches merged as one."""

    members: list[_Member] = field(default_factory=list)

    def named(self, batch_id: str) -> _Member | None:
        return next((member for member in self.members if member.batch.batch_id == batch_id), None)


@dataclass(eq=False)
class _Lane:
    """One env's state: the group whose merge is in flight, and the group forming behind it."""

    in_flight: _Group | None = None
    forming: _Group | None = None


class MergeCoalescer:
    """Runs an ``AsyncStatsStore``'s merges, combining concurrent ones per env (see the module
    docstring).

    Args:
        ledger: the store's batch ledger, which builds every merge request.
        send: issues one request on the store's client (with the store's retries) and returns
            its raw reply.
    """

    def __init__(self, ledger: BatchLedger, send: Callable[[RunScript], Awaitable[Any]]) -> None:
        self._ledger = ledger
        self._send = send
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Merge requests sent (groups, single batches and named batches sent again; the store's
        #: own retries of one request are not counted again): for benchmarks and monitoring.
        self.requests_sent = 0
        #: Merges asked of this coalescer (a caller sending a batch again counts again).
        self.calls = 0

    async def merge(self, batch: MergeBatch) -> Any:
        """Merge one non-empty, validated batch into its env, exactly once, and return the raw
        reply of the merge request that carried it."""
        self.calls += 1
        known = self._ledger.recall(batch)
        if known is not None:  # a named batch sent before: its request again, alone
            return await self._send_request(known)
        key = batch.key
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.in_flight is None:
            return await self._send_alone(batch, lane)
        if lane.forming is None:
            lane.forming = _Group()
        group = lane.forming
        twin = None if batch.batch_id is None else group.named(batch.batch_id)
        if twin is not None:  # the same name waits already: once that group is sent, retry it
            await asyncio.wait([twin.answer])
            self.calls -= 1  # counted once for this call
            return await self.merge(batch)
        member = _Member(batch, asyncio.get_running_loop().create_future())
        group.members.append(member)
        try:
            return await member.answer
        except asyncio.CancelledError:
            if not member.sent:  # not sent yet: leave the group
                if member in group.members:
                    group.members.remove(member)
            elif all(other.answer.done() for other in group.members):
                # Nobody waits for this merge any more (a stuck connection, timeouts): let the
                # next group go out now; this one finishes in the background.
                self._next(key, lane, group, cancelled=False)
            raise

    async def _send_alone(self, batch: MergeBatch, lane: _Lane) -> Any:
        """The env is idle: send this batch at once, from the caller's own task (no task or
        future of its own: a lone caller pays what an uncoalesced merge pays). Batches arriving
        meanwhile form the group that goes out when this returns, or when this caller is
        cancelled."""
        group = lane.in_flight = _Group()  # no members: nobody waits on an answer slot
        try:
            return await self._send_request(self._ledger.request_for_group(batch.key, [batch], batch.encoded))
        finally:
            self._next(batch.key, lane, group, cancelled=False)

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
        or mark the env idle. A cancelled send (the loop is shutting down) cancels the waiting
        group instead of starting it."""
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
            combined = RunningStats.combine(member.batch.stats for member in members)
        except ValueError:
            # The batches are valid alone but their combination is not finite (a combine of one
            # batch is that batch, so there are several): each goes out alone, and gets its own
            # answer or error.
            for member in members:
                if not member.answer.done():  # skip a caller cancelled meanwhile
                    await self._send_group(key, _Group([member]))
            return
        request = self._ledger.request_for_group(key, [member.batch for member in members], encode_stats(combined))
        for member in members:
            member.sent = True
        try:
            reply = await self._send_request(request)
        except BaseException as exc:
            self._answer(members, error=exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._answer(members, result=reply)

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

    async def _send_request(self, request: RunScript) -> Any:
        self.requests_sent += 1
        return await self._send(request)
