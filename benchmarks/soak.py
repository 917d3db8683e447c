#!/usr/bin/env python
"""Soak: many processes normalizing into several envs for a while, with replies being lost.

16 worker processes (by default) normalize batches into 4 envs for 60 s. Half of them talk to
Redis through a proxy that, during the middle third of the run, drops connections after
forwarding a merge and before its reply (the command ran; the client cannot tell), so their
stores retry and the merge script must recognize the batches it already merged. At the end the
stored statistics are compared with what the workers sent: counts must be exact and mean and
variance equal to the workers' own exact sums. Prints a table; asserts nothing, but says
plainly whether anything was lost, doubled, or raised.

Usage::

    python benchmarks/soak.py [--url redis://127.0.0.1:6379/0] [--seconds 60] [--processes 16]
"""

from __future__ import annotations

import math
import multiprocessing
import random
import sys
import time
from pathlib import Path
from typing import Any

import redis

from shared_rewardnorm import RetryPolicy, SharedRewardNormalizer, StatsStore

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # the repository root: the test helpers are the package tests.support
from common import Printer, argument_parser, fmt_rate, machine_rows, progress, scratch_namespace  # noqa: E402

from tests.support.drop_proxy import DropProxy  # noqa: E402

ENVS = ("gsm8k", "tool_use", "code", "math")


def worker(index: int, url: str, ns: str, seconds: float, results: Any) -> None:
    """Normalize random batches into random envs until the time is up; report what was sent."""
    rng = random.Random(index)
    # redis-py's own retry is left at its default: it re-sends too, and must not double count.
    store = StatsStore(url, ns, retry=RetryPolicy(attempts=20, base=0.005, cap=0.2))
    norms = {env: SharedRewardNormalizer(env, store, warmup=16) for env in ENVS}
    sent = {env: [0, [], []] for env in ENVS}  # count, per-batch sums, per-batch sums of squares
    calls = errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        env = rng.choice(ENVS)
        batch = [rng.gauss(ENVS.index(env) * 3.0, 1.0 + ENVS.index(env)) for _ in range(rng.randint(1, 32))]
        try:
            norms[env].normalize(batch)
        except Exception as exc:
            errors += 1
            print(f"worker {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        calls += 1
        record = sent[env]
        record[0] += len(batch)
        record[1].append(math.fsum(batch))
        record[2].append(math.fsum(v * v for v in batch))
    summary = {env: (c, math.fsum(s), math.fsum(q)) for env, (c, s, q) in sent.items()}
    results.put((index, calls, errors, store.retries, store.duplicates, summary))
    store.client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, quick=None)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the workers run (default 60)")
    parser.add_argument("--processes", type=int, default=16, help="worker processes (default 16)")
    parser.add_argument("--drop-rate", type=float, default=0.02,
                        help="share of merges whose reply the proxy drops in the middle third (default 0.02)")
    args = parser.parse_args(argv)
    out = Printer(args.markdown)
    client = redis.Redis.from_url(args.url)
    port = redis.connection.parse_url(args.url).get("port", 6379)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with scratch_namespace(client, "soak") as ns:
        out.heading("Machine")
        out.table(["what", "value"], machine_rows(client, args.url))
        with DropProxy(port, drop_rate=0.0, seed=1) as proxy:
            processes = []
            for index in range(args.processes):
                url = proxy.url if index % 2 == 0 else args.url
                processes.append(context.Process(target=worker, args=(index, url, ns, args.seconds, results)))
            started = time.monotonic()
            for process in processes:
                process.start()
            third = args.seconds / 3
            time.sleep(third)
            progress(f"{time.monotonic() - started:.0f} s: the proxy starts dropping replies")
            proxy.drop_rate = args.drop_rate
            time.sleep(third)
            proxy.drop_rate = 0.0
            progress(f"{time.monotonic() - started:.0f} s: the proxy stops dropping replies")
            reports = [results.get(timeout=args.seconds + 120) for _ in processes]
            for process in processes:
                process.join(30)
            elapsed = time.monotonic() - started
            drops = proxy.drops
        calls = sum(r[1] for r in reports)
        errors = sum(r[2] for r in reports)
        retries = sum(r[3] for r in reports)
        duplicates = sum(r[4] for r in reports)
        out.heading(f"Soak: {args.processes} processes, {len(ENVS)} envs, {args.seconds:.0f} s")
        out.table(["what", "value"], [
            ["normalize calls", f"{calls:,}"],
            ["calls/s (all processes)", fmt_rate(calls / elapsed)],
            ["replies dropped by the proxy", f"{drops:,}"],
            ["retries by the stores", f"{retries:,}"],
            ["batches recognized as already merged", f"{duplicates:,}"],
            ["errors raised to the caller", f"{errors:,}"],
        ])
        stored = StatsStore(client, ns).get_many(ENVS)
        rows = []
        exact = errors == 0
        for env in ENVS:
            count = sum(r[5][env][0] for r in reports)
            total = math.fsum(r[5][env][1] for r in reports)
            squares = math.fsum(r[5][env][2] for r in reports)
            mean = total / count
            variance = squares / count - mean * mean
            got = stored[env]
            mean_error = abs(got.mean - mean) / max(abs(mean), 1e-300)
            variance_error = abs(got.variance - variance) / variance
            ok = got.count == count and mean_error < 1e-9 and variance_error < 1e-6
            exact = exact and ok
            rows.append([env, f"{count:,}", f"{got.count:,}", f"{mean_error:.1e}", f"{variance_error:.1e}",
                         "yes" if ok else "NO"])
        out.table(["env", "values sent", "values stored", "mean rel. error", "variance rel. error", "exact"], rows)
        out.note("every dropped reply is a merge that ran: its retry finds the batch merged; when a retry's "
                 "reply is dropped too, only the reply that finally arrives reports it, so the duplicates "
                 "seen can be fewer than the drops")
        out.note("sent statistics come from each worker's own math.fsum sums (variance as E[x^2] - mean^2, "
                 "good to about 1e-9 at these scales, hence the looser bound on it)")
        out.note("RESULT: " + ("nothing lost, nothing counted twice, no errors" if exact
                               else "MISMATCH or errors: see the tables above"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
