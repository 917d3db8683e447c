#!/usr/bin/env python
"""Beyond loopback: normalize calls/s through a proxy that adds network latency.

Trainers reach Redis over a datacenter network. This kernel has no ``netem`` qdisc, so a small
proxy (``tests/support/delay_proxy.py``, in a process of its own so it does not share the clients' GIL)
holds every chunk for a set time in each direction (0.25 ms and 1 ms by default). Through it,
``normalize`` at batch 16 into one env, from 1 and from 8 processes, for:

- ours: the merge script, one EVALSHA per call (sync ``SharedRewardNormalizer``);
- WATCH/MULTI: a client-side optimistic transaction doing the same merge (WATCH, HMGET, then
  MULTI+HSET+EXEC), retried on conflicts;
- per-value script: one EVALSHA per reward doing a Welford update, as older Redis Lua libraries
  do (16 round trips per call);
- asyncio, coalesced: one ``AsyncSharedRewardNormalizer`` per process with 16 coroutines in
  flight (concurrent merges into the env share one script call);
- asyncio, not coalesced: the same with ``coalesce=False``.

Each cell runs for a fixed time in every participating process (started together); cells are
run in rounds, the methods shuffled in each round, so drift hits all alike; ratios are taken
within a round. Every cell's env is checked afterwards: its count must be exactly 16 x the calls
made. The script prints tables and asserts nothing.

Usage::

    python benchmarks/bench_network.py [--url redis://127.0.0.1:6379/0] [--quick] [--markdown]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repository root: the test helpers are the package tests.support
from tests.support.delay_proxy import DelayProxy  # noqa: E402
from tests.support.worker_processes import stop_workers  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_normalize import _watch_normalizer  # noqa: E402
from common import (  # noqa: E402
    Printer,
    argument_parser,
    fmt_rate,
    fmt_ratio,
    machine_rows,
    make_batches,
    nproc,
    progress,
    scratch_namespace,
)

from shared_rewardnorm import (  # noqa: E402
    AsyncSharedRewardNormalizer,
    AsyncStatsStore,
    RewardNormError,
    RunningStats,
    SharedRewardNormalizer,
    StatsStore,
)
from shared_rewardnorm._core.normalization import NormalizerSettings, normalize_values  # noqa: E402

BATCH = 16
COROUTINES = 16
METHODS = ("ours", "watch", "per-value", "async coalesced", "async uncoalesced")
LABELS = {
    "ours": "ours (merge script, sync)",
    "watch": "WATCH/MULTI merge",
    "per-value": "per-value script (EVALSHA per reward)",
    "async coalesced": f"asyncio x{COROUTINES}, coalesced",
    "async uncoalesced": f"asyncio x{COROUTINES}, not coalesced",
}

#: The per-value baseline: one Welford update per call, as Redis Lua libraries that keep a
#: running mean and variance do (HMGET, update, HSET, reply with the new statistics).
PER_VALUE_LUA = """
local x = tonumber(ARGV[1])
if x == nil or x ~= x or x == math.huge or x == -math.huge then
  return redis.error_reply('value must be a finite number')
end
local s = redis.call('HMGET', KEYS[1], 'count', 'mean', 'm2', 'min', 'max')
local n = tonumber(s[1]) or 0
local mean = tonumber(s[2]) or 0
local m2 = tonumber(s[3]) or 0
local lo = tonumber(s[4]) or x
local hi = tonumber(s[5]) or x
n = n + 1
local d = x - mean
mean = mean + d / n
m2 = m2 + d * (x - mean)
lo = math.min(lo, x)
hi = math.max(hi, x)
local out = {string.format('%d', n), string.format('%.17g', mean), string.format('%.17g', m2),
  string.format('%.17g', lo), string.format('%.17g', hi)}
