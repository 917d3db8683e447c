#!/usr/bin/env python
"""What a caller's retry does with and without ``batch_id``, measured through lost replies.

A trainer normalizes pass/fail groups (8 rewards in {0, 1}) through a proxy that drops the
reply of some merges after the script ran (the batch was counted; the caller cannot tell).
The store does not retry (``retry=None``), as when its retry policy is spent, so every drop
reaches the caller, which then does one of three things:

- moves on to its next group (no retry);
- calls again without a batch id until it is answered;
- calls again with the group's batch id until it is answered.

For each, the table gives the groups sent, the errors the caller saw, and the groups the store
counted (its ``merges``, one per counted group): lost groups are sent groups not counted,
doubled ones counted twice. The last column applies the rule the library used before batch
ids, "after a lost reply, the next batch of identical values into that env is its retry", to
the same run's sequence of groups: the real groups that rule would have dropped (a caller that
moved on sent a group whose summary equalled the lost one's, which was then not counted). With
8 pass/fail rewards of success rate 0.5 the chance that two groups have the same summary is
sum_k C(8,k)^2 / 4^8 = 0.196, printed beside the measurement.

Usage::

    python benchmarks/bench_batch_ids.py [--url redis://127.0.0.1:6379/0] [--groups 2000] [--drop-rate 0.05]
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared_rewardnorm import SharedRewardNormalizer, StatsStore

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import Printer, argument_parser, machine_rows, progress, scratch_namespace  # noqa: E402

from tests.support.drop_proxy import DropProxy  # noqa: E402

GROUP = 8
POLICIES = ("move on", "retry without an id", "retry with the batch id")


def groups(count: int, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[float(rng.random() < 0.5) for _ in range(GROUP)] for _ in range(count)]


def run(policy: str, url: str, namespace: str, sent: list[list[float]], drop_rate: float, seed: int) -> list[int]:
    """Normalize every group under ``policy``; the indexes of the groups whose call raised."""
    port = redis.connection.parse_url(url).get("port", 6379)
    failed: list[int] = []
    with DropProxy(port, drop_rate=drop_rate, seed=seed) as proxy:
        client = redis.Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 0), socket_timeout=5)  # redis-py: no retries
        norm = SharedRewardNormalizer("env", StatsStore(client, namespace, retry=None), warmup=0)
        for index, group in enumerate(sent):
            batch_id = index if policy == POLICIES[2] else None
            while True:
                try:
                    norm.normalize(group, batch_id=batch_id)
                    break
                except redis.ConnectionError:
                    failed.append(index)
                    if policy == POLICIES[0]:
                        break
        client.close()
    return failed


def old_rule_drops(sent: list[list[float]], failed: list[int]) -> int:
    """Groups the identical-summary rule would have dropped for a caller that moves on: the
    group right after a failed one, when their values summarize the same (the rule forgot the
    failed merge after the env's next merge)."""
    return sum(1 for index in failed
               if index + 1 < len(sent) and sorted(sent[index + 1]) == sorted(sent[index]))


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, quick="200 groups per policy")
    parser.add_argument("--groups", type=int, default=2000, help="groups per policy (default 2000)")
    parser.add_argument("--drop-rate", type=float, default=0.05, help="share of merge replies dropped (default 0.05)")
    args = parser.parse_args(argv)
    count = 200 if args.quick else args.groups
    out = Printer(args.markdown)
    admin = redis.Redis.from_url(args.url)
    out.table(["what", "value"], machine_rows(admin, args.url))
    rows = []
    for number, policy in enumerate(POLICIES):
        sent = groups(count, seed=number)
        progress(f"{policy}: {count} groups")
        with scratch_namespace(redis.Redis.from_url(args.url), "batch-ids") as namespace:
            failed = run(policy, args.url, namespace, sent, args.drop_rate, seed=10 + number)
            merges = StatsStore(admin, namespace).info("env").merges
        errors = len(failed)
        would_drop = old_rule_drops(sent, failed) if policy == POLICIES[0] else 0
        rows.append([policy, count, errors, merges, max(0, count - merges), max(0, merges - count),
                     f"{would_drop} ({would_drop / errors:.0%} of errors)" if errors and policy == POLICIES[0]
                     else "-"])
    out.heading(f"Groups of {GROUP} pass/fail rewards, {args.drop_rate:.0%} of merge replies dropped after the "
                "merge ran, store retries off")
    out.table(["caller after an error", "groups sent", "errors seen", "groups counted", "lost", "doubled",
               "old rule would have dropped"], rows)
    same = math.fsum(math.comb(GROUP, k) ** 2 for k in range(GROUP + 1)) / 4**GROUP
    out.note(f"chance that two groups of {GROUP} fair pass/fail rewards have the same summary: {same:.3f}")
    out.note("without a batch id a caller's retry is a new batch (counted again when the first try had "
             "landed); with one it counts once; nothing is ever dropped for having the same values")
    out.flush()
    admin.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
