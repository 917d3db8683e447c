"""Server time of one merge (with its batch record) against a no-op EVALSHA, from INFO commandstats.

Starts a private ``redis-server`` (free loopback port, temp dir, no persistence) so nobody
else's commands are counted, then alternates rounds: CONFIG RESETSTAT, N pipelined no-op
EVALSHAs, read ``cmdstat_evalsha``; CONFIG RESETSTAT, N pipelined merges (each a new batch of
one client, so each writes the stats hash and the batch record), read again. Every round gives
usec per call of both and their ratio; the table reports the median and quartiles. With
``--baseline REV`` the merge script of that git revision (its stats_lib.lua and merge.lua) runs
in the same rounds, into its own env, so a change is measured against what it replaces.

With ``--parts`` the same rounds also time scripts that each do one part of a merge (the
helpers' top level, parsing the argument, the HMGET, parsing the hash, TIME, the record's GET
and SET EX) and the merge without its HSET or without its record, and print where the merge's
time goes: each part is the difference between two of these scripts' medians (so small parts
are within the noise of a busy machine; the ratios to the no-op move less than the
microseconds).

With ``--primitives`` it also times single Lua operations (a tonumber, a '%.17g', a
redis.call of each command the merge sends...), each looped inside one EVALSHA so the call's
own cost is spread over many: nanoseconds per operation, what any rework of the script pays.

    python benchmarks/server_cost.py [--calls 20000] [--rounds 7] [--baseline REV] [--half-life N] [--parts]
                                     [--primitives]

Asserts nothing: it prints measurements.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import quartiles  # noqa: E402
from redis_servers import NO_PERSISTENCE, RedisServer  # noqa: E402

from shared_rewardnorm.protocol import batch_record_key, encode_sequence, encode_stats  # noqa: E402
from shared_rewardnorm.scripts import _read_lua, function_library, function_name, script_source  # noqa: E402
from shared_rewardnorm.stats import RunningStats  # noqa: E402

NOOP = "return 1"
PIPELINE_CHUNK = 1000
MERGE_HSET = "redis.call('HSET', key, unpack(fields))"
FCALL = "merge (FCALL)"


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
    "redis.call HMGET of the 12 fields": "redis.call('HMGET', KEYS[1], unpack(ENV_FIELDS))",
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


def time_primitives(client: redis.Redis, shas: dict[str, str]) -> dict[str, float]:
    """One round of --primitives: server usec per script call of each."""
    found = {}
    for name, sha in shas.items():
        calls = [(sha, ("cost:{merge}", "cost:{merge}:string", "cost:{merge}:hash"), ("+5.0000000000000000e-01", "86400"))]
        found[name] = _timed(client, calls * PRIMITIVE_CALLS)
    return found


def part_sources() -> dict[str, tuple[str, int]]:
    """--parts: scripts doing one part of a merge each, as {name: (source, keys)}. They are
    called with the merge's arguments; those with 2 keys get the merge's env (read only) and a
    record of their own, "merge, no record" an env of its own."""
    helpers = _read_lua("stats_lib") + "\n"
    merge = script_source("merge")
    if MERGE_HSET not in merge:
        raise RuntimeError(f"merge.lua no longer contains {MERGE_HSET!r}: update --parts")
    return {
        "keys + args": (NOOP, 2),
        "helpers": (helpers + NOOP, 2),
        "parse argument": (helpers + "local s, err = parse_stats_arg(KEYS[1], ARGV[1], 1)\nif err then return err end\n"
                           + NOOP, 2),
        "HMGET": (helpers + "redis.call('HMGET', KEYS[1], unpack(ENV_FIELDS))\n" + NOOP, 2),
        "read hash": (helpers + "local env, err = read_env(KEYS[1])\nif err then return err end\n" + NOOP, 2),
        "TIME": (helpers + "now_ms()\n" + NOOP, 2),
        "GET + SET EX": (helpers + "redis.call('GET', KEYS[2])\nredis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])\n"
                         + NOOP, 2),
        "merge, no HSET": (merge.replace(MERGE_HSET, "local _ = fields"), 2),
        "merge, no record": (merge, 1),
    }


#: --parts: each row is (what, script, minus script): the part's cost is the difference of medians.
#: Indented rows detail the row above them and are not added again.
BREAKDOWN = (
    ("the call itself (no-op EVALSHA)", "noop", None),
    ("2 keys + 3 arguments", "keys + args", "noop"),
    ("stats_lib.lua top level (per script call)", "helpers", "keys + args"),
    ("parse + validate the argument", "parse argument", "helpers"),
    ("read the hash: HMGET, validate, parse", "read hash", "helpers"),
    ("  of which the HMGET of 12 fields", "HMGET", "helpers"),
    ("TIME", "TIME", "helpers"),
    ("batch record (merge - merge without it)", "merge", "merge, no record"),
    ("  of which GET + SET EX", "GET + SET EX", "helpers"),
    ("HSET of the changed fields", "merge", "merge, no HSET"),
)


def _command_usec(client: redis.Redis, command: str) -> tuple[int, int]:
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


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
    count, usec = _command_usec(client, command)
    if count != len(calls):
        raise RuntimeError(f"expected {len(calls)} {command.upper()} calls, the server counted {count}")
    return usec / count


def baseline_source(revision: str) -> str:
    """The merge script as it was at a git revision of this repository."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{revision}:{path}"], cwd=HERE.parent, check=True,
                              capture_output=True, text=True).stdout

    return show("lua/stats_lib.lua") + "\n" + show("lua/merge.lua")


