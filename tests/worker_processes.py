"""Stopping spawned ``multiprocessing`` workers, for the multi-process tests and
``benchmarks/bench_cluster.py`` (stdlib only, no pytest)."""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence
from typing import Any


def stop_workers(workers: Sequence[Any], *queues: Any, timeout: float = 30.0) -> None:
    """Join ``workers`` (killing any still alive after ``timeout`` seconds), then close
    ``queues``. The queues are read meanwhile and what is left in them dropped: a child does
    not exit before the reports it queued are read."""
    deadline = time.monotonic() + timeout
    while any(process.is_alive() for process in workers) and time.monotonic() < deadline:
        if not queues:
            time.sleep(0.1)
        for reports in queues:
            try:
                reports.get(timeout=0.1)
            except queue.Empty:
                pass
    for process in workers:
        if process.is_alive():
            process.kill()
        process.join()
    for reports in queues:
        reports.close()
        reports.join_thread()
