#!/usr/bin/env python
"""What persistence and replication cost a merge: calls/s and server CPU per merge.

Starts private ``redis-server`` processes on free loopback ports in temp dirs, one per setting:
no persistence; AOF with ``appendfsync everysec``; AOF with ``appendfsync always``; no
persistence with one replica attached (what a Sentinel deployment adds per write: Sentinel
itself only pings, the replica is fed every write). In interleaved rounds, one sync
``StatsStore`` per server merges batches of 16 one at a time; the table gives calls/s and the
primary's main-thread CPU per merge (INFO cpu), each as a ratio to no persistence in the same
round. The temp dirs are on whatever disk holds ``$TMPDIR``: ``always`` pays its fsync, which
on a real server's disk costs what that disk costs. The script prints tables and asserts nothing.

Usage::

    python benchmarks/bench_persistence.py [--quick] [--markdown]
"""

from __future__ import annotations

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
from common import Printer, argument_parser, fmt_rate, fmt_ratio, machine_rows, main_thread_cpu, make_batches, progress  # noqa: E402

from shared_rewardnorm import StatsStore  # noqa: E402

SETTINGS = {
    "no persistence": NO_PERSISTENCE,
    "AOF, appendfsync everysec": ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
    "AOF, appendfsync always": ["--save", "", "--appendonly", "yes", "--appendfsync", "always"],
    "one replica attached": NO_PERSISTENCE,
}


def wait_for_replica(primary: redis.Redis, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while primary.info("replication").get("connected_slaves", 0) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not connect")
        time.sleep(0.1)
    while True:
        slave = primary.info("replication").get("slave0", {})
        if isinstance(slave, dict) and slave.get("state") == "online":
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not come online")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, url=False)
    args = parser.parse_args(argv)
    rounds, calls = (2, 500) if args.quick else (6, 3000)
    out = Printer(args.markdown)
    batches = make_batches(16, 64, seed=8)
    servers: list[RedisServer] = []
    clients: dict[str, redis.Redis] = {}
    with tempfile.TemporaryDirectory(prefix="bench-persistence-") as tmp:
        try:
            for index, (name, options) in enumerate(SETTINGS.items()):
                directory = Path(tmp) / f"s{index}"
                directory.mkdir()
                server = RedisServer(directory, options).start()
                servers.append(server)
                clients[name] = redis.Redis(port=server.port)
            replica_dir = Path(tmp) / "replica"
            replica_dir.mkdir()
            primary_port = servers[-1].port
            replica = RedisServer(replica_dir, [*NO_PERSISTENCE, "--replicaof", "127.0.0.1", str(primary_port)]).start()
            servers.append(replica)
            wait_for_replica(clients["one replica attached"])
            out.heading("Machine")
            out.table(["what", "value"], machine_rows(clients["no persistence"], "private servers, one per setting"))
            rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
            cpu: dict[str, list[float]] = {name: [] for name in SETTINGS}
            stores = {name: StatsStore(client, "bench") for name, client in clients.items()}
            for store in stores.values():
                store.update("env", batches[0])
            for round_number in range(rounds):
                progress(f"round {round_number + 1}/{rounds}")
                order = list(SETTINGS) if round_number % 2 == 0 else list(reversed(SETTINGS))
                for name in order:
                    store, client = stores[name], clients[name]
                    before = main_thread_cpu(client)
                    started = time.perf_counter()
                    for i in range(calls):
                        store.update("env", batches[i % len(batches)])
                    elapsed = time.perf_counter() - started
                    rates[name].append(calls / elapsed)
                    cpu[name].append(1e6 * (main_thread_cpu(client) - before) / calls)
            base_rate, base_cpu = rates["no persistence"], cpu["no persistence"]
            rows = []
            for name in SETTINGS:
                rate_ratio = statistics.median(r / b for r, b in zip(rates[name], base_rate))
                cpu_ratio = statistics.median(c / b for c, b in zip(cpu[name], base_cpu))
                rows.append([name, fmt_rate(statistics.median(rates[name])), fmt_ratio(rate_ratio),
                             f"{statistics.median(cpu[name]):.1f}", fmt_ratio(cpu_ratio)])
            out.heading("One client merging batches of 16 one at a time, per persistence setting")
            out.table(["setting", "merges/s (median)", "vs no persistence", "primary CPU usec/merge",
                       "CPU vs no persistence"], rows)
            expected = 1 + rounds * calls
            counts = {name: store.get("env").count for name, store in stores.items()}
            out.note(f"{rounds} rounds x {calls} merges per setting, order alternating; counts "
                     + ("exact" if all(c == expected * 16 for c in counts.values()) else f"NOT exact: {counts}"))
            out.note("AOF with everysec fsyncs in a background thread; always fsyncs before the reply; with a "
                     "replica the primary also writes every merge to the replication stream. The fsync cost is "
                     f"that of the disk under {tmp} on this machine")
        finally:
            for client in clients.values():
                client.close()
            for server in reversed(servers):
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