def measure(client: redis.Redis, calls: int, rounds: int, baseline: str | None,
            half_life: float | None = None, with_parts: bool = False,
            with_primitives: bool = False) -> dict[str, list[float]]:
    """Per round: usec per no-op and per merge (and per baseline merge), and the ratios. With
    ``half_life`` the current merge's env keeps decayed statistics (the baseline's ignores it)."""
    noop_sha = client.script_load(NOOP)
    if half_life is not None:
        client.eval(script_source("configure"), 1, "cost:{merge}", "%.17g" % half_life)
    merges = {"merge": client.script_load(script_source("merge"))}
    if baseline is not None:
        merges["baseline"] = client.script_load(baseline)
    parts = part_sources() if with_parts else {}
    for name, (source, _) in parts.items():
        merges[name] = client.script_load(source)
    if "merge, no record" in parts and half_life is not None:
        client.eval(script_source("configure"), 1, "cost:{merge, no record}", "%.17g" % half_life)
    if with_parts:  # the same merge as a Function: the helpers' top level ran once, at load
        client.function_load(function_library(), replace=True)
        merges[FCALL] = function_name("merge")
        if half_life is not None:
            client.eval(script_source("configure"), 1, f"cost:{{{FCALL}}}", "%.17g" % half_life)
    summary = encode_stats(RunningStats.from_values([0.25, 1.5, -0.75, 2.0]))
    # One sequence per merge script, as each has its own record: a shared counter would leave
    # each record a window of gaps at every round (the numbers the other script used), and time
    # the gap bookkeeping instead of the usual merge.
    sequence = dict.fromkeys(merges, 0)
    primitives = {name: client.script_load(f"{_read_lua('stats_lib')}\nfor i = 1, {PRIMITIVE_LOOP} do\n{body}\nend\n"
                                           "return 1") for name, body in PRIMITIVES.items()} if with_primitives else {}
    results: dict[str, list[float]] = {name: [] for name in ("noop", *merges, *(f"{m}/noop" for m in merges))}
    for _ in range(rounds):
        for name, usec in time_primitives(client, primitives).items():
            results.setdefault(f"primitive:{name}", []).append(usec)
        noop = _timed(client, [(noop_sha, (), ())] * calls)
        results["noop"].append(noop)
        for name, sha in merges.items():
            key = f"cost:{{{name}}}"
            record = batch_record_key(key, "0123456789abcdef")
            batch = []
            for _ in range(calls):
                sequence[name] += 1
                if name in parts and parts[name][1] == 1:
                    batch.append((sha, (key,), (summary,)))
                elif name in parts:  # reads the merge's env, keeps its own record
                    batch.append((sha, ("cost:{merge}", record), (summary, encode_sequence(sequence[name]), "86400")))
                else:
                    batch.append((sha, (key, record), (summary, encode_sequence(sequence[name]), "86400")))
            usec = _timed(client, batch, "fcall" if name == FCALL else "evalsha")
            results[name].append(usec)
            results[f"{name}/noop"].append(usec / noop)
    return results


