#!/usr/bin/env python
"""Server time of one merge (with its batch record) against a no-op EVALSHA, from INFO commandstats.

One env's keys live in one slot, so one Redis core is the capacity of one env and the merge's
server time is the scale limit of the whole system. This script starts a private
``redis-server`` (free loopback port, temp dir, no persistence: ``CONFIG RESETSTAT`` is
server-global, so on a shared server it would wipe other people's figures and theirs would
pollute ours), then runs interleaved rounds. In each round every script runs ``--calls`` times,
pipelined, in a shuffled order, each after a ``CONFIG RESETSTAT``; its server usec per call is
``cmdstat_evalsha`` (or ``cmdstat_fcall``). That is time inside the server only: no network, no
client. Each merge is a new batch of one client (each script its own sequence, so no record
ever holds gaps), so it writes the stats hash and the batch record as ``normalize`` does. Every
figure is also a ratio to the no-op of the same round: absolute microseconds move with the
machine's load, the ratios much less. The scripts are built from the repository's ``lua/``
files through the library's own loader, so whatever ``merge.lua`` is current is measured.

- ``--baseline REV``: the merge script of that git revision (its ``stats_lib.lua`` and
  ``merge.lua``) runs in the same rounds, into its own env: a change against what it replaces.
- ``--half-life N``: the merged envs keep decayed statistics (the baseline's may ignore it).
- ``--parts``: scripts that each do one part of a merge (the helpers' top level, parsing the
  argument, the HMGET, parsing the hash, TIME, the record's GET and SET EX), the merge without
  its HSET, without its record, and as an FCALL of the Function library; a table of where the
  merge's time goes, each part the difference of two medians (small parts are within the noise
  of a busy machine).
- ``--primitives``: single Lua operations (a tonumber, a '%.17g', a redis.call of each command
  the merge sends...), each looped inside one EVALSHA: nanoseconds per operation, what any
  rework of the script pays.
- ``--capacity``: server main-thread CPU (INFO cpu) per request when requests come one at a
  time, unpipelined (each pays its own read, parse, reply and event-loop wakeup), for PING, the
  no-op and the merge: the requests/s one core sustains.
- ``--script NAME=FILE[+FILE...]``: a candidate merge script (the files concatenated, e.g. a
  scratch ``stats_lib.lua`` then a scratch ``merge.lua``), called exactly like the merge;
  ``--function NAME=TOPFILE+FILE[+FILE...]`` the same as a Function (TOPFILE at the library's
  top level, built once at load). To see what a rework saves before committing it.

Usage::

    python benchmarks/server_cost.py [--calls 20000] [--rounds 7] [--baseline REV] [--half-life N]
                                     [--parts] [--primitives] [--capacity] [--markdown]
                                     [--script NAME=FILE[+FILE]] [--function NAME=TOP+FILE[+FILE]]

Asserts nothing: it prints measurements.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # the repository root: the test helpers are the package tests.support

from common import Printer, argument_parser, machine_rows, main_thread_cpu, progress, quartiles  # noqa: E402

from shared_rewardnorm._core.keys import batch_record_key  # noqa: E402
from shared_rewardnorm._core.protocol import encode_sequence, encode_stats  # noqa: E402
from shared_rewardnorm._redis.scripts import function_library, function_name, helpers_source, script_source  # noqa: E402
from shared_rewardnorm.stats import RunningStats  # noqa: E402
from tests.support.redis_servers import NO_PERSISTENCE, RedisServer  # noqa: E402

NOOP = "return 1"
PIPELINE_CHUNK = 1000
MERGE_HSET = "redis.call('HSET', key, unpack(fields))"
FCALL = "merge (FCALL)"
RECORD_TTL = "86400"
#: The merge's argument: a batch of 16 scores' summary, as normalize sends it.
SUMMARY = encode_stats(RunningStats.from_values([0.25 * i - 1.5 for i in range(16)]))


#: --primitives: {what: Lua}, each run LOOP times in one script after the helpers (KEYS[1] the
#: merge's env, KEYS[2] a string, KEYS[3] a hash of their own; ARGV[1] a number as the client
#: sends it, ARGV[2] the record lifetime).
PRIMITIVES = {
    "empty loop": "",
    "tonumber of '%+.16e' text": "local v = tonumber(ARGV[1])",
    "parse_finite (validation included)": "local v = parse_finite(ARGV[1])",
    "string.format('%.17g')": "local t = string.format('%.17g', i * 0.1)",
    "string.format('%d')": "local t = string.format('%d', 1764648000000 + i)",
    "a closure": "local function f(x) return x + i end",
    "a table of 5 keyed fields": "local t = {count = i, mean = 1, m2 = 2, min = 3, max = 4}",
    "redis.call TIME": "redis.call('TIME')",
    "redis.call GET": "redis.call('GET', KEYS[2])",
    "redis.call HMGET of the 14 fields": "redis.call('HMGET', KEYS[1], unpack(ENV_FIELDS))",
    "redis.call HSET of 6 fields": "redis.call('HSET', KEYS[3], 'count', '4', 'mean', '0.5', 'm2', '3', 'std', '1', "
                                   "'merges', '7', 'updated_at', '8')",
    # The alternative layout, all the numbers in one field: what its read and write would cost.
    "redis.call HSET of 1 field of 12 numbers": "redis.call('HSET', KEYS[3], 'state', '16 0.37500000000000001 "
                                                "85.000000000000014 -1.5 2.25 0 0 0 0 0 5 1764648000000')",
    "redis.call HGET of that field": "redis.call('HGET', KEYS[3], 'state')",
    "redis.call SET EX, lifetime as text": "redis.call('SET', KEYS[2], 'x', 'EX', ARGV[2])",
    "redis.call SET EX, lifetime a Lua number": "redis.call('SET', KEYS[2], 'x', 'EX', 86400)",
}
PRIMITIVE_LOOP = 1000
PRIMITIVE_CALLS = 20


@dataclass
class Timed:
    """One script timed in every round: how it is called and the keys it writes.

    ``shape`` says how: "merge" (its own env and record, as normalize calls the merge),
    "part" (reads the merge's env, keeps its own record), "no record" (its own env, one key),
    "noop" (no keys) or "primitive" (the --primitives keys and arguments)."""

    name: str
    target: str  # the SHA, or the Function's name for FCALL
    shape: str = "merge"
    fcall: bool = False
    sequence: int = 0  # the last batch number sent: each script keeps its own record, no gaps

    @property
    def env(self) -> str:
        return "cost:{merge}" if self.shape == "part" else f"cost:{{{self.name}}}"

    def calls(self, count: int) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
        """The next ``count`` calls as (target, keys, args)."""
        if self.shape == "noop":
            return [(self.target, (), ())] * count
        if self.shape == "primitive":
            keys = ("cost:{merge}", "cost:{merge}:string", "cost:{merge}:hash")
            return [(self.target, keys, ("+5.0000000000000000e-01", RECORD_TTL))] * count
        if self.shape == "no record":
            return [(self.target, (self.env,), (SUMMARY,))] * count
        record = batch_record_key(self.env, f"bench-{self.name.replace(' ', '-')}")
        found = []
        for _ in range(count):
            self.sequence += 1
            found.append((self.target, (self.env, record), (SUMMARY, encode_sequence(self.sequence), RECORD_TTL)))
        return found


def part_sources() -> dict[str, tuple[str, str]]:
    """--parts: scripts doing one part of a merge each, as {name: (source, shape)}."""
    helpers = helpers_source() + "\n"
    merge = script_source("merge")
    if MERGE_HSET not in merge:
        raise RuntimeError(f"merge.lua no longer contains {MERGE_HSET!r}: update --parts")
    return {
        "keys + args": (NOOP, "part"),
        "helpers": (helpers + NOOP, "part"),
        "parse argument": (helpers + "local s, err = parse_stats_arg(KEYS[1], ARGV[1], 1)\nif err then return err end\n"
                           + NOOP, "part"),
        "HMGET": (helpers + "redis.call('HMGET', KEYS[1], unpack(ENV_FIELDS))\n" + NOOP, "part"),
        "read hash": (helpers + "local env, err = read_env(KEYS[1])\nif err then return err end\n" + NOOP, "part"),
        "TIME": (helpers + "server_time()\n" + NOOP, "part"),
        "GET + SET EX": (helpers + "redis.call('GET', KEYS[2])\nredis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])\n"
                         + NOOP, "part"),
        # Reads the merge's env (it writes nothing to it), so it merges into the same statistics.
        "merge, no HSET": (merge.replace(MERGE_HSET, "local _ = fields"), "part"),
        "merge, no record": (merge, "no record"),
    }


#: --parts: each row is (what, script, minus script): the part's cost is the difference of medians.
#: Indented rows detail the row above them and are not added again.
BREAKDOWN = (
    ("the call itself (no-op EVALSHA)", "noop", None),
    ("2 keys + 3 arguments", "keys + args", "noop"),
    ("stats_lib.lua top level (per script call)", "helpers", "keys + args"),
    ("parse + validate the argument", "parse argument", "helpers"),
    ("read the hash: HMGET, validate, parse", "read hash", "helpers"),
    ("  of which the HMGET of 14 fields", "HMGET", "helpers"),
    ("TIME", "TIME", "helpers"),
    ("batch record (merge - merge without it)", "merge", "merge, no record"),
    ("  of which GET + SET EX", "GET + SET EX", "helpers"),
    ("HSET of the changed fields", "merge", "merge, no HSET"),
)


def _timed(client: redis.Redis, calls: list[tuple[str, tuple[str, ...], tuple[str, ...]]],
           command: str = "evalsha") -> float:
    """Server usec per call over ``calls`` (sha or Function name, keys, args), sent pipelined
    as ``command`` (EVALSHA or FCALL)."""
    client.config_resetstat()
    for start in range(0, len(calls), PIPELINE_CHUNK):
        pipe = client.pipeline(transaction=False)
        for name, keys, args in calls[start:start + PIPELINE_CHUNK]:
            pipe.execute_command(command.upper(), name, len(keys), *keys, *args)
        pipe.execute()
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    count, usec = int(stats.get("calls", 0)), int(stats.get("usec", 0))
    if count != len(calls):
        raise RuntimeError(f"expected {len(calls)} {command.upper()} calls, the server counted {count}")
    return usec / count


def baseline_source(revision: str) -> str:
    """The merge script as it was at a git revision of this repository."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{revision}:{path}"], cwd=HERE.parent, check=True,
                              capture_output=True, text=True).stdout

    return show("lua/stats_lib.lua") + "\n" + show("lua/merge.lua")


