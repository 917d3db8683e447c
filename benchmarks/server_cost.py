"""Server time of one merge (with its batch record) against a no-op EVALSHA, from INFO commandstats.

Starts a private ``redis-server`` (free loopback port, temp dir, no persistence) so nobody
else's commands are counted, then alternates rounds: CONFIG RESETSTAT, N pipelined no-op
EVALSHAs, read ``cmdstat_evalsha``; CONFIG RESETSTAT, N pipelined merges (each a new batch of
one client, so each writes the stats hash and the batch record), read again. Every round gives
usec per call of both and their ratio; the table reports the median and quartiles. With
``--baseline REV`` the merge script of that git revision (its stats_lib.lua and merge.lua) runs
in the same rounds, into its own env, so a change is measured against what it replaces.

    python benchmarks/server_cost.py [--calls 20000] [--rounds 7] [--baseline REV] [--half-life N]

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
from shared_rewardnorm.scripts import script_source  # noqa: E402
from shared_rewardnorm.stats import RunningStats  # noqa: E402

NOOP = "return 1"
PIPELINE_CHUNK = 1000


def _evalsha_usec(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def _timed(client: redis.Redis, calls: list[tuple[str, tuple[str, ...], tuple[str, ...]]]) -> float:
    """Server usec per EVALSHA over ``calls`` (sha, keys, args), sent pipelined."""
    client.config_resetstat()
    for start in range(0, len(calls), PIPELINE_CHUNK):
        pipe = client.pipeline(transaction=False)
        for sha, keys, args in calls[start:start + PIPELINE_CHUNK]:
            pipe.evalsha(sha, len(keys), *keys, *args)
        pipe.execute()
    count, usec = _evalsha_usec(client)
    if count != len(calls):
        raise RuntimeError(f"expected {len(calls)} EVALSHA calls, the server counted {count}")
    return usec / count


def baseline_source(revision: str) -> str:
    """The merge script as it was at a git revision of this repository."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{revision}:{path}"], cwd=HERE.parent, check=True,
                              capture_output=True, text=True).stdout

    return show("lua/stats_lib.lua") + "\n" + show("lua/merge.lua")


def measure(client: redis.Redis, calls: int, rounds: int, baseline: str | None,
            half_life: float | None = None) -> dict[str, list[float]]:
    """Per round: usec per no-op and per merge (and per baseline merge), and the ratios. With
    ``half_life`` the current merge's env keeps decayed statistics (the baseline's ignores it)."""
    noop_sha = client.script_load(NOOP)
    if half_life is not None:
        client.eval(script_source("configure"), 1, "cost:{merge}", "%.17g" % half_life)
    merges = {"merge": client.script_load(script_source("merge"))}
    if baseline is not None:
        merges["baseline"] = client.script_load(baseline)
    summary = encode_stats(RunningStats.from_values([0.25, 1.5, -0.75, 2.0]))
    # One sequence per merge script, as each has its own record: a shared counter would leave
    # each record a window of gaps at every round (the numbers the other script used), and time
    # the gap bookkeeping instead of the usual merge.
    sequence = dict.fromkeys(merges, 0)
    results: dict[str, list[float]] = {name: [] for name in ("noop", *merges, *(f"{m}/noop" for m in merges))}
    for _ in range(rounds):
        noop = _timed(client, [(noop_sha, (), ())] * calls)
        results["noop"].append(noop)
        for name, sha in merges.items():
            key = f"cost:{{{name}}}"
            record = batch_record_key(key, "0123456789abcdef")
            batch = []
            for _ in range(calls):
                sequence[name] += 1
                batch.append((sha, (key, record), (summary, encode_sequence(sequence[name]), "86400")))
            usec = _timed(client, batch)
            results[name].append(usec)
            results[f"{name}/noop"].append(usec / noop)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per round and kind")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--baseline", metavar="REV", help="also time the merge script of this git revision")
    parser.add_argument("--half-life", type=float, metavar="N",
                        help="configure the merged env with this half-life (decayed statistics on)")
    args = parser.parse_args(argv)
    baseline = None if args.baseline is None else baseline_source(args.baseline)
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory), NO_PERSISTENCE) as server:
        client = redis.Redis.from_url(server.url)
        version = client.info("server")["redis_version"]
        results = measure(client, args.calls, args.rounds, baseline, args.half_life)
        client.close()
    decay = "" if args.half_life is None else f", merged env with half-life {args.half_life:g}"
    print(f"redis-server {version}, {args.rounds} interleaved rounds of {args.calls} pipelined calls each{decay}")
    print(f"{'':28}{'q1':>10}{'median':>10}{'q3':>10}")
    labels = {"noop": "no-op EVALSHA (us)", "merge": "merge + record (us)", "baseline": f"{args.baseline} merge (us)",
              "merge/noop": "merge / no-op", "baseline/noop": f"{args.baseline} / no-op"}
    for name, values in results.items():
        q1, median, q3 = quartiles(values)
        print(f"{labels[name]:28}{q1:10.2f}{median:10.2f}{q3:10.2f}")
    if baseline is not None:
        ratios = [new / old for new, old in zip(results["merge"], results["baseline"])]
        print(f"merge / {args.baseline} merge, median of per-round ratios: {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
