"""What every benchmark script here shares: output tables, machine facts, batches, cleanup.

Plain helpers with no measuring of their own; each benchmark prints tables and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

import shared_rewardnorm

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def argument_parser(doc: str, *, url: bool = True, quick: str | None = "a short run") -> argparse.ArgumentParser:
    """The options every benchmark shares: ``--url`` of the Redis to use (where it uses the
    shared one rather than private servers), ``--quick`` (when it has a short run) and
    ``--markdown``. The description is the first paragraph of ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n", maxsplit=1)[0])
    if url:
        parser.add_argument("--url", default=DEFAULT_URL, help=f"Redis URL (default {DEFAULT_URL})")
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    return parser


class Printer:
    """Prints sections as plain aligned text or as markdown (for pasting into a README)."""

    def __init__(self, markdown: bool) -> None:
        self.markdown = markdown

    def heading(self, text: str) -> None:
        print()
        print(f"### {text}" if self.markdown else f"== {text} ==")
        print()

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
        if self.markdown:
            print("| " + " | ".join(cells[0]) + " |")
            print("|" + "|".join("---" for _ in header) + "|")
            for row in cells[1:]:
                print("| " + " | ".join(row) + " |")
        else:
            widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
            line = "  ".join("-" * w for w in widths)
            print("  ".join(c.ljust(w) for c, w in zip(cells[0], widths)))
            print(line)
            for row in cells[1:]:
                print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        print()

    def note(self, text: str) -> None:
        print(f"- {text}" if self.markdown else f"  note: {text}")

    def flush(self) -> None:
        sys.stdout.flush()


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}"


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_rows(client: Any, url: str) -> list[list[Any]]:
    """Rows describing the machine and the server, for the top of every benchmark's output."""
    info = client.info("server")
    try:
        import hiredis  # noqa: F401
        parser = "hiredis"
    except ImportError:
        parser = "pure Python"
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return [
        ["platform", platform.platform()],
        ["CPU", cpu_model()],
        ["nproc", nproc()],
        ["load average (1/5/15 min)", load],
        ["redis server", f"{info.get('redis_version', '?')} ({info.get('redis_mode', '?')}, "
                         f"{info.get('multiplexing_api', '?')})"],
        ["redis URL", url],
        ["python", f"{platform.python_implementation()} {platform.python_version()}"],
        ["redis-py", f"{redis.__version__} ({parser} parser)"],
        ["shared_rewardnorm", getattr(shared_rewardnorm, "__version__", "?")],
    ]


def main_thread_cpu(client: Any) -> float:
    """Seconds of CPU the server's main thread has used (user + system), from INFO cpu."""
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def make_batches(size: int, count: int, seed: int, loc: float = 0.0, scale: float = 1.0) -> list[list[float]]:
    """Plain lists of Python floats, as a trainer hands them over."""
    rng = random.Random(seed)
    return [[rng.gauss(loc, scale) for _ in range(size)] for _ in range(count)]


def drop_namespace(client: redis.Redis, ns: str) -> int:
    """Delete every key under ``ns:``; returns how many there were."""
    keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


@contextmanager
def scratch_namespace(client: redis.Redis, prefix: str = "bench") -> Iterator[str]:
    """A fresh random key namespace ``<prefix>-<12 hex digits>`` for one run. On the way out,
    an error included, its keys are deleted through ``client``, which is then closed, and the
    cleanup and the run's total time are reported on stderr."""
    ns = f"{prefix}-{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    try:
        yield ns
    finally:
        dropped = drop_namespace(client, ns)
        progress(f"deleted {dropped} keys under {ns}:*; total {time.perf_counter() - started:.0f} s")
        client.close()


