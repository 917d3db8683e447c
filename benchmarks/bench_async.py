#!/usr/bin/env python
"""asyncio client against the sync client: normalize calls/s from one process.

An environment in an asyncio trainer scores many rollouts concurrently and normalizes each
group as it finishes. The asyncio store coalesces the merges of concurrent calls into one env
(one script call carries every batch that arrived while the previous one was in flight); with
``coalesce=False`` it keeps one merge per call in flight on a pool of connections. The sync
store runs one call at a time. The goal: 64 coroutines normalizing batches of 16 into one env
reach >= 3x the sync store's calls/s with <= 0.25 script calls per normalize call. Both run in
the same process, interleaved in rounds (sync, async, sync, async, ...), against the same
server; the script prints a table and asserts nothing.

Usage::

    python benchmarks/bench_async.py [--url redis://127.0.0.1:6379/0] [--quick] [--markdown]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import redis

from shared_rewardnorm import AsyncSharedRewardNormalizer, AsyncStatsStore, SharedRewardNormalizer, StatsStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Printer, argument_parser, fmt_rate, machine_rows, make_batches, progress, scratch_namespace


def run_sync(url: str, ns: str, batches: list[list[float]]) -> float:
    """Calls/s of one sync normalizer, one call after another."""
    store = StatsStore(url, ns)
    norm = SharedRewardNormalizer("sync", store)
    norm.normalize(batches[0])
    started = time.perf_counter()
    for batch in batches:
        norm.normalize(batch)
    elapsed = time.perf_counter() - started
    store.client.close()
    return len(batches) / elapsed


async def run_async(url: str, ns: str, batches: list[list[float]], concurrency: int,
                    coalesce: bool = True) -> tuple[float, float]:
    """Calls/s of one asyncio normalizer with ``concurrency`` coroutines in flight, and the
    script calls it sent per normalize call."""
    store = AsyncStatsStore(url, ns, coalesce=coalesce)
    norm = AsyncSharedRewardNormalizer("async", store)
    await norm.normalize(batches[0])
    queue = iter(batches)

    async def worker() -> None:
        for batch in queue:
            await norm.normalize(batch)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await store.aclose()
    sent = store.coalescer.requests_sent - 1 if store.coalescer is not None else len(batches)
    return len(batches) / elapsed, sent / len(batches)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    args = parser.parse_args(argv)
    calls, rounds = (400, 2) if args.quick else (2000, 4)
    out = Printer(args.markdown)
    client = redis.Redis.from_url(args.url)
    batches = make_batches(16, calls, seed=3)
    with scratch_namespace(client) as ns:
        out.heading("Machine")
        out.table(["what", "value"], machine_rows(client, args.url))
        out.heading("asyncio store (many coroutines, one process) vs sync store, batch 16")
        results: dict[str, list[float]] = {"sync": []}
        per_call: dict[str, list[float]] = {"sync": [1.0]}
        levels = [(1, True), (8, True), (32, True), (64, True), (128, True), (1, False), (64, False)]

        def name(level: int, coalesce: bool) -> str:
            return f"async x{level}" + ("" if coalesce else ", coalesce=False")

        for level, coalesce in levels:
            results[name(level, coalesce)] = []
            per_call[name(level, coalesce)] = []
        for round_number in range(rounds):
            progress(f"round {round_number + 1}/{rounds}")
            results["sync"].append(run_sync(args.url, ns, batches))
            for level, coalesce in levels:
                rate, sent = asyncio.run(run_async(args.url, ns, batches, level, coalesce))
                results[name(level, coalesce)].append(rate)
                per_call[name(level, coalesce)].append(sent)
        rows = []
        for label, rates in results.items():
            ratios = [rate / sync for rate, sync in zip(rates, results["sync"])]
            rows.append([label, fmt_rate(statistics.median(rates)), f"{statistics.median(ratios):.2f}",
                         f"{statistics.median(per_call[label]):.3f}", " / ".join(fmt_rate(r) for r in rates)])
        out.table(["client", "calls/s (median of rounds)", "vs sync (median of per-round ratios)",
                   "script calls per normalize", "per round"], rows)
        ratio64 = statistics.median(r / s for r, s in zip(results["async x64"], results["sync"]))
        sent64 = statistics.median(per_call["async x64"])
        verdict = "met" if ratio64 >= 3 and sent64 <= 0.25 else "NOT met"
        out.note(f"goal: async x64 (coalesced) >= 3x sync with <= 0.25 script calls per normalize; measured "
                 f"{ratio64:.2f}x and {sent64:.3f} ({verdict})")
        counts = StatsStore(client, ns).get_many(["sync", "async"])
        expected = {"sync": rounds * (calls + 1) * 16, "async": rounds * len(levels) * (calls + 1) * 16}
        exact = all(counts[env].count == expected[env] for env in expected)
        out.note(f"{calls} calls per round and client, {rounds} rounds interleaved; async xN keeps N coroutines "
                 "in flight on one event loop (a pool of at most 64 connections); script calls counted by the "
                 "coalescer (the warm-up call excluded)")
        out.note(f"final counts {'exact' if exact else 'NOT exact'}: "
                 + ", ".join(f"{env} {counts[env].count} (expected {expected[env]})" for env in expected))
        out.note("uncoalesced, the asyncio client gains only by overlapping network waits; on loopback a call "
                 "is mostly CPU in this one Python process (and redis-server shares the cores). Coalesced, one "
                 "script call and one reply serve many calls, which cuts both the client's and the server's "
                 "work per call; with network latency the gap grows (bench_network.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