def parse_candidates(scripts: list[str], functions: list[str]) -> list[tuple[str, str, str | None]]:
    """``--script NAME=FILE[+FILE...]`` (one script, the files concatenated) and ``--function
    NAME=TOPFILE+FILE[+FILE...]`` (a Function library: the first file at its top level, built
    once when it loads, the others the function's body): (name, body, top level or None)."""
    found: list[tuple[str, str, str | None]] = []
    for spec, is_function in [(spec, False) for spec in scripts] + [(spec, True) for spec in functions]:
        name, sep, files = spec.partition("=")
        paths = files.split("+")
        if not sep or not name or not files or (is_function and len(paths) < 2):
            option = "--function NAME=TOPFILE+FILE[+FILE...]" if is_function else "--script NAME=FILE[+FILE...]"
            raise SystemExit(f"{option} expected, got {spec!r}")
        texts = [Path(path).read_text(encoding="utf-8") for path in paths]
        found.append((name, "\n".join(texts[1:]), texts[0]) if is_function else (name, "\n".join(texts), None))
    return found


def load(client: redis.Redis, args: argparse.Namespace) -> list[Timed]:
    """Load every script the options ask for on the private server and configure their envs."""
    merge = script_source("merge")
    timed = [Timed("noop", client.script_load(NOOP), "noop"), Timed("merge", client.script_load(merge))]
    if args.baseline is not None:
        timed.append(Timed("baseline", client.script_load(baseline_source(args.baseline))))
    for index, (name, body, top) in enumerate(parse_candidates(args.script, args.function)):
        if any(entry.name == name for entry in timed) or name in part_sources() or name == FCALL:
            raise SystemExit(f"candidate name {name!r} is taken: choose another")
        if top is None:
            timed.append(Timed(name, client.script_load(body)))
        else:
            function = f"bench_candidate_{index}"
            client.function_load(f"#!lua name={function}\n{top}\nredis.register_function('{function}', "
                                 f"function(KEYS, ARGV)\n{body}\nend)\n", replace=True)
            timed.append(Timed(name, function, fcall=True))
    if args.parts:
        for name, (source, shape) in part_sources().items():
            timed.append(Timed(name, client.script_load(source), shape))
        # The same merge as a Function: the helpers' top level ran once, at load.
        client.function_load(function_library(), replace=True)
        timed.append(Timed(FCALL, function_name("merge"), fcall=True))
    if args.primitives:
        for name, body in PRIMITIVES.items():
            source = f"{helpers_source()}\nfor i = 1, {PRIMITIVE_LOOP} do\n{body}\nend\nreturn 1"
            timed.append(Timed(f"primitive:{name}", client.script_load(source), "primitive"))
    if args.half_life is not None:
        for entry in timed:
            if entry.shape in ("merge", "no record"):
                client.eval(script_source("configure"), 1, entry.env, f"{args.half_life:.17g}")
    return timed


