"""What the command line prints: tables, JSON views, the demo's progress line and report.

Pure formatting of values the commands read, kept apart from the commands so each can be
tested alone (``format_table``, ``stats_table`` and ``stats_json`` take plain values).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from shared_rewardnorm._core.schema import STAT_FIELDS
from shared_rewardnorm._redis.connection import redact_url
from shared_rewardnorm.cli.demo import DemoObserver, DemoResult
from shared_rewardnorm.envinfo import EnvInfo
from shared_rewardnorm.stats import RunningStats
from shared_rewardnorm.sync import StatsStore

__all__ = [
    "ProgressLine",
    "aggregate_of",
    "demo_report",
    "format_age",
    "format_table",
    "redact",
    "render_stats",
    "stats_json",
    "stats_table",
]


def redact(url: str) -> str:
    """``url`` with its password hidden, so error messages and headers can be pasted safely."""
    return redact_url(url)


def _number(value: float) -> str:
    return f"{value:.6g}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], footer: Sequence[str] | None = None,
                 left: int = 1) -> str:
    """A plain-text table: the first ``left`` columns (names, descriptions) left-aligned, the
    numbers right-aligned, and an optional footer row (a total) under a rule."""
    lines = [list(header), *map(list, rows)] + ([list(footer)] if footer else [])
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]

    def render(line: Sequence[str]) -> str:
        cells = [cell.ljust(width) if column < left else cell.rjust(width)
                 for column, (cell, width) in enumerate(zip(line, widths, strict=True))]
        return "  ".join(cells).rstrip()

    text = [render(header), *(render(row) for row in rows)]
    if footer:
        text += ["-" * len(render(header)), render(footer)]
    return "\n".join(text)

def aggregate_of(found: Mapping[str, EnvInfo]) -> RunningStats:
    """The merge of the rows read, in the order ``StatsStore.aggregate`` uses. Merged locally
    rather than read again, so the total row always sums the rows printed above it."""
    return RunningStats.combine(found[env].stats for env in sorted(found))


def format_age(seconds: float | None) -> str:
    """Time since the last merge, short: ``42s``, ``7m``, ``3h``, ``2d``; ``-`` for never."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def stats_table(found: Mapping[str, EnvInfo], now: float | None = None) -> str:
    """The human-readable table of ``stats`` and ``watch``: the totals, the decayed ("recent")
    mean and std where a half-life is set, whether the env is frozen, the age of its last merge
    and the age and origin of its statistics' identity (merge, replace or reseed; by this
    machine's clock, ``now``)."""
    def row(name: str, stats: RunningStats, info: EnvInfo | None) -> list[str]:
        cells = [name, str(stats.count), *map(_number, (stats.mean, stats.std, stats.min, stats.max))]
        if info is None:
            return [*cells, "", "", "", "", ""]
        recent = ["-", "-"] if info.decayed is None else [_number(info.decayed.mean), _number(info.decayed.std)]
        created = "-" if info.epoch is None else f"{format_age(info.identity_age(now))} ({info.origin})"
        return [*cells, *recent, "yes" if info.frozen else "no", format_age(info.age(now)), created]

    rows = [row(env, found[env].stats, found[env]) for env in sorted(found)]
    return format_table(["env", "count", "mean", "std", "min", "max", "recent mean", "recent std", "frozen", "age",
                         "created"], rows, row("aggregate", aggregate_of(found), None))


def stats_json(namespace: str, found: Mapping[str, EnvInfo]) -> dict[str, Any]:
    """``stats --json``: every field of every env, exact (floats round-trip through JSON)."""
    def fields(stats: RunningStats) -> dict[str, Any]:
        return {**{name: getattr(stats, name) for name in STAT_FIELDS}, "std": stats.std}

    def env_fields(info: EnvInfo) -> dict[str, Any]:  # a snapshot entry, plus the stds
        entry = {**info.to_dict(), "std": info.stats.std, "epoch": info.epoch, "origin": info.origin}
        if info.decayed is not None:
            entry["decayed"]["std"] = info.decayed.std
        return entry

    return {"namespace": namespace, "envs": {env: env_fields(found[env]) for env in sorted(found)},
            "aggregate": fields(aggregate_of(found))}


def render_stats(store: StatsStore, found: Mapping[str, EnvInfo], problems: Sequence[str]) -> str:
    if found:
        return stats_table(found)
    return "" if problems else f"no statistics in namespace {store.namespace!r}"

class ProgressLine(DemoObserver):
    """Shows the running demo: one line rewritten ten times a second on a terminal, a line a
    second otherwise (a log should not get a thousand lines)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._period = 0.1 if self._tty else 1.0
        self._last: float | None = None

    def started(self, url: str, namespace: str, embedded: bool) -> None:
        where = f"embedded Redis-protocol server (fakeredis + Lua) at {url}" if embedded else redact(url)
        print(f"server: {where}; namespace {namespace!r}", file=self._stream, flush=True)

    def workers_ready(self, ready: int, total: int) -> None:
        # Spawning takes seconds (each worker starts Python and imports numpy): say so at once.
        if ready == 0:
            text = f"starting {total} worker processes..."
        elif self._tty or ready == total:
            text = f"worker processes ready: {ready}/{total}"
        else:
            return
        end = "\n" if ready == total or not self._tty else ""
        print(("\r" if self._tty else "") + text, end=end, file=self._stream, flush=True)

    def _due(self, done: int, total: int) -> bool:
        now = time.monotonic()
        if self._last is None:
            self._last = now
        if done < total and now - self._last < self._period:
            return False
        self._last = now
        return True

    def progress(self, done: int, total: int, elapsed: float) -> None:
        if not self._due(done, total):
            return
        rate = done / elapsed if elapsed > 0 else 0.0
        line = f"batches {done}/{total} ({100 * done // total}%), {rate:.0f} calls/s"
        end = "\n" if done == total or not self._tty else ""
        print(("\r" if self._tty else "") + line, end=end, file=self._stream, flush=True)


def demo_report(result: DemoResult) -> str:
    """The demo's table and verdicts."""
    rows = []
    for outcome in result.envs:
        raw, normalized = outcome.raw_mean_std, outcome.normalized_mean_std
        rows.append([outcome.env.name, outcome.env.rewards, str(outcome.count),
                     *map(_number, (*raw, *normalized))])
    table = format_table(["env", "rewards", "count", "raw mean", "raw std", "norm mean", "norm std"], rows, left=2)
    verdicts = [f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}" for check in result.checks]
    kept = f"\nkept the statistics in namespace {result.namespace!r}" if result.kept else ""
    return (f"{result.calls} normalize calls from {result.workers} processes in {result.elapsed:.2f} s "
            f"({result.calls_per_second:.0f} calls/s)\n\n{table}\n\n" + "\n".join(verdicts) + kept)
