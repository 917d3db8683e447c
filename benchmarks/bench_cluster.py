#!/usr/bin/env python
"""Benchmark: ``normalize`` throughput on a 1-master vs a 3-master Redis Cluster.

Both clusters are started by this script (``tests/support/redis_cluster.py``: private ``redis-server``
processes on loopback ports, in temp dirs, torn down at the end). In every round, 4 worker
processes (spawned afresh, warmed up before the clock starts) cycle over 100 envs, normalizing
a batch of 16 rewards per call through ``StatsStore(url, cluster=True)`` and one
``SharedRewardNormalizer`` per env, for a fixed time; the aggregate calls/s is the sum of the
workers' rates. Rounds are interleaved 1, 3, 3, 1, 1, 3, ... so slow drift of a shared machine
hits both sides alike, and the ratio is taken per pair of neighbouring rounds.

On one small machine the masters share the CPU with the clients, so this measures the overhead
of distributing the keys (more connections, more processes, a pipeline split per node), not the
scaling of a real deployment with one machine per master. The script asserts nothing.

Usage::

    python benchmarks/bench_cluster.py [--quick] [--workers 4] [--envs 100] [--batch 16]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import queue
import random
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repository root: the test helpers are the package tests.support

from tests.support.redis_cluster import RedisCluster, cluster_tools_missing  # noqa: E402
from tests.support.worker_processes import stop_workers  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from common import Printer, cpu_model, nproc, progress  # noqa: E402

import shared_rewardnorm  # noqa: E402
from shared_rewardnorm import SharedRewardNormalizer, StatsStore  # noqa: E402


@dataclass(frozen=True)
class Plan:
    workers: int
    envs: int
    batch: int
    seconds: float
    pairs: int  # each pair is one 1-master round and one 3-master round


# --------------------------------------------------------------------------------------------
# Machine info and output
# --------------------------------------------------------------------------------------------


def redis_server_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return out.replace("Redis server ", "")


def table(header: list[str], rows: list[list[Any]]) -> None:
    Printer(markdown=False).table(header, rows)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0 where /proc is unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


def store_kwargs() -> dict[str, Any]:
    """Pin the EVALSHA path (no Function library is loaded on these clusters, so auto mode would
    try FCALL once per store, then fall back to EVALSHA)."""
    return {"functions": False}


def env_names(count: int) -> list[str]:
    return [f"env-{i:03d}" for i in range(count)]


def worker(url: str, namespace: str, index: int, plan: Plan, ready: Any, start: Any, results: Any) -> None:
    """Warm up (one call per env), wait for the start signal, then cycle over the envs for
    ``plan.seconds``; report (calls, seconds, cpu seconds, warm-up calls)."""
    store = StatsStore(url, namespace, cluster=True, **store_kwargs())
    try:
        rng = random.Random(1000 + index)
        batches = [[rng.gauss(0.0, 1.0) for _ in range(plan.batch)] for _ in range(64)]
        norms = [SharedRewardNormalizer(env, store, warmup=0) for env in env_names(plan.envs)]
        for norm in norms:
            norm.normalize(batches[0])
        ready.put(index)
        start.wait(120)
        calls = 0
        step = index * 17  # each worker starts at another env
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        deadline = t0 + plan.seconds
        now = t0
        while now < deadline:
            for _ in range(20):
                norms[(step + calls) % len(norms)].normalize(batches[calls % len(batches)])
                calls += 1
            now = time.perf_counter()
        results.put((index, calls, now - t0, time.process_time() - cpu0, len(norms), None))
    except BaseException:
        results.put((index, 0, 0.0, 0.0, 0, traceback.format_exc()))
    finally:
        store.client.close()


@dataclass
class Round:
    masters: int
    calls_per_s: float
    calls: int
    server_cpu: float  # CPU seconds of all redis-servers per wall second (1.0 = one core)
    client_cpu: float  # the same for the workers
    check: str

    @property
    def calls_per_cpu_second(self) -> float:
        """Calls per CPU second of our own processes (servers + clients): less sensitive than
        calls/s to other tenants taking CPU away on a shared machine."""
        used = self.server_cpu + self.client_cpu
        return self.calls_per_s / used if used else float("nan")


def run_round(cluster: RedisCluster, plan: Plan) -> Round:
    namespace = f"bench-{uuid.uuid4().hex[:10]}"
    context = multiprocessing.get_context("spawn")
    ready, results, start = context.Queue(), context.Queue(), context.Event()
    procs = [context.Process(target=worker, args=(cluster.url, namespace, i, plan, ready, start, results))
             for i in range(plan.workers)]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        pids = [node.process.pid for node in cluster.nodes if node.process is not None]
        server0 = sum(process_cpu_seconds(pid) for pid in pids)
        wall0 = time.perf_counter()
        start.set()
        reports = [results.get(timeout=plan.seconds + 120) for _ in procs]
        wall = time.perf_counter() - wall0
        server_cpu = (sum(process_cpu_seconds(pid) for pid in pids) - server0) / wall
    except queue.Empty:
        raise RuntimeError("a worker did not report in time") from None
    finally:
        stop_workers(procs, ready, results)
    errors = [r[5] for r in reports if r[5]]
    if errors:
        raise RuntimeError("worker failed:\n" + "\n".join(errors))
    calls = sum(r[1] for r in reports)
    rate = sum(r[1] / r[2] for r in reports)
    client_cpu = sum(r[3] for r in reports) / max(r[2] for r in reports)
    # Sanity check (printed, not asserted): every sample of every call was merged exactly once.
    expected = (calls + sum(r[4] for r in reports)) * plan.batch
    reader = StatsStore(cluster.url, namespace, cluster=True, **store_kwargs())
    try:
        merged = reader.aggregate().count
        per_master: dict[int, int] = {}
        for env in env_names(plan.envs):
            port = reader.client.get_node_from_key(reader.key(env)).port
            per_master[port] = per_master.get(port, 0) + 1
    finally:
        reader.client.close()
    check = "ok" if merged == expected else f"MISMATCH {merged} != {expected}"
    check += " (envs per master " + "/".join(str(n) for _, n in sorted(per_master.items())) + ")"
    return Round(len(cluster.nodes), rate, calls, server_cpu, client_cpu, check)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 pairs of 1.5 s rounds (default: 3 pairs of 5 s)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--envs", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    plan = Plan(workers=args.workers, envs=args.envs, batch=args.batch,
                seconds=1.5 if args.quick else 5.0, pairs=2 if args.quick else 3)

    reason = cluster_tools_missing()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    sys.stdout.reconfigure(line_buffering=True)  # keep the table in step with the progress lines
    print("== Machine ==")
    print()
    table(["item", "value"], [
        ["CPU", cpu_model()],
        ["nproc", nproc()],
        ["load average", " ".join(f"{x:.2f}" for x in os.getloadavg())],
        ["platform", platform.platform()],
        ["python", f"{platform.python_implementation()} {platform.python_version()}"],
        ["redis-server", redis_server_version()],
        ["redis-py", redis.__version__],
        ["shared_rewardnorm", getattr(shared_rewardnorm, "__version__", "?")],
    ])
    print(f"== normalize calls/s: {plan.workers} worker processes x {plan.envs} envs, batch {plan.batch}, "
          f"{plan.seconds:g} s per round ==")
    print()

    progress("starting a 1-master and a 3-master cluster")
    with RedisCluster(masters=1) as one, RedisCluster(masters=3) as three:
        clusters = {1: one, 3: three}
        order = []
        for pair in range(plan.pairs):
            order.extend([1, 3] if pair % 2 == 0 else [3, 1])
        rounds: list[Round] = []
        for number, masters in enumerate(order, 1):
            progress(f"round {number}/{len(order)}: {masters}-master cluster")
            rounds.append(run_round(clusters[masters], plan))

    rows = [[i, f"{r.masters} master{'s' if r.masters > 1 else ''}", f"{r.calls_per_s:,.0f}", f"{r.calls:,}",
             f"{r.server_cpu:.2f}", f"{r.client_cpu:.2f}", f"{r.calls_per_cpu_second:,.0f}", r.check]
            for i, r in enumerate(rounds, 1)]
    table(["round", "cluster", "calls/s", "calls", "redis CPU (cores)", "client CPU (cores)",
           "calls per CPU-s", "merged-count check"], rows)

    one_rates = [r.calls_per_s for r in rounds if r.masters == 1]
    three_rates = [r.calls_per_s for r in rounds if r.masters == 3]
    one_eff = [r.calls_per_cpu_second for r in rounds if r.masters == 1]
    three_eff = [r.calls_per_cpu_second for r in rounds if r.masters == 3]

    def pair_ratios(metric: str) -> str:
        ratios = []
        for i in range(0, len(rounds) - 1, 2):
            one, three = (rounds[i], rounds[i + 1]) if rounds[i].masters == 1 else (rounds[i + 1], rounds[i])
            ratios.append(getattr(three, metric) / getattr(one, metric))
        return " ".join(f"{x:.2f}" for x in ratios)

    table(["", "1 master", "3 masters", "3 / 1 (medians)", "3 / 1 per pair of rounds"], [
        ["calls/s", f"{statistics.median(one_rates):,.0f}", f"{statistics.median(three_rates):,.0f}",
         f"{statistics.median(three_rates) / statistics.median(one_rates):.2f}", pair_ratios("calls_per_s")],
        ["calls per CPU-s", f"{statistics.median(one_eff):,.0f}", f"{statistics.median(three_eff):,.0f}",
         f"{statistics.median(three_eff) / statistics.median(one_eff):.2f}", pair_ratios("calls_per_cpu_second")],
    ])
    print(f"  note: on one {nproc()}-core machine the masters share the CPU with the {plan.workers} client "
          "processes (and with anything else running here: see the load average above and the CPU "
          "columns), so this measures the overhead of distributing the keys over more server "
          "processes, not the scaling of a real deployment where each master has its own machine.")
    print("  note: 'calls per CPU-s' divides calls/s by the CPU our own processes used (redis-servers + "
          "clients), which discounts CPU taken by other tenants of a shared machine.")
    print("  note: every call is one EVALSHA routed by the env's hash tag; the merged-count check reads "
          "the aggregate back and compares it with the samples sent.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