redis.call('HSET', KEYS[1], 'count', out[1], 'mean', out[2], 'm2', out[3], 'min', out[4], 'max', out[5])
return out
"""


def _per_value_normalizer(client: redis.Redis, key: str) -> Callable[[list[float]], list[float]]:
    script = client.register_script(PER_VALUE_LUA)
    settings = NormalizerSettings.create("zscore", 5.0, 10, 1e-8)

    def normalize(values: list[float]) -> list[float]:
        reply = None
        for value in values:
            reply = script(keys=[key], args=[repr(value)])
        count, mean, m2, low, high = (float(x) for x in reply)
        return normalize_values(values, RunningStats(int(count), mean, m2, low, high), settings)

    return normalize


def _run_sync(run: Callable[[list[float]], Any], batches: list[list[float]], start: float,
              seconds: float) -> tuple[int, int]:
    """(calls that succeeded, calls refused with one of our errors) until the deadline."""
    while time.time() < start:
        time.sleep(0.001)
    calls = errors = 0
    deadline = start + seconds
    while time.time() < deadline:
        try:
            run(batches[(calls + errors) % len(batches)])
            calls += 1
        except RewardNormError:
            errors += 1
    return calls, errors


async def _run_async(url: str, ns: str, env: str, coalesce: bool, batches: list[list[float]], start: float,
                     seconds: float) -> tuple[int, int, int]:
    store = AsyncStatsStore(url, ns, coalesce=coalesce)
    norm = AsyncSharedRewardNormalizer(env, store)
    await store.merge(env + "-warm", RunningStats.from_values(batches[0]))  # script load, FCALL fallback
    calls = errors = 0
    deadline = start + seconds

    async def worker(offset: int) -> None:
        nonlocal calls, errors
        i = offset
        while time.time() < deadline:
            try:
                await norm.normalize(batches[i % len(batches)])
                calls += 1
            except RewardNormError:  # e.g. StaleBatchError: refused, nothing written
                errors += 1
            i += COROUTINES

    await asyncio.sleep(max(0.0, start - time.time()))
    await asyncio.gather(*(worker(i) for i in range(COROUTINES)))
    sent = store.coalescer.requests_sent if store.coalescer is not None else calls
    await store.aclose()
    return calls, sent, errors


def _worker(index: int, tasks: Any, results: Any) -> None:
    """A persistent worker process: runs the cells it is sent until it gets ``None``."""
    batches = make_batches(BATCH, 64, seed=20_000 + index)
    clients: dict[str, redis.Redis] = {}
    while True:
        task = tasks.get()
        if task is None:
            break
        method, url, ns, env, start, seconds = task
        client = clients.get(url)
        if client is None:
            client = clients[url] = redis.Redis.from_url(url)
        key = f"{ns}:{{{env}}}"
        sent = None
        errors = 0
        failure = ""
        try:
            if method == "ours":
                store = StatsStore(client, ns)
                store.merge(env + "-warm", RunningStats.from_values(batches[0]))
                calls, errors = _run_sync(SharedRewardNormalizer(env, store).normalize, batches, start, seconds)
            elif method == "watch":
                calls, errors = _run_sync(_watch_normalizer(client, key), batches, start, seconds)
            elif method == "per-value":
                run = _per_value_normalizer(client, key)
                run(batches[0][:1])  # loads the script (into a key of its own below)
                client.delete(key)
                calls, errors = _run_sync(run, batches, start, seconds)
            else:
                calls, sent, errors = asyncio.run(_run_async(url, ns, env, method == "async coalesced", batches,
                                                             start, seconds))
        except Exception as exc:  # report it rather than leave the main process waiting
            calls, failure = 0, f"{type(exc).__name__}: {exc}"[:200]
        results.put((index, calls, sent if sent is not None else calls, errors, failure))
    for client in clients.values():
        client.close()


def _serve_proxy(upstream_port: int, delay: float, ports: Any, stop: Any) -> None:
    with DelayProxy(upstream_port, delay) as proxy:
        ports.put(proxy.port)
        stop.wait()


def rtt_us(url: str, pings: int = 300) -> float:
    """Median PING round trip through ``url``, in microseconds."""
    client = redis.Redis.from_url(url)
    client.ping()
    times = []
    for _ in range(pings):
        t0 = time.perf_counter()
        client.ping()
        times.append(time.perf_counter() - t0)
    client.close()
    return 1e6 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--delays-ms", default="0.25,1", help="one-way delays in ms (default 0.25,1)")
    args = parser.parse_args(argv)
    delays = [float(d) / 1000 for d in args.delays_ms.split(",")]
    rounds, seconds = (1, 1.0) if args.quick else (3, 2.0)
    procs_levels = (1, 8)
    out = Printer(args.markdown)
    upstream = redis.connection.parse_url(args.url)
    upstream_port = upstream.get("port", 6379)
    context = multiprocessing.get_context("spawn")
    client = redis.Redis.from_url(args.url)
    with scratch_namespace(client) as ns:
        out.heading("Machine")
        out.table(["what", "value"], machine_rows(client, args.url))
        proxies: dict[float, tuple[str, Any, Any]] = {}
        stop = context.Event()
        ports = context.Queue()
        for delay in delays:
            process = context.Process(target=_serve_proxy, args=(upstream_port, delay, ports, stop), daemon=True)
            process.start()
            proxies[delay] = (f"redis://127.0.0.1:{ports.get(timeout=30)}/0", process, None)
        tasks = [context.Queue() for _ in range(max(procs_levels))]
        results = context.Queue()
        workers = [context.Process(target=_worker, args=(i, tasks[i], results), daemon=True)
                   for i in range(max(procs_levels))]
        for worker in workers:
            worker.start()
        cells: dict[tuple[float, int, str], list[dict[str, Any]]] = {}
        rng = random.Random(5)
        store = StatsStore(client, ns)
        try:
            rtt_rounds: dict[float, list[float]] = {delay: [] for delay in [0.0, *delays]}
            cell_number = 0
            for round_number in range(rounds):
                rtt_rounds[0.0].append(rtt_us(args.url))
                for delay in delays:
                    rtt_rounds[delay].append(rtt_us(proxies[delay][0]))
                for delay in delays:
                    for procs in procs_levels:
                        order = list(METHODS)
                        rng.shuffle(order)
                        progress(f"round {round_number + 1}/{rounds}, {delay * 1000:g} ms, {procs} processes")
                        for method in order:
                            cell_number += 1
                            env = f"net-{cell_number}"
                            start = time.time() + (3.0 if cell_number == 1 else 0.5)
                            for i in range(procs):
                                tasks[i].put((method, proxies[delay][0], ns, env, start, seconds))
                            done = [results.get(timeout=seconds + 300) for _ in range(procs)]
                            calls = sum(d[1] for d in done)
                            sent = sum(d[2] for d in done)
                            errors = sum(d[3] for d in done)
                            failures = [d[4] for d in done if d[4]]
                            if failures:
                                progress(f"  {method}: a worker failed: {failures[0]}")
                            if method == "watch" or method == "per-value":
                                raw = client.hget(f"{ns}:{{{env}}}", "count")
                                final = int(raw) if raw is not None else 0
                            else:
                                final = store.get(env).count
                            cells.setdefault((delay, procs, method), []).append(
                                {"rate": calls / seconds, "calls": calls, "sent": sent, "errors": errors,
                                 "failed": bool(failures), "exact": final == calls * BATCH})
        finally:
            for queue_ in tasks:
                queue_.put(None)
            stop_workers(workers, results)
            stop.set()
            for _url, process, _x in proxies.values():
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join()

        out.heading("Round trip through the proxy (PING, one client, median of 300 at the start of each round)")
        out.table(["one-way delay set", "PING round trip (us), median of rounds", "per round"],
                  [["none (direct)" if d == 0 else f"{d * 1000:g} ms", f"{statistics.median(r):.0f}",
                    " / ".join(f"{x:.0f}" for x in r)] for d, r in rtt_rounds.items()])
        for delay in delays:
            for procs in procs_levels:
                out.heading(f"{delay * 1000:g} ms each way, {procs} process{'es' if procs > 1 else ''}: "
                            f"normalize calls/s (batch {BATCH}, one env)")
                ours = [c["rate"] for c in cells[(delay, procs, "ours")]]
                rows = []
                for method in METHODS:
                    mine = cells[(delay, procs, method)]
                    rates = [c["rate"] for c in mine]
                    ratios = [m / o for m, o in zip(rates, ours)]
                    per_call = sum(c["sent"] for c in mine) / max(1, sum(c["calls"] for c in mine))
                    if method == "per-value":
                        per_call = BATCH
                    elif method == "watch":
                        per_call = float("nan")
                    errors = sum(c["errors"] for c in mine)
                    failed = sum(c["failed"] for c in mine)
                    rows.append([LABELS[method], fmt_rate(statistics.median(rates)),
                                 fmt_ratio(statistics.median(ratios)),
                                 "-" if per_call != per_call else f"{per_call:.2f}",
                                 f"{errors}" + (f" ({failed} cells failed)" if failed else ""),
                                 "exact" if all(c["exact"] for c in mine) else "NOT exact"])
                out.table(["method", "calls/s (median of rounds)", "vs ours sync (median of per-round ratios)",
                           "script calls per normalize", "calls refused", "final counts"], rows)
        out.note(f"{rounds} rounds x {seconds:g} s per cell, methods shuffled in each round; ratios within a round")
        out.note(f"asyncio rows: one event loop per process with {COROUTINES} coroutines; script calls per "
                 "normalize counted by the coalescer (uncoalesced: one per call)")
        out.note(f"this machine has {nproc()} cores shared by the client processes, the proxy process and "
                 "redis-server: at 8 processes the figures are CPU-bound as much as latency-bound, and the "
                 "proxy's threads add their own scheduling delay (see the measured round trips)")
        out.note("calls refused: our errors raised to the caller (nothing written; e.g. StaleBatchError when a "
                 "connection held up in the proxy delivers a batch 1024 or more behind its client's latest); "
                 "the final count must then equal 16 x the calls that succeeded")
        out.note("absolute calls/s are noisy on a shared machine; compare the ratios")
    return 0


if __name__ == "__main__":
    sys.exit(main())
