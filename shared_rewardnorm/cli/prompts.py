"""The prompt statistics' commands: ``prompts ENV`` (a summary, the hardest or easiest prompts),
``configure-prompts``, ``export-prompts``/``import-prompts`` and ``forget-prompts``.

Registered by ``commands.build_parser`` through ``add_prompt_commands``, which receives the
command factory and the store opener so that this module needs nothing else from there. Whole
sets are read with ``PromptStats.items`` (bounded reads: one bucket per command).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from shared_rewardnorm.prompts import PromptInfo, PromptStats
from shared_rewardnorm.sync import StatsStore

__all__ = ["add_prompt_commands", "summarize_prompts"]

#: The quantiles of the prompts' means the summary shows.
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


#: What each origin of a prompt set's identity says (docs/operations/persistence-and-failover.md).
ORIGIN_MEANINGS = {"update": "created by its first update", "configure": "created by configure-prompts",
                   "seed": "created by a seed", "replace": "restored", "forget": "forgotten; a tombstone",
                   "reseed": "lost and put back by its clients"}


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if q > 0 else ordered[0]


def summarize_prompts(items: list[tuple[str, PromptInfo]]) -> dict[str, Any]:
    """Prompts, visits, rewards and the distribution of the prompts' means."""
    means = sorted(info.mean for _, info in items)
    summary: dict[str, Any] = {"prompts": len(items), "visits": sum(info.visits for _, info in items),
                               "rewards": sum(info.count for _, info in items),
                               "seeded_only": sum(1 for _, info in items if info.visits == 0)}
    if means:
        summary["mean_quantiles"] = {f"{q:g}": _quantile(means, q) for q in QUANTILES}
        summary["mean_at_most_0"] = sum(1 for mean in means if mean <= 0)
        summary["mean_at_least_1"] = sum(1 for mean in means if mean >= 1)
    return summary


def add_prompt_commands(commands: Any, command: Callable[..., argparse.ArgumentParser],
                        open_store: Callable[[argparse.Namespace], AbstractContextManager[StatsStore]]) -> None:
    """Add the prompt commands to ``commands`` (``command`` adds one with the connection options)."""

    def cmd_prompts(args: argparse.Namespace) -> int:
        with open_store(args) as store:
            prompts = PromptStats(args.env, store)
            settings = prompts.settings()
            items = list(prompts.items())
        epoch, origin = prompts.identity or (None, None)
        summary = {"env": args.env, "decay": settings.decay, "buckets": settings.buckets, "epoch": epoch,
                   "origin": origin, **summarize_prompts(items)}
        ordered = sorted(items, key=lambda item: (item[1].mean, item[0]))
        if args.hardest:
            summary["hardest"] = [[prompt_id, info.to_list()] for prompt_id, info in ordered[:args.hardest]]
        if args.easiest:
            summary["easiest"] = [[prompt_id, info.to_list()] for prompt_id, info in ordered[::-1][:args.easiest]]
        if args.json:
            print(json.dumps(summary, indent=2, allow_nan=False))
            return 0
        print(f"{args.env}: {summary['prompts']} prompts, {summary['visits']} visits, {summary['rewards']} rewards "
              f"(decay {settings.decay:g}, {settings.buckets} buckets)")
        if epoch is not None:
            print(f"  identity  epoch {epoch} (origin {origin}: {ORIGIN_MEANINGS.get(str(origin), origin)})")
        if items:
            quantiles = "  ".join(f"{q}: {value:.4g}" for q, value in summary["mean_quantiles"].items())
            print(f"  means by quantile  {quantiles}")
            print(f"  mean <= 0: {summary['mean_at_most_0']}   mean >= 1: {summary['mean_at_least_1']}   "
                  f"seeded, never visited: {summary['seeded_only']}")
        for title in ("hardest", "easiest"):
            if summary.get(title):
                print(f"  {title}:")
                for prompt_id, (visits, count, weight, mean, m2) in summary[title]:
                    std = math.sqrt(m2 / weight) if weight > 0 else 0.0
                    print(f"    {prompt_id!r}: mean {mean:.4g}  std {std:.4g}  visits {visits}  rewards {count}  "
                          f"weight {weight:.4g}")
        return 0

    def cmd_configure_prompts(args: argparse.Namespace) -> int:
        with open_store(args) as store:
            prompts = PromptStats(args.env, store)
            changed = prompts.configure(decay=args.decay, buckets=args.buckets)
            settings = prompts.settings()
        print(f"{args.env}: prompt decay {settings.decay:g}, {settings.buckets} buckets"
              + ("" if changed else " (unchanged)"))
        return 0

    def cmd_export_prompts(args: argparse.Namespace) -> int:
        with open_store(args) as store:
            snapshot = PromptStats(args.env, store).export()
        text = json.dumps(snapshot, indent=1, allow_nan=False) + "\n"
        if args.file == "-":
            sys.stdout.write(text)
        else:
            Path(args.file).write_text(text, encoding="utf-8")
            print(f"exported {len(snapshot['prompts'])} prompts of {args.env!r} to {args.file}", file=sys.stderr)
        return 0

    def cmd_import_prompts(args: argparse.Namespace) -> int:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        snapshot = json.loads(text)
        env = args.env or (snapshot.get("env") if isinstance(snapshot, dict) else None)
        if not isinstance(env, str):
            raise ValueError("the snapshot names no env: pass --env")
        with open_store(args) as store:
            written = PromptStats(env, store).restore(snapshot)
        print(f"restored {written} prompts into {env!r}")
        return 0

    def cmd_forget_prompts(args: argparse.Namespace) -> int:
        if not args.yes:
            print(f"forget-prompts deletes the prompt statistics of {args.env} for every process; add --yes",
                  file=sys.stderr)
            return 2
        with open_store(args) as store:
            deleted = PromptStats(args.env, store).forget()
        print(f"{args.env}: prompt set deleted ({deleted} keys)")
        return 0

    def count(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
        return value

    show = command(commands, "prompts", cmd_prompts, "summarize an env's per-prompt statistics")
    show.add_argument("env", metavar="ENV")
    show.add_argument("--hardest", type=count, metavar="N", help="also list the N prompts of lowest mean")
    show.add_argument("--easiest", type=count, metavar="N", help="also list the N prompts of highest mean")
    show.add_argument("--json", action="store_true", help="machine-readable JSON (exact floats)")
    configure = command(commands, "configure-prompts", cmd_configure_prompts,
                        "set an env's per-visit prompt decay (and, while empty, its bucket count)")
    configure.add_argument("env", metavar="ENV")
    configure.add_argument("--decay", type=float, metavar="RHO", help="per-visit decay, 0 < RHO <= 1 (1: none)")
    configure.add_argument("--buckets", type=count, metavar="N", help="bucket count (only while the set is empty)")
    export = command(commands, "export-prompts", cmd_export_prompts, "write an env's prompt set as JSON")
    export.add_argument("env", metavar="ENV")
    export.add_argument("file", metavar="FILE", help="output file, or - for stdout")
    restore = command(commands, "import-prompts", cmd_import_prompts, "restore a prompt set from JSON")
    restore.add_argument("file", metavar="FILE", help="snapshot file, or - for stdin")
    restore.add_argument("--env", help="the env to restore into (default: the snapshot's)")
    forget = command(commands, "forget-prompts", cmd_forget_prompts, "delete an env's prompt set (needs --yes)")
    forget.add_argument("env", metavar="ENV")
    forget.add_argument("--yes", action="store_true", help="confirm: every process sharing it starts over")
