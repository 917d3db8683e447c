"""Running an operation of the core by hand, with canned replies instead of a server.

An operation (``shared_rewardnorm._core``) is a generator: it yields requests and receives their
raw replies. The shells send each request to Redis; ``Driver`` hands the operation the next
canned reply instead and records what it asked for, so a unit test checks both the requests an
operation makes and what it makes of the replies, with no server at all.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class Driver:
    """Sends ``replies`` in order to the requests of an operation and keeps the requests in
    ``requests``, also when the operation raises, so a test can check what was asked before the
    error. The replies say exactly how many requests the operation may make: asking for one
    more, or finishing with replies left, fails the test."""

    def __init__(self, replies: Iterable[Any]) -> None:
        self.replies = list(replies)
        self.requests: list[Any] = []

    def run(self, operation: Generator[Any, Any, T]) -> T:
        pending = iter(self.replies)
        reply: Any = None
        while True:
            try:
                request = operation.send(reply)
            except StopIteration as done:
                left = list(pending)
                assert not left, f"the operation finished with {len(left)} canned replies unused: {left!r}"
                return done.value
            self.requests.append(request)
            reply = next(pending, _NONE_LEFT)
            if reply is _NONE_LEFT:
                operation.close()
                raise AssertionError(f"request {len(self.requests)} is beyond the canned replies: {request!r}")


_NONE_LEFT = object()


def drive(operation: Generator[Any, Any, T], replies: Iterable[Any]) -> tuple[list[Any], T]:
    """Run ``operation`` against ``replies``: the requests it yielded, in order, and its result."""
    driver = Driver(replies)
    result = driver.run(operation)
    return driver.requests, result
