#!/usr/bin/env python
"""Where the merge script's server time goes: microseconds per call from INFO commandstats.

One Redis core is the capacity of one env, so the server time of a merge is the scale limit of
the whole system. This script starts a private ``redis-server`` on a free loopback port
(``CONFIG RESETSTAT`` is server-global: on a shared server it would wipe other people's
figures and theirs would pollute ours), then, in interleaved rounds (each round runs every
variant once, in a shuffled order), for each variant: ``CONFIG RESETSTAT``, many pipelined
calls, and the ``usec`` Redis reports for EVALSHA (or FCALL) in ``INFO commandstats``. That is
time inside the server only: no network, no client.

The variants are built from the repository's ``lua/`` files through the library's own loader
(``shared_rewardnorm.scripts``), so the script measures whatever ``merge.lua`` and
``stats_lib.lua`` are current:

- a no-op ``EVALSHA`` (``return 0``): the floor every script call pays;
- the helpers only (``stats_lib.lua`` then ``return 0``): a script re-creates the helpers'
  closures on every call, a Function only once when its library loads;
- the helpers plus one step of the merge: parsing the stats argument, reading and parsing the
  stored hash, formatting and writing it (after parsing the argument), the raw HMGET, the raw
  GET and SET EX of a batch record;
- the real merge without a batch record (one key) and with one (two keys), as EVALSHA and as
  FCALL of the Function library.

Variants whose helper no longer exists (the helpers were renamed) are reported as n/a rather
than stopping the run. ``--script NAME=FILE[+FILE...]`` adds a candidate script (the files
concatenated, e.g. a scratch ``stats_lib.lua`` then a scratch ``merge.lua``), called exactly
like the merge with a record, to see what a rework saves before committing it;
``--function NAME=TOPFILE+FILE`` the same as a Function (TOPFILE, e.g. the helpers, at the
library's top level, built once at load).

Every figure is also given as a ratio to the no-op of the same round; absolute microseconds
move with the machine's load, the ratios much less. The script prints tables and asserts
nothing.

Usage::

    python benchmarks/bench_server_cost.py [--quick] [--markdown] [--script NAME=FILE[+FILE]]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from redis_servers import NO_PERSISTENCE, RedisServer  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from common import Printer, fmt_ratio, machine_rows, progress  # noqa: E402

from shared_rewardnorm.protocol import batch_record_key, encode_sequence, encode_stats  # noqa: E402
from shared_rewardnorm.scripts import function_library, function_name, helpers_source, script_source  # noqa: E402
from shared_rewardnorm.stats import RunningStats  # noqa: E402

#: The merge's arguments in the benchmark: a batch of 16 scores' summary, as normalize sends it.
BATCH = RunningStats.from_values([0.25 * i - 1.5 for i in range(16)])
RECORD_TTL = "86400"
KEY = "cost:{env}"


@dataclass
class Variant:
    """One script measured: its text, how it is called, and what it shows."""

    name: str
    what: str
    body: str | None  # Lua appended to the helpers; None: ``source`` is the whole script
    source: str = ""
    with_record: bool = False  # two keys and three arguments, as the merge with a record
    fcall: bool = False
    function: str = ""  # the Function to FCALL (default: the library's merge)
    library: str = ""  # a candidate's own Function library, loaded in prepare()
    sequence: int = 0  # the last batch number sent: each variant keeps its own record, no gaps
    usec: list[float] = field(default_factory=list)  # usec per call, one per round
    ratio: list[float] = field(default_factory=list)  # against the no-op of the same round
    error: str = ""

    @property
    def record(self) -> str:
        """This variant's own batch record, so no variant sees another's numbers as gaps."""
        return batch_record_key(KEY, f"bench-{self.name.replace(' ', '-')}")

    def script(self) -> str:
        return self.source if self.body is None else helpers_source() + "\n" + self.body


def variants(extra: list[tuple[str, str, str | None]]) -> list[Variant]:
    """The variants, from the current lua/ files. Partial ones name the helpers of
    ``stats_lib.lua``; a missing helper shows up as a compile or run error, reported as n/a."""
    parsed = "local s, err = parse_stats_arg(KEYS[1], ARGV[1], 1)\nif err then return err end\n"
    found = [
        Variant("no-op", "`return 0`, nothing else", None, source="return 0"),
        Variant("helpers only", "stats_lib.lua, then `return 0`", "return 0"),
        Variant("parse argument", "helpers + parse the stats argument", parsed + "return 0"),
        Variant("read stored", "helpers + HMGET and parse the stored hash",
                "local s, err = read_stats(KEYS[1])\nif err then return err end\nreturn 0"),
        Variant("raw HMGET", "helpers + HMGET of the stats fields, unparsed",
                "redis.call('HMGET', KEYS[1], unpack(STAT_FIELDS))\nreturn 0"),
        Variant("parse + write", "helpers + parse the argument, format and HSET it",
                parsed + "write_stats(KEYS[1], s)\nreturn 0"),
        Variant("parse + format", "helpers + parse the argument and format it, no HSET",
                parsed + "format_stats(s)\nreturn 0"),
        Variant("raw GET + SET EX", "helpers + GET and SET EX of the batch record, no parsing",
                "redis.call('GET', KEYS[2])\nredis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])\nreturn 0",
                with_record=True),
        Variant("merge, no record", "merge.lua with one key: no exactly-once record", None,
                source=script_source("merge")),
        Variant("merge", "merge.lua with its batch record (what normalize runs)", None,
                source=script_source("merge"), with_record=True),
        Variant("merge (FCALL)", "the same merge as a Function of the library", None,
                source=script_source("merge"), with_record=True, fcall=True),
    ]
    for name, text, top in extra:
        if top is None:
            found.append(Variant(name, "candidate (--script)", None, source=text, with_record=True))
        else:  # --function: the first file at the library's top level, the rest the function's body
            function = f"bench_candidate_{len(found)}"
            library = (f"#!lua name={function}\n{top}\nredis.register_function('{function}', "
                       f"function(KEYS, ARGV)\n{text}\nend)\n")
            found.append(Variant(name, "candidate (--function)", None, source=text, with_record=True, fcall=True,
                                 function=function, library=library))
    return found


class Runner:
    """Calls variants on the private server, pipelined, and reads their server time."""

    def __init__(self, client: redis.Redis, calls: int, pipeline_depth: int) -> None:
        self.client = client
        self.calls = calls
        self.depth = pipeline_depth
        self.encoded = encode_stats(BATCH)
        self.shas: dict[str, str] = {}

    def prepare(self, variant: Variant) -> None:
        """Load the script (or check the Function exists) and make one call, so a broken
        variant is found before the rounds (and reported as n/a)."""
        try:
            if variant.library:
                self.client.function_load(variant.library, replace=True)
            elif not variant.fcall:
                self.shas[variant.name] = self.client.script_load(variant.script())
            self.run(variant, 1)
        except redis.ResponseError as exc:
            variant.error = str(exc).splitlines()[0][:100]

    def _call(self, pipe: Any, variant: Variant) -> None:
        if variant.with_record:
            variant.sequence += 1
            keys, args = (KEY, variant.record), (self.encoded, encode_sequence(variant.sequence), RECORD_TTL)
        else:
            keys, args = (KEY,), (self.encoded,)
        if variant.fcall:
            pipe.fcall(variant.function or function_name("merge"), len(keys), *keys, *args)
        else:
            pipe.evalsha(self.shas[variant.name], len(keys), *keys, *args)

    def run(self, variant: Variant, calls: int) -> None:
        done = 0
        while done < calls:
            pipe = self.client.pipeline(transaction=False)
            for _ in range(min(self.depth, calls - done)):
                self._call(pipe, variant)
            pipe.execute()
            done += self.depth

    def measure(self, variant: Variant) -> float:
        """Server usec per call of ``calls`` pipelined calls of ``variant``."""
        self.client.config_resetstat()
        self.run(variant, self.calls)
        stats = self.client.info("commandstats")
        entry = stats["cmdstat_fcall" if variant.fcall else "cmdstat_evalsha"]
        if entry["calls"] != self.calls:
            raise RuntimeError(f"{variant.name}: expected {self.calls} calls, commandstats says {entry['calls']}")
        return entry["usec"] / entry["calls"]


def main_thread_cpu(client: redis.Redis) -> float:
    """Seconds of CPU the server's main thread has used (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def capacity(client: redis.Redis, runner: Runner, by_name: dict[str, Variant], rounds: int,
             calls: int) -> list[list[Any]]:
    """Server CPU per request when requests come one at a time (no pipelining, so each pays its
    own read, parse, reply and event-loop wakeup): INFO cpu of the main thread around ``calls``
    sequential calls, interleaved over ``rounds``. What one core can sustain follows."""
    measured: dict[str, list[float]] = {"PING": [], "no-op": [], "merge": []}
    one_at_a_time = Runner(client, calls, pipeline_depth=1)
    for _ in range(rounds):
        for name in measured:
            before = main_thread_cpu(client)
            if name == "PING":
                for _call in range(calls):
                    client.ping()
            else:
                one_at_a_time.shas = runner.shas
                one_at_a_time.run(by_name[name], calls)
            measured[name].append(1e6 * (main_thread_cpu(client) - before) / calls)
    rows = []
    for name, usec in measured.items():
        per_call = statistics.median(usec)
        rows.append([name, f"{per_call:.1f}", f"{1e6 / per_call:,.0f}" if per_call > 0 else "-"])
    return rows