def measure(client: redis.Redis, timed: list[Timed], calls: int, rounds: int) -> dict[str, list[float]]:
    """Per round, in a shuffled order: usec per call of every script (primitives: per script
    call of PRIMITIVE_LOOP operations) and, for the others, the ratio to the round's no-op."""
    results: dict[str, list[float]] = {}
    rng = random.Random(9)
    for round_number in range(rounds):
        progress(f"round {round_number + 1}/{rounds}")
        order = timed[:]
        rng.shuffle(order)
        usec = {}
        for entry in order:
            count = PRIMITIVE_CALLS if entry.shape == "primitive" else calls
            usec[entry.name] = _timed(client, entry.calls(count), "fcall" if entry.fcall else "evalsha")
        for name, value in usec.items():
            results.setdefault(name, []).append(value)
            if not name.startswith("primitive:"):
                results.setdefault(f"{name}/noop", []).append(value / usec["noop"])
    return results


def capacity(client: redis.Redis, by_name: dict[str, Timed], rounds: int, calls: int) -> list[list[Any]]:
    """Server CPU per request when requests come one at a time (no pipelining, so each pays its
    own read, parse, reply and event-loop wakeup): INFO cpu of the main thread around ``calls``
    sequential calls, interleaved over ``rounds``. What one core can sustain follows."""
    measured: dict[str, list[float]] = {"PING": [], "no-op EVALSHA": [], "merge + record": []}
    for round_number in range(rounds):
        progress(f"capacity round {round_number + 1}/{rounds}")
        for name, samples in measured.items():
            before = main_thread_cpu(client)
            if name == "PING":
                for _ in range(calls):
                    client.ping()
            else:
                for target, keys, args in by_name["noop" if name.startswith("no-op") else "merge"].calls(calls):
                    client.evalsha(target, len(keys), *keys, *args)
            samples.append(1e6 * (main_thread_cpu(client) - before) / calls)
    rows = []
    for name, usec in measured.items():
        per_call = statistics.median(usec)
        rows.append([name, f"{per_call:.1f}", f"{1e6 / per_call:,.0f}" if per_call > 0 else "-"])
    return rows


