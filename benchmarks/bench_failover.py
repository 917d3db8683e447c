#!/usr/bin/env python
"""Failover figures: what a Sentinel failover does to merges, with and without ``replicas=1``.

Each run (``tests/support/failover_scenario.py``) starts a private primary, one replica whose
replication stream a proxy delays by ``--lag`` seconds (the lag of a loaded network: it is what
makes an asynchronous failover lose acknowledged writes), and three Sentinels; 3 worker
processes merge one batch at a time through the ``redis+sentinel://`` URL, each into an env of
its own, retrying a batch until its call returns; the primary is SIGKILLed, the Sentinels
promote the replica, the old server comes back as a replica. Runs alternate between
``replicas=0`` and ``replicas=1``. The script asserts nothing; it prints one line per run and
the totals.

Usage::

    python benchmarks/bench_failover.py [--runs 3] [--lag 0.2] [--workers 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repository root: the test helpers are the package tests.support

from tests.support.failover_scenario import FailoverFigures, run_failover  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per setting (default 3)")
    parser.add_argument("--lag", type=float, default=0.2, help="replication lag in seconds (default 0.2)")
    parser.add_argument("--workers", type=int, default=3, help="merging processes (default 3)")
    args = parser.parse_args()
    totals: dict[int, list[FailoverFigures]] = {0: [], 1: []}
    for run in range(args.runs):
        for replicas in (0, 1):
            with tempfile.TemporaryDirectory() as directory:
                figures = run_failover(Path(directory), replicas=replicas, lag=args.lag, workers=args.workers)
            totals[replicas].append(figures)
            print(f"run {run + 1}: {figures.row()}", flush=True)
    print("\n| replicas= | runs | sent | acknowledged | counted | lost | doubled |")
    print("|---|---|---|---|---|---|---|")
    for replicas, runs in totals.items():
        print(f"| {replicas} | {len(runs)} | {sum(f.sent for f in runs)} | {sum(f.acknowledged for f in runs)} | "
              f"{sum(f.counted for f in runs)} | {sum(f.lost for f in runs)} | {sum(f.doubled for f in runs)} |")


if __name__ == "__main__":
    main()
