"""``shared-rewardnorm demo``: six worker processes through one store, embedded and on a real
Redis, end with every check passing; the plot is drawn; misuse is refused before anything runs.

The runs use few, small batches: the point is the processes and the checks, not the volume."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from shared_rewardnorm import RunningStats, StatsStore
from shared_rewardnorm.cli import main
from shared_rewardnorm.cli.demo import (
    DEMO_ENVS,
    Check,
    DemoConfig,
    DemoError,
    DemoObserver,
    DemoResult,
    EnvOutcome,
    histogram_figure,
    plot_histograms,
    require_matplotlib,
    run_demo,
)
from tests.behaviour.test_cli import assert_one_error_line, cli_command, one_master_cluster
from tests.support.redis_servers import free_port

SMALL = ["--batches", "2", "--batch-size", "8"]
CHECKS = ("replicas agree", "counts", "means")


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli_command(), *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def assert_all_checks_pass(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [line.split(":")[0] for line in verdicts] == [f"PASS  {name}" for name in CHECKS], result.stdout
    assert "Traceback" not in result.stderr


def test_demo_embedded() -> None:
    # $SHARED_REWARDNORM_URL names a dead port: the demo must not use it without --url.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli("demo", *SMALL, env={"SHARED_REWARDNORM_URL": dead})
    assert_all_checks_pass(result)
    assert "embedded Redis-protocol server" in result.stdout
    assert "6 worker processes" in result.stdout
    assert "stored/sent: gsm8k 32/32, tool_use 32/32, code 32/32" in result.stdout  # 2 replicas x 2 x 8


@pytest.mark.real_redis
def test_demo_real_redis_cleans_up(real_redis_url: str, namespace: str, real_client: redis.Redis) -> None:
    result = run_cli("--url", real_redis_url, "demo", "--namespace", namespace, *SMALL)
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
    result = run_cli("demo", *SMALL, "--plot", str(target))
    assert_all_checks_pass(result)
    assert f"histograms: {target}" in result.stdout
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fake_result() -> DemoResult:
    outcomes = tuple(EnvOutcome(env, raw=(0.0, 1.0), normalized=(-1.0, 1.0),
                                stored=RunningStats.from_values([0.0, 1.0]), replica_views=())
                     for env in DEMO_ENVS)
    return DemoResult(url="redis://x", embedded=True, namespace="n", workers=3, calls=3, elapsed=1.0,
                      envs=outcomes, checks=(Check("counts", True, ""),), kept=False)


def test_plot_histograms_has_a_row_per_env(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = plot_histograms(fake_result(), tmp_path / "plot.png")
    assert path.stat().st_size > 10_000


def test_every_histogram_has_axis_labels() -> None:
    pytest.importorskip("matplotlib")
    axes = histogram_figure(fake_result()).get_axes()
    assert len(axes) == 2 * len(DEMO_ENVS)
    assert {ax.get_xlabel() for ax in axes} == {"raw reward", "normalized reward (z-score)"}
    assert {ax.get_ylabel() for ax in axes} == {"rewards in the bin"}


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
    result = run_cli("demo", *SMALL)
    lines = result.stdout.splitlines()
    assert lines[2] == "starting 6 worker processes..." and lines[3] == "worker processes ready: 6/6", lines


def test_missing_matplotlib_is_one_line_before_running(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(DemoError, match=r"pip install 'shared-rewardnorm\[plot\]'"):
        require_matplotlib()
    assert main(["demo", "--plot", str(tmp_path / "x.png")]) == 1
    captured = capsys.readouterr()
    assert_one_error_line(captured.err, "shared-rewardnorm[plot]")
    assert captured.out == ""  # refused before the demo started
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["demo", "--keep"], "need a url"),
    (["--cluster", "demo"], "need a url"),
    (["demo", "--workers", "2"], "must be >= 3"),
    (["demo", "--batches", "0"], "must be >= 1"),
])
def test_demo_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("options", [{"workers": 2}, {"batches": 0}, {"batch_size": 0}, {"warmup": -1},
                                     {"keep": True}, {"cluster": True}])
def test_demo_config_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DemoConfig(**options)


class KillOneWorker(DemoObserver):
    """Terminates one worker at the first progress report, as a crash would."""

    def progress(self, done: int, total: int, elapsed: float) -> None:
        if done == 1:
            multiprocessing.active_children()[0].terminate()


def test_a_dead_worker_stops_the_demo_cleanly() -> None:
    with pytest.raises(DemoError, match=r"worker \S+ exited with code -15"):
        run_demo(DemoConfig(batches=50, batch_size=4), KillOneWorker())
    assert multiprocessing.active_children() == []  # the others were stopped and reaped


@pytest.mark.own_server
@pytest.mark.slow
def test_demo_on_a_cluster() -> None:
    with one_master_cluster() as cluster:
        result = run_cli("--url", cluster.url, "--cluster", "demo", *SMALL)
        assert_all_checks_pass(result)
        client = redis.Redis.from_url(cluster.url)
        try:
            assert client.dbsize() == 0  # cleaned up
        finally:
            client.close()