def breakdown(by_name: dict[str, Variant]) -> list[list[Any]]:
    """Where the merge's time goes: differences between medians of the variants (each step's
    cost is what adding it to the script added)."""

    def med(name: str) -> float | None:
        variant = by_name.get(name)
        return statistics.median(variant.usec) if variant is not None and variant.usec else None

    steps: list[tuple[str, str | None, str, str]] = [
        ("script call (no-op EVALSHA)", None, "no-op", "the floor of any script call"),
        ("helpers' closures, per call", "no-op", "helpers only", "a Function pays this once, at load"),
        ("parse the stats argument", "helpers only", "parse argument", ""),
        ("HMGET + parse the stored hash", "helpers only", "read stored", ""),
        ("  of which the HMGET itself", "helpers only", "raw HMGET", ""),
        ("format + HSET", "parse argument", "parse + write", ""),
        ("  of which the formatting", "parse argument", "parse + format", "string.format %.17g x5"),
        ("batch record (GET, parse, SET EX, gaps)", "merge, no record", "merge", "exactly once"),
        ("  of which GET + SET EX themselves", "helpers only", "raw GET + SET EX", ""),
    ]
    rows = []
    accounted = 0.0
    for label, base, top, note in steps:
        high, low = med(top), (med(base) if base else 0.0)
        if high is None or low is None:
            rows.append([label, "n/a", "", note])
            continue
        cost = high - low
        if not label.startswith("  "):
            accounted += cost
        rows.append([label, f"{cost:.1f}", "", note])
    total = med("merge")
    if total is not None:
        rows.append(["the rest (Chan's update, checks, reply)", f"{total - accounted:.1f}", "",
                     "merge minus the steps above"])
        rows.append(["merge with record, total", f"{total:.1f}", "", ""])
        for row in rows:
            if row[1] not in ("n/a", ""):
                row[2] = f"{100 * float(row[1]) / total:.0f}%"
    return rows


