"""The I/O primitives that operations ask a store to perform.

Operations (``store_ops``, ``normalizer_ops``) are generators that ``yield`` these requests and
receive the raw replies; the sync store sends a request and passes back the reply, the asyncio
store awaits it. A ``ClientRequest`` knows how to issue itself on a client (the same redis-py
call returns a reply on a sync client and an awaitable on an asyncio one) and how to translate
a server error into a library exception, so neither is written twice. ``MergeBatch`` is the one
request that is not a command yet: a batch to merge, which the shell turns into the merge
script's call through the batch ledger (``ledger.py``), alone or, coalescing asyncio merges,
together with other batches; the operation receives the raw reply of the call that carried it.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis.exceptions import ResponseError

from shared_rewardnorm._redis.scripts import ClientScripts, function_library, translate_script_error
from shared_rewardnorm.errors import WrongTypeError
from shared_rewardnorm.stats import RunningStats

__all__ = [
    "ClientRequest",
    "Done",
    "LoadFunctions",
    "MergeBatch",
    "Once",
    "Operation",
    "ReadCommands",
    "ReadMany",
    "ReadStats",
    "Request",
    "RunScript",
    "ScanKeys",
    "advance",
]

T = TypeVar("T")


class _PassErrorsThrough:
    """Requests whose server errors need no translation."""

    __slots__ = ()

    def translate(self, error: ResponseError) -> Exception:
        return error


def _without_errors(replies: list[Any]) -> list[Any]:
    """A merge-and-WAIT pipeline's replies, after raising the script's error as the server sent
    it (``raise_on_error=True`` would reword it, "Command # 1 (...) of pipeline caused error:
    ...", which hides NOSCRIPT and "Function not found" from the fallback). An error of WAIT
    (say NOPERM) stays in the list: the merge ran, and the operation must know that."""
    if isinstance(replies[0], Exception):
        raise replies[0]
    return replies


async def _awaited_without_errors(replies: Any) -> list[Any]:
    return _without_errors(await replies)


@dataclass(frozen=True, slots=True)
class RunScript:
    """FCALL or EVALSHA one of our operations (see ``scripts.ClientScripts``). All keys share one hash
    tag, so the call stays in one cluster slot. Sending the same request twice is safe: a merge
    carries its batch identity."""

    operation: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    #: ``WAIT`` arguments (replicas, milliseconds) to send in the same pipeline, or None: the
    #: reply is then ``[script reply, replicas that acknowledged]`` (see ``durability.py``).
    wait: tuple[str, str] | None = None

    def issue(self, client: Any, scripts: ClientScripts) -> Any:
        if self.wait is None:
            return scripts.call(self.operation, self.keys, self.args)
        pipeline = client.pipeline(transaction=False)
        scripts.call(self.operation, self.keys, self.args, pipeline)
        pipeline.execute_command("WAIT", *self.wait)
        replies = pipeline.execute(raise_on_error=False)
        if hasattr(replies, "__await__"):
            return _awaited_without_errors(replies)
        return _without_errors(replies)

    def translate(self, error: ResponseError) -> Exception:
        return translate_script_error(error)


@dataclass(frozen=True, slots=True)
class ReadStats:
    """HGETALL one env's hash (read-only: works for a read-only ACL user). Not HMGET of the
    fields: a server answers a command of more than 10 words from a client that has not
    authenticated with a protocol error, where a forgotten password deserves "Authentication
    required"; and the hash is small."""

    key: str

    def issue(self, client: Any, scripts: ClientScripts) -> Any:
        return client.hgetall(self.key)

    def translate(self, error: ResponseError) -> Exception:
        if str(error).startswith("WRONGTYPE"):
            return WrongTypeError(f"{self.key}: holds a non-hash value, not a stats hash", key=self.key)
        return error


@dataclass(frozen=True, slots=True)
class ReadMany(_PassErrorsThrough):
    """HGETALL many keys in one pipeline: one round trip per server (a cluster pipeline groups
    the commands by node). The reply has one entry per key: the HGETALL reply, or the error."""

    keys: tuple[str, ...]

    def issue(self, client: Any, scripts: ClientScripts) -> Any:
        pipeline = client.pipeline(transaction=False)
        for key in self.keys:
            pipeline.hgetall(key)
        return pipeline.execute(raise_on_error=False)


async def _collect(iterator: Any) -> list[Any]:
    return [item async for item in iterator]


@dataclass(frozen=True, slots=True)
class ScanKeys(_PassErrorsThrough):
    """Every key matching a pattern, found with SCAN (never KEYS), on every master of a cluster
    (redis-py's cluster ``scan_iter`` walks each primary's cursor)."""

    pattern: str
    #: Only hashes (env statistics); ``False`` also finds keys of other types under an env's name
    #: (for ``survey``, which names them).
    hashes_only: bool = True

    def issue(self, client: Any, scripts: ClientScripts) -> Any:
        found = client.scan_iter(match=self.pattern, count=1000, _type="hash" if self.hashes_only else None)
        if hasattr(found, "__aiter__"):
            return _collect(found)
        return list(found)


@dataclass(frozen=True, slots=True)
class LoadFunctions(_PassErrorsThrough):
    """FUNCTION LOAD REPLACE the Function library (on every primary of a cluster): an
    administrator's step, so that trainers can run with FCALL and no right to load Lua."""

    def issue(self, client: Any, scripts: ClientScripts) -> Any:
        return client.function_load(function_library(), replace=True)


@dataclass(frozen=True, slots=True)
class ReadCommands(_PassErrorsThrough):
    """Read commands (each a tuple of words, e.g. ``("HMGET", key, field, ...)``) in one
    pipeline: one round trip per server. The reply has one entry per command, its reply or its
    error. For reads of other keys than stats hashes (the prompt statistics' buckets)."""

    commands: tuple[tuple[str, ...], ...]

    def issue(self, client: Any, scripts: ClientScripts) -> Any:
        pipeline = client.pipeline(transaction=False)
        for command in self.commands:
            pipeline.execute_command(*command)
        return pipeline.execute(raise_on_error=False)


@dataclass(frozen=True, slots=True)
class MergeBatch:
    """A validated, non-empty batch to merge into ``key`` exactly once: its summary, the summary
    encoded for the script, and the caller's name for it (``batch_id``, or ``None``). The
    shell answers with the raw reply of the merge request that carried it
    (``BatchLedger.request_for``, or a coalesced group's)."""

    key: str
    stats: RunningStats
    encoded: str
    batch_id: str | None = None


#: The requests a shell issues on its client as they are.
ClientRequest = RunScript | ReadStats | ReadMany | ReadCommands | ScanKeys | LoadFunctions


@dataclass(frozen=True, slots=True)
class Once:
    """Send ``request`` with one try, whatever the store's retry policy (a merge goes alone,
    never coalesced): the probe of a normalizer whose store is unavailable
    (``on_unavailable="local"``), which must answer within one connection attempt rather than
    wait out the policy's backoff."""

    request: ClientRequest | MergeBatch


Request = ClientRequest | MergeBatch | Once
#: An operation: yields requests, receives their replies, returns its result.
Operation = Generator[Request, Any, T]


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """What ``advance`` returns once the operation has finished: its result."""

    value: T


def advance(operation: Operation[T], reply: Any, error: BaseException | None) -> Request | Done[T]:
    """One step of driving an operation, as every driver does it (both shells' ``run`` and
    ``served.single_tries``): hand it the reply to its last request, or throw in the error that
    sending it raised (the operation may handle it, say a normalizer answering locally, or
    re-raise it); return its next request, or ``Done`` with its result."""
    try:
        return operation.send(reply) if error is None else operation.throw(error)
    except StopIteration as done:
        return Done(done.value)
