"""Retrying transient failures, and why that is safe here.

A connection error or timeout leaves a caller not knowing whether its merge reached Redis. Every
merge carries a batch identity (client id and sequence number) that the merge script records
atomically, so sending the same request again never counts a batch twice: the store retries
transient failures by itself, with bounded, jittered exponential backoff ("full jitter": a
random delay up to the exponential bound, so many clients that failed together do not retry in
lockstep). Reads are idempotent, and a replace writes the same value again.
"""

from __future__ import annotations

import random
import ssl
from dataclasses import dataclass

from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    ConnectionError,
    ReadOnlyError,
    TimeoutError,
    TryAgainError,
)

__all__ = ["DEFAULT_RETRY", "TRANSIENT_ERRORS", "RetryPolicy", "worth_retrying"]

#: Failures that may be transient: the network, a timeout, a server still loading its data
#: (``BusyLoadingError`` is a ``ConnectionError``), a cluster mid-failover (CLUSTERDOWN,
#: TRYAGAIN: redis-py raises these as ``ResponseError``s, and the store retries them too), a
#: primary demoted by a failover (READONLY: the script refused its first write, nothing was
#: written; a Sentinel client reconnects to the new primary, a DNS name may move to it).
TRANSIENT_ERRORS = (ConnectionError, TimeoutError, ClusterDownError, TryAgainError, ReadOnlyError)


def worth_retrying(error: BaseException) -> bool:
    """Whether another try may succeed: a transient failure, but not a wrong password or a
    certificate the client refuses (redis-py raises both as ``ConnectionError``)."""
    if not isinstance(error, TRANSIENT_ERRORS) or isinstance(error, AuthenticationError):
        return False
    cause = error.__cause__ or error.__context__
    return not isinstance(cause, ssl.SSLCertVerificationError) and "CERTIFICATE_VERIFY_FAILED" not in str(error)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a request after a transient failure.

    Args:
        attempts: tries in all, the first included (1 means never retry).
        base: the bound of the first delay, in seconds; it doubles with every retry...
        cap: ...up to this many seconds.

    Bounds: retry ``k`` (from 0) waits a random time up to ``min(cap, base * 2**k)``, so a
    request gives up after at most ``attempts`` tries and ``sum(min(cap, base * 2**k) for k in
    range(attempts - 1))`` seconds of waiting, plus the time each try takes to fail (a refused
    connection fails at once; an unanswered one after the client's ``socket_connect_timeout``
    or ``socket_timeout``, which redis-py leaves unbounded unless set). The default (8 tries,
    0.05 s doubling to 2 s) waits at most 0.05 + 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 2.0 = 5.15 s,
    about 2.6 s on average: enough to ride out a restart or a Sentinel failover. When it is
    spent on a transient failure the store raises ``StoreUnavailableError``.
    """

    attempts: int = 8
    base: float = 0.05
    cap: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {self.attempts!r}")
        if not 0 <= self.base <= self.cap:
            raise ValueError(f"need 0 <= base <= cap, got base={self.base!r} cap={self.cap!r}")

    def delay(self, retry: int) -> float | None:
        """Seconds to wait before retry number ``retry`` (0-based), or None when out of tries."""
        if retry + 1 >= self.attempts:
            return None
        return random.uniform(0.0, min(self.cap, self.base * 2.0**retry))


DEFAULT_RETRY = RetryPolicy()
