"""``shared-rewardnorm demo``: six worker processes through one store, embedded and on a real
Redis, end with every check passing; the plot is drawn; the progress is reported from the start;
a dead worker stops the demo cleanly. (Without running it: tests/unit/test_demo.py; on a
cluster: tests/deployment/test_cli.py.)

The runs use few, small batches (``SMALL_DEMO``): the point is the processes and the checks."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import redis

from shared_rewardnorm import StatsStore
from shared_rewardnorm.cli.demo import (
    DEMO_ENVS,
    DemoConfig,
    DemoError,
    DemoObserver,
    run_demo,
)
from tests.support.cli import SMALL_DEMO, assert_all_checks_pass, run_cli
from tests.support.redis_servers import free_port


def test_demo_embedded() -> None:
    # $SHARED_REWARDNORM_URL names a dead port: the demo must not use it without --url.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli("demo", *SMALL_DEMO, env={"SHARED_REWARDNORM_URL": dead})
    assert_all_checks_pass(result)
    assert "embedded Redis-protocol server" in result.stdout
    assert "6 worker processes" in result.stdout
    assert "stored/sent: gsm8k 32/32, tool_use 32/32, code 32/32" in result.stdout  # 2 replicas x 2 x 8


@pytest.mark.real_redis
def test_demo_real_redis_cleans_up(real_redis_url: str, namespace: str, real_client: redis.Redis) -> None:
    result = run_cli("--url", real_redis_url, "demo", "--namespace", namespace, *SMALL_DEMO)
    assert_all_checks_pass(result)
    assert f"namespace {namespace!r}" in result.stdout
    assert list(real_client.scan_iter(match=f"{namespace}:*")) == []  # stats and batch records alike


@pytest.mark.real_redis
def test_run_demo_in_process_keeps_on_request(real_redis_url: str, namespace: str, real_client: redis.Redis) -> None:
    result = run_demo(DemoConfig(batches=3, batch_size=4, url=real_redis_url, namespace=namespace, keep=True))
    assert result.passed and result.kept and not result.embedded
    kept = StatsStore(real_client, namespace).get_many(env.name for env in DEMO_ENVS)
    for outcome in result.envs:
        assert outcome.count == 2 * 3 * 4
        assert kept[outcome.env.name] == outcome.stored
        assert len(outcome.replica_views) == 2


@pytest.mark.real_redis
def test_demo_refuses_a_namespace_in_use(real_redis_url: str, namespace: str, real_client: redis.Redis) -> None:
    store = StatsStore(real_client, namespace)
    before = store.update("gsm8k", [1.0, -1.0])
    with pytest.raises(DemoError, match="already holds statistics for gsm8k"):
        run_demo(DemoConfig(url=real_redis_url, namespace=namespace))
    assert store.get("gsm8k") == before  # nothing run, nothing cleaned up


def test_demo_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "histograms.png"
    result = run_cli("demo", *SMALL_DEMO, "--plot", str(target))
    assert_all_checks_pass(result)
    assert f"histograms: {target}" in result.stdout
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Events(DemoObserver):
    """Records what the demo reports, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def workers_ready(self, ready: int, total: int) -> None:
        self.events.append(("ready", ready, total))

    def progress(self, done: int, total: int, elapsed: float) -> None:
        self.events.append(("progress", done, total))


def test_the_demo_reports_from_its_start() -> None:
    # Spawning the workers takes seconds: it is reported before, during and after.
    observer = Events()
    run_demo(DemoConfig(workers=3, batches=2, batch_size=4), observer)
    first_progress = observer.events.index(("progress", 1, 6))
    assert observer.events[:first_progress] == [("ready", ready, 3) for ready in range(4)]


def test_the_cli_says_it_is_starting_the_workers_at_once() -> None:
    result = run_cli("demo", *SMALL_DEMO)
    lines = result.stdout.splitlines()
    assert lines[2] == "starting 6 worker processes..." and lines[3] == "worker processes ready: 6/6", lines


class KillOneWorker(DemoObserver):
    """Terminates one worker at the first progress report, as a crash would."""

    def progress(self, done: int, total: int, elapsed: float) -> None:
        if done == 1:
            multiprocessing.active_children()[0].terminate()


def test_a_dead_worker_stops_the_demo_cleanly() -> None:
    with pytest.raises(DemoError, match=r"worker \S+ exited with code -15"):
        run_demo(DemoConfig(batches=50, batch_size=4), KillOneWorker())
    assert multiprocessing.active_children() == []  # the others were stopped and reaped