def print_breakdown(results: dict[str, list[float]]) -> None:
    """Where the merge's server time goes, from the medians of the part scripts."""
    median = {name: statistics.median(values) for name, values in results.items()}
    noop = median["noop"]
    print()
    print(f"{'where the merge time goes':44}{'us':>8}{'x no-op':>10}")
    accounted = 0.0
    for label, script, minus in BREAKDOWN:
        cost = median[script] - (median[minus] if minus else 0.0)
        if not label.startswith(" "):
            accounted += cost
        print(f"{label:44}{cost:8.2f}{cost / noop:10.1f}")
    rest = median["merge"] - accounted
    print(f"{'the rest (Chan update, formatting, reply)':44}{rest:8.2f}{rest / noop:10.1f}")
    print(f"{'merge + record (total)':44}{median['merge']:8.2f}{median['merge'] / noop:10.1f}")
    print(f"{'the same merge as FCALL of the library':44}{median[FCALL]:8.2f}{median[FCALL] / noop:10.1f}")


def print_primitives(results: dict[str, list[float]]) -> None:
    """Nanoseconds per Lua operation: a looped script's median minus the empty loop's."""
    empty = statistics.median(results["primitive:empty loop"])
    print()
    print(f"{'one Lua operation in a script':44}{'ns':>8}")
    for name in PRIMITIVES:
        if name != "empty loop":
            usec = statistics.median(results[f"primitive:{name}"]) - empty
            print(f"{name:44}{1000 * usec / PRIMITIVE_LOOP:8.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per round and kind")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--baseline", metavar="REV", help="also time the merge script of this git revision")
    parser.add_argument("--half-life", type=float, metavar="N",
                        help="configure the merged env with this half-life (decayed statistics on)")
    parser.add_argument("--parts", action="store_true", help="also time each part of the merge (a breakdown)")
    parser.add_argument("--primitives", action="store_true", help="also time single Lua operations (ns each)")
    args = parser.parse_args(argv)
    baseline = None if args.baseline is None else baseline_source(args.baseline)
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory), NO_PERSISTENCE) as server:
        client = redis.Redis.from_url(server.url)
        version = client.info("server")["redis_version"]
        results = measure(client, args.calls, args.rounds, baseline, args.half_life, args.parts, args.primitives)
        leftover = list(client.scan_iter(match="cost:*"))
        client.close()
    decay = "" if args.half_life is None else f", merged env with half-life {args.half_life:g}"
    print(f"redis-server {version}, {args.rounds} interleaved rounds of {args.calls} pipelined calls each{decay}")
    print(f"{'':28}{'q1':>10}{'median':>10}{'q3':>10}")
    labels = {"noop": "no-op EVALSHA (us)", "merge": "merge + record (us)", "baseline": f"{args.baseline} merge (us)",
              "merge/noop": "merge / no-op", "baseline/noop": f"{args.baseline} / no-op"}
    for name, values in results.items():
        if name in labels:
            q1, median, q3 = quartiles(values)
            print(f"{labels[name]:28}{q1:10.2f}{median:10.2f}{q3:10.2f}")
    if args.parts:
        print_breakdown(results)
    if args.primitives:
        print_primitives(results)
    if not leftover:
        raise RuntimeError("the benchmark's keys vanished before the end: was the server shared?")
    if baseline is not None:
        ratios = [new / old for new, old in zip(results["merge"], results["baseline"])]
        print(f"merge / {args.baseline} merge, median of per-round ratios: {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
