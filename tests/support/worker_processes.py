"""Running and stopping spawned ``multiprocessing`` workers, for the multi-process tests and
``benchmarks/bench_cluster.py`` (stdlib only, no pytest)."""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import time
from collections.abc import Callable, Sequence
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
            with contextlib.suppress(queue.Empty):
                reports.get(timeout=0.1)
    for process in workers:
        if process.is_alive():
            process.kill()
        process.join()
    for reports in queues:
        reports.close()
        reports.join_thread()


def run_workers(target: Callable[..., Any], count: int, *args: Any,
                timeout: float = 120.0) -> tuple[list[int | None], list[Any]]:
    """Run ``target(*args, worker, start, failures)`` in ``count`` spawned processes (``worker``
    0..count-1), released together by the ``start`` event once all have started, and wait up to
    ``timeout`` seconds for them. Returns their exit codes and what they put on ``failures``
    (a queue for reports the parent should fail on)."""
    context = multiprocessing.get_context("spawn")
    start, failures = context.Event(), context.Queue()
    workers = [context.Process(target=target, args=(*args, worker, start, failures)) for worker in range(count)]
    for process in workers:
        process.start()
    start.set()
    for process in workers:
        process.join(timeout)
    reported = []
    while not failures.empty():
        reported.append(failures.get())
    stop_workers(workers, failures)
    return [process.exitcode for process in workers], reported
