"""Many processes merging into one env on a real Redis lose nothing and count nothing twice."""

from __future__ import annotations

import random
from typing import Any

import pytest

from shared_rewardnorm import SharedRewardNormalizer, StatsStore
from tests.support.helpers import assert_summarizes
from tests.support.worker_processes import run_workers

PROCESSES, BATCHES = 8, 120


def worker_batches(worker: int) -> list[list[float]]:
    rng = random.Random(1000 + worker)
    return [[rng.gauss(worker * 10.0, 1.0 + worker) for _ in range(rng.randint(1, 40))] for _ in range(BATCHES)]


def run_worker(url: str, namespace: str, worker: int, start: Any, failures: Any) -> None:
    norm = SharedRewardNormalizer("shared", url, namespace=namespace, warmup=0)
    start.wait(30)
    for batch in worker_batches(worker):
        out = norm.normalize(batch)
        if len(out) != len(batch):
            raise SystemExit(3)


@pytest.mark.real_redis
def test_processes_merge_exactly(real_redis_url: str, namespace: str, real_client: object) -> None:
    exit_codes, reported = run_workers(run_worker, PROCESSES, real_redis_url, namespace)
    assert reported == [] and exit_codes == [0] * PROCESSES

    everything = [v for worker in range(PROCESSES) for batch in worker_batches(worker) for v in batch]
    stats = StatsStore(real_redis_url, namespace).get("shared")
    assert_summarizes(stats, everything, variance_rel_tol=1e-12)
