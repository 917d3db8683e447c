"""What the adapters share for per-prompt statistics: the default prompt id and the outage rule.

The Atropos mixin and the TRL wrapper can record each group's raw scores with ``PromptStats``
under the id of the prompt they answer. Two things are the same in both, so they are here:

* ``hash_id(value)``: the id of a prompt no dataset column names, a digest of its ``repr`` (the
  same in every process and every run, unlike ``hash()``), 32 hex digits;
* ``OutageGate``: prompt statistics are an aid to training, never a reason to stop it. The
  adapters give their ``PromptStats`` their own ``on_unavailable`` (``"local"`` by default),
  so through an outage the prompt updates are kept and merged exactly once when the store
  answers, and reads answer from the records seen. What still fails for a store reason (with
  ``"raise"``, a corrupt record, a refused command) is logged (once per outage, not once per
  call) and skipped, and the calls of the next ``pause`` seconds are skipped without trying,
  so it costs at most one store timeout (the ``RetryPolicy``'s, ~5 s by default) per pause
  rather than one per group. What the gate skips is not replayed.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis

from shared_rewardnorm.errors import RewardNormError
from shared_rewardnorm.integrations.batch_ids import digest

__all__ = ["STORE_ERRORS", "OutageGate", "hash_id"]

#: What a prompt call may raise for a reason of the store's (unreachable, timed out, refused,
#: a corrupt record): logged and skipped. Bad input (``ValueError``/``TypeError`` that are not
#: store errors, such as an empty id) still raises: it is a bug of the caller's, not an outage.
STORE_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, RewardNormError, builtins.ConnectionError,
                                                 builtins.TimeoutError)

R = TypeVar("R")

#: Seconds without prompt calls after one failed.
DEFAULT_PAUSE = 30.0


def hash_id(value: Any) -> str:
    """A stable prompt id for ``value``: the 32-hex-digit BLAKE2b digest (128 bits) of
    ``repr(value)``. Equal for equal prompts in every process, so replicas share a prompt's
    statistics; a ``repr`` holding a memory address (``<object at 0x...>``) is not stable, and
    such items need an id of their own."""
    return digest(repr(value))


class OutageGate:
    """Decides whether to try a prompt call now, and logs outages once (thread-safe).

    ``call(work, fallback)`` / ``await acall(work, fallback)`` run one prompt call under the
    rule and return ``fallback`` when it was skipped or failed. Underneath: ``ready()`` before a
    call; ``failed(exc)`` when it raised one of ``STORE_ERRORS`` (a
    warning the first time, then silence until a call succeeds); ``succeeded()`` after one that
    did (an info line when an outage ends). ``clock`` is injectable for tests.
    """

    def __init__(self, what: str, logger: logging.Logger, *, pause: float = DEFAULT_PAUSE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(pause, bool) or not isinstance(pause, (int, float)) or not pause >= 0:
            raise ValueError(f"pause must be a number of seconds >= 0, got {pause!r}")
        self._what, self._logger, self._pause, self._clock = what, logger, float(pause), clock
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0
        self.skipped = 0  #: calls skipped or failed since the current outage began

    @property
    def down(self) -> bool:
        """Whether the latest prompt call failed (and none succeeded since)."""
        return self._down

    def ready(self) -> bool:
        """Whether to try a prompt call now (``False``: within ``pause`` of a failed one)."""
        with self._lock:
            if self._down and self._clock() < self._retry_at:
                self.skipped += 1
                return False
            return True

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            first = not self._down
            self._down, self._retry_at = True, self._clock() + self._pause
            self.skipped += 1
        if first:
            self._logger.warning("%s: the store failed (%s: %s); prompt statistics are skipped until it answers "
                                 "again (tried again every %g s)", self._what, type(exc).__name__, exc, self._pause)

    def succeeded(self) -> None:
        with self._lock:
            was_down, skipped = self._down, self.skipped
            self._down, self.skipped = False, 0
        if was_down:
            self._logger.info("%s: the store answers again; %d prompt call(s) were skipped", self._what, skipped)

    def call(self, work: Callable[[], R], fallback: R) -> R:
        """``work()``, or ``fallback`` when skipped (``ready()`` false) or when it raised one of
        ``STORE_ERRORS``; other exceptions propagate."""
        if not self.ready():
            return fallback
        try:
            result = work()
        except STORE_ERRORS as exc:
            self.failed(exc)
            return fallback
        self.succeeded()
        return result

    async def acall(self, work: Callable[[], Awaitable[R]], fallback: R) -> R:
        """``call`` for a coroutine function."""
        if not self.ready():
            return fallback
        try:
            result = await work()
        except STORE_ERRORS as exc:
            self.failed(exc)
            return fallback
        self.succeeded()
        return result
