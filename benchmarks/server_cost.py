"""Server time of one merge (with its batch record) against a no-op EVALSHA, from INFO commandstats.

Starts a private ``redis-server`` (free loopback port, temp dir, no persistence) so nobody
else's commands are counted, then alternates rounds: CONFIG RESETSTAT, N pipelined no-op
EVALSHAs, read ``cmdstat_evalsha``; CONFIG RESETSTAT, N pipelined merges (each a new batch of
one client, so each writes the stats hash and the batch record), read again. Every round gives
usec per call of both and their ratio; the table reports the median and quartiles.

    python benchmarks/server_cost.py [--calls 20000] [--rounds 7] [--redis-server PATH]

Asserts nothing: it prints measurements.
"""

from __future__ import annotations

import argparse
import statistics
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


def measure(client: redis.Redis, calls: int, rounds: int) -> dict[str, list[float]]:
    """Per round: usec per no-op, usec per merge, and their ratio."""
    noop_sha = client.script_load(NOOP)
    merge_sha = client.script_load(script_source("merge"))
    key = "cost:{env}"
    record = batch_record_key(key, "0123456789abcdef")
    summary = encode_stats(RunningStats.from_values([0.25, 1.5, -0.75, 2.0]))
    sequence = 0
    results: dict[str, list[float]] = {"noop": [], "merge": [], "ratio": []}
    for _ in range(rounds):
        noop = _timed(client, [(noop_sha, (), ())] * calls)
        batch = []
        for _ in range(calls):
            sequence += 1
            batch.append((merge_sha, (key, record), (summary, encode_sequence(sequence), "86400")))
        merge = _timed(client, batch)
        results["noop"].append(noop)
        results["merge"].append(merge)
        results["ratio"].append(merge / noop)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per round and kind")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory), NO_PERSISTENCE) as server:
        client = redis.Redis.from_url(server.url)
        version = client.info("server")["redis_version"]
        results = measure(client, args.calls, args.rounds)
        client.close()
    print(f"redis-server {version}, {args.rounds} interleaved rounds of {args.calls} pipelined calls each")
    print(f"{'':24}{'q1':>10}{'median':>10}{'q3':>10}")
    for name, label in (("noop", "no-op EVALSHA (us)"), ("merge", "merge + record (us)"),
                        ("ratio", "merge / no-op")):
        q1, median, q3 = quartiles(results[name])
        print(f"{label:24}{q1:10.2f}{median:10.2f}{q3:10.2f}")
    print(f"median of per-round ratios: {statistics.median(results['ratio']):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