def parse_extra(scripts: list[str], functions: list[str]) -> list[tuple[str, str, str | None]]:
    """``--script NAME=FILE[+FILE...]`` (one script, the files concatenated) and ``--function
    NAME=TOPFILE+FILE[+FILE...]`` (a Function library: the first file at its top level, built once
    when it loads, the others the function's body): (name, body, top level or None)."""
    extra: list[tuple[str, str, str | None]] = []
    for spec, is_function in [(spec, False) for spec in scripts] + [(spec, True) for spec in functions]:
        name, sep, files = spec.partition("=")
        paths = files.split("+")
        if not sep or not name or not files or (is_function and len(paths) < 2):
            option = "--function NAME=TOPFILE+FILE[+FILE...]" if is_function else "--script NAME=FILE[+FILE...]"
            raise SystemExit(f"{option} expected, got {spec!r}")
        texts = [Path(path).read_text(encoding="utf-8") for path in paths]
        if is_function:
            extra.append((name, "\n".join(texts[1:]), texts[0]))
        else:
            extra.append((name, "\n".join(texts), None))
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 9, quick 3)")
    parser.add_argument("--calls", type=int, help="pipelined calls per variant and round (default 20000, quick 3000)")
    parser.add_argument("--script", action="append", default=[], metavar="NAME=FILE[+FILE]",
                        help="also measure this candidate merge script (files concatenated)")
    parser.add_argument("--function", action="append", default=[], metavar="NAME=TOPFILE+FILE[+FILE]",
                        help="also measure this candidate as a Function (FCALL): TOPFILE at the library's top "
                             "level, the other files the function's body")
    parser.add_argument("--candidates-only", action="store_true",
                        help="with --script: measure only the no-op, the merge and the candidates (more rounds "
                             "in the same time)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 9)
    calls = args.calls or (3000 if args.quick else 20000)
    out = Printer(args.markdown)
    extra = parse_extra(args.script, args.function)
    with tempfile.TemporaryDirectory(prefix="bench-server-cost-") as tmp, RedisServer(Path(tmp), NO_PERSISTENCE) as server:
        client = redis.Redis(port=server.port)
        try:
            client.function_load(function_library(), replace=True)
            out.heading("Machine")
            out.table(["what", "value"], machine_rows(client, f"{server.url} (private server, no persistence)"))
            runner = Runner(client, calls, pipeline_depth=100)
            measured = variants(extra)
            if args.candidates_only:
                measured = [v for v in measured
                            if v.name in ("no-op", "merge", "merge (FCALL)") or v.what.startswith("candidate")]
            for variant in measured:
                runner.prepare(variant)
            live = [v for v in measured if not v.error]
            noop = live[0]
            rng = random.Random(9)
            for round_number in range(rounds):
                progress(f"round {round_number + 1}/{rounds}")
                order = live[:]
                rng.shuffle(order)
                round_usec = {v.name: runner.measure(v) for v in order}
                for v in live:
                    v.usec.append(round_usec[v.name])
                    v.ratio.append(round_usec[v.name] / round_usec[noop.name])
            out.heading("Server time per call (INFO commandstats, pipelined)")
            rows = []
            for v in measured:
                if v.error:
                    rows.append([v.name, "n/a", "n/a", "", f"{v.what} (error: {v.error})"])
                    continue
                ratios = sorted(v.ratio)
                rows.append([v.name, f"{statistics.median(v.usec):.1f}", f"{min(v.usec):.1f}",
                             fmt_ratio(statistics.median(ratios)), f"{fmt_ratio(ratios[0])}-{fmt_ratio(ratios[-1])}",
                             v.what])
            out.table(["variant", "usec/call (median)", "usec/call (best round)", "x no-op (median of rounds)",
                       "x no-op range", "what"], rows)
            out.heading("Where the merge's server time goes (differences of medians)")
            out.table(["step", "usec", "share", "note"], breakdown({v.name: v for v in live}))
            if any(v.name == "merge" for v in live):
                progress("capacity: server CPU per request, one at a time")
                out.heading("Server CPU per request, one request at a time (INFO cpu, main thread)")
                out.table(["request", "server CPU usec/request (median of rounds)", "requests/s one core sustains"],
                          capacity(client, runner, {v.name: v for v in live}, rounds=max(3, rounds // 2),
                                   calls=max(1000, calls // 4)))
                out.note("unpipelined, each request pays its own socket read, parsing, reply and event-loop wakeup; "
                         "many concurrent clients share wakeups, so a busy server spends somewhat less per request. "
                         "requests/s = 1e6 / CPU usec: what one Redis core could do if it did nothing else")
            out.note(f"{rounds} rounds x {calls} pipelined calls (100 per pipeline) per variant, variants shuffled "
                     "in each round; CONFIG RESETSTAT before each variant, on a private redis-server")
            out.note("the merge runs a batch of 16's summary into one env; every call a new batch number, so the "
                     "record is the usual few bytes with no gaps")
            out.note("absolute microseconds are noisy on a shared machine (other processes share the cores); "
                     "compare ratios to the no-op of the same round")
            client.delete(KEY, *(v.record for v in measured))
        finally:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