def breakdown(median: dict[str, float]) -> list[list[Any]]:
    """Where the merge's server time goes, from the medians of the part scripts."""
    noop = median["noop"]
    rows = []
    accounted = 0.0
    for label, script, minus in BREAKDOWN:
        cost = median[script] - (median[minus] if minus else 0.0)
        if not label.startswith(" "):
            accounted += cost
        rows.append([label, f"{cost:.2f}", f"{cost / noop:.1f}"])
    rest = median["merge"] - accounted
    rows.append(["the rest (Chan update, formatting, reply)", f"{rest:.2f}", f"{rest / noop:.1f}"])
    rows.append(["merge + record (total)", f"{median['merge']:.2f}", f"{median['merge'] / noop:.1f}"])
    rows.append(["the same merge as FCALL of the library", f"{median[FCALL]:.2f}", f"{median[FCALL] / noop:.1f}"])
    return rows


def primitives(results: dict[str, list[float]]) -> list[list[Any]]:
    """Nanoseconds per Lua operation: a looped script's median minus the empty loop's."""
    empty = statistics.median(results["primitive:empty loop"])
    return [[name, f"{1000 * (statistics.median(results[f'primitive:{name}']) - empty) / PRIMITIVE_LOOP:.0f}"]
            for name in PRIMITIVES if name != "empty loop"]


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, url=False, quick=None)
    parser.add_argument("--calls", type=int, default=20000, help="pipelined calls per round and script")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--baseline", metavar="REV", help="also time the merge script of this git revision")
    parser.add_argument("--half-life", type=float, metavar="N",
                        help="configure the merged envs with this half-life (decayed statistics on)")
    parser.add_argument("--parts", action="store_true", help="also time each part of the merge (a breakdown)")
    parser.add_argument("--primitives", action="store_true", help="also time single Lua operations (ns each)")
    parser.add_argument("--capacity", action="store_true",
                        help="also measure server CPU per request one at a time (requests/s one core sustains)")
    parser.add_argument("--script", action="append", default=[], metavar="NAME=FILE[+FILE]",
                        help="also time this candidate merge script (files concatenated)")
    parser.add_argument("--function", action="append", default=[], metavar="NAME=TOPFILE+FILE[+FILE]",
                        help="also time this candidate as a Function (FCALL): TOPFILE at the library's top "
                             "level, the other files the function's body")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be at least 1")
    out = Printer(args.markdown)
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory), NO_PERSISTENCE) as server:
        client = redis.Redis.from_url(server.url)
        try:
            out.heading("Machine")
            out.table(["what", "value"], machine_rows(client, f"{server.url} (private server, no persistence)"))
            timed = load(client, args)
            results = measure(client, timed, args.calls, args.rounds)
            capacity_rows = (capacity(client, {t.name: t for t in timed}, max(3, args.rounds // 2),
                                      max(100, args.calls // 4)) if args.capacity else [])
            leftover = list(client.scan_iter(match="cost:*"))
        finally:
            client.close()
    if not leftover:
        raise RuntimeError("the benchmark's keys vanished before the end: was the server shared?")
    decay = "" if args.half_life is None else f", merged envs with half-life {args.half_life:g}"
    out.heading(f"Server time per call (INFO commandstats): {args.rounds} interleaved rounds of {args.calls} "
                f"pipelined calls{decay}")
    labels = {"merge": "merge + record", "baseline": f"{args.baseline} merge + record", FCALL: FCALL}
    rows = []
    for entry in timed:
        if entry.shape in ("primitive", "part", "no record"):
            continue
        q1, median, q3 = quartiles(results[entry.name])
        r1, ratio, r3 = quartiles(results[f"{entry.name}/noop"])
        name = "no-op EVALSHA" if entry.name == "noop" else labels.get(entry.name, f"candidate {entry.name}")
        rows.append([name, f"{median:.2f}", f"{q1:.2f}-{q3:.2f}", f"{ratio:.1f}", f"{r1:.1f}-{r3:.1f}"])
    out.table(["script", "usec/call (median)", "q1-q3", "x no-op (median of rounds)", "q1-q3"], rows)
    if args.baseline is not None:
        ratios = [new / old for new, old in zip(results["merge"], results["baseline"])]
        q1, median, q3 = quartiles(ratios)
        out.note(f"merge / {args.baseline} merge, median of per-round ratios: {median:.2f} (q1-q3 {q1:.2f}-{q3:.2f})")
    if args.parts:
        out.heading("Where the merge's server time goes (differences of medians)")
        out.table(["part", "usec", "x no-op"], breakdown({k: statistics.median(v) for k, v in results.items()}))
    if args.primitives:
        out.heading(f"One Lua operation in a script (looped {PRIMITIVE_LOOP} times, minus the empty loop)")
        out.table(["operation", "ns"], primitives(results))
    if capacity_rows:
        out.heading("Server CPU per request, one request at a time (INFO cpu, main thread)")
        out.table(["request", "server CPU usec/request (median of rounds)", "requests/s one core sustains"],
                  capacity_rows)
        out.note("unpipelined: each request pays its own socket read, parsing, reply and event-loop wakeup; many "
                 "concurrent clients share wakeups, so a busy server spends somewhat less per request. "
                 "requests/s = 1e6 / CPU usec: what one Redis core could do if it did nothing else")
    out.note("absolute microseconds are noisy on a shared machine; compare ratios to the no-op of the same round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
