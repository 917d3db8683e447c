#!/usr/bin/env python
"""What a store outage costs a caller: the time of a ``normalize`` call while Redis is down, in
each ``on_unavailable`` mode, and the time to recover once it is back.

Starts a private ``redis-server`` (no persistence) on a free loopback port, warms a normalizer
of each mode up against it (the library's default ``RetryPolicy``), then SIGKILLs the server:

- ``raise``: the time until ``normalize`` raises ``StoreUnavailableError`` (the retry policy
  spent against a refused connection), over several calls;
- ``local``: the time of the first call (it meets the outage and waits out the same policy),
  then of every call during ``--outage`` seconds of calls 10 ms apart (most answer locally; about
  one a second is the breaker's single-try probe), sync and asyncio;
- recovery: the server is restarted (empty) and calls go on 10 ms apart; the time from the
  restart until a call is no longer degraded (its local samples merged, the lost env re-seeded).

The machine is noisy (2 cores shared): the tables give medians and maxima of what was measured.
Prints tables and asserts nothing.

Usage::

    python benchmarks/bench_outage.py [--quick] [--markdown]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repository root: the test helpers are the package tests.support
from tests.support.redis_servers import NO_PERSISTENCE, RedisServer  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from common import Printer, argument_parser, machine_rows, progress  # noqa: E402

from shared_rewardnorm import (  # noqa: E402
    AsyncSharedRewardNormalizer,
    SharedRewardNormalizer,
    StatsStore,
    StoreUnavailableError,
)

BATCH = [0.5, 1.0, -1.0, 2.0, 0.0, 1.5, -0.5, 3.0]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def timed_calls(norm: SharedRewardNormalizer, seconds: float) -> list[float]:
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        norm.normalize(BATCH)
        times.append(time.perf_counter() - start)
        time.sleep(0.01)
    return times


async def async_outage(url: str, namespace: str, seconds: float, server: RedisServer) -> tuple[float, list[float]]:
    norm = AsyncSharedRewardNormalizer("env-async", url, namespace=namespace, warmup=0, on_unavailable="local")
    for _ in range(20):
        await norm.normalize(BATCH)
    server.kill()
    start = time.perf_counter()
    await norm.normalize(BATCH)
    first = time.perf_counter() - start
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        await norm.normalize(BATCH)
        times.append(time.perf_counter() - start)
        await asyncio.sleep(0.01)
    server.restart()
    await norm.aclose()
    return first, times


def recovery(norm: SharedRewardNormalizer, server: RedisServer) -> float:
    """Seconds from the restart until a call comes back not degraded."""
    server.restart()
    restarted = time.perf_counter()
    while True:
        norm.normalize(BATCH)
        if not norm.degraded:
            return time.perf_counter() - restarted
        time.sleep(0.01)


def main() -> None:
    parser = argument_parser(__doc__, url=False)
    parser.add_argument("--outage", type=float, default=3.0, help="seconds of calls during each outage")
    args = parser.parse_args()
    rounds = 2 if args.quick else 5
    printer = Printer(args.markdown)
    namespace = "bench-outage"
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory), NO_PERSISTENCE) as server:
        client = redis.Redis(port=server.port)
        printer.heading("Machine")
        printer.table(["what", "value"], machine_rows(client, f"{server.url} (private server, no persistence)"))
        client.close()
        raising, firsts, locals_, recoveries = [], [], [], []
        for round_ in range(rounds):
            progress(f"round {round_ + 1}/{rounds}")
            strict = SharedRewardNormalizer("env-raise", StatsStore(server.url, namespace), warmup=0)
            local = SharedRewardNormalizer("env-local", StatsStore(server.url, namespace), warmup=0,
                                           on_unavailable="local")
            for _ in range(20):
                strict.normalize(BATCH)
                local.normalize(BATCH)
            server.kill()
            start = time.perf_counter()
            try:
                strict.normalize(BATCH)
            except StoreUnavailableError:
                raising.append(time.perf_counter() - start)
            start = time.perf_counter()
            local.normalize(BATCH)
            firsts.append(time.perf_counter() - start)
            locals_.extend(timed_calls(local, args.outage))
            recoveries.append(recovery(local, server))
            strict.store.close()
            local.store.close()
        progress("asyncio")
        async_first, async_times = asyncio.run(async_outage(server.url, namespace, args.outage, server))
        client = redis.Redis(port=server.port)
        client.delete(*client.keys(f"{namespace}*") or ["-"])
        client.close()

    def row(what: str, values: list[float]) -> list[str]:
        return [what, str(len(values)), ms(statistics.median(values)), ms(max(values))]

    printer.heading("A normalize call while the store is down (ms)")
    printer.table(["call", "calls", "median", "max"], [
        row('on_unavailable="raise": until StoreUnavailableError', raising),
        row('"local": the first call of an outage (waits out the retry policy)', firsts),
        row('"local": the calls after it (10 ms apart; ~1/s is a probe)', locals_),
        row('"local", asyncio: the first call', [async_first]),
        row('"local", asyncio: the calls after it', async_times),
    ])
    printer.heading("Recovery after the store returns (empty), sync, 10 ms between calls")
    printer.table(["restarts", "median s", "max s"],
                  [[str(len(recoveries)), f"{statistics.median(recoveries):.2f}", f"{max(recoveries):.2f}"]])
    printer.flush()


if __name__ == "__main__":
    main()
