"""The command line against servers of its own: ``snapshot`` really saves (and waits for a save
already running, and times out), on a cluster too, ``load-functions`` lets a functions-only store
run, a blank namespace or URL deletes nothing, and the demo runs on a cluster."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from shared_rewardnorm import StatsStore
from shared_rewardnorm._redis.connection import close_client
from shared_rewardnorm.cli import main
from tests.support.cli import SMALL_DEMO, assert_all_checks_pass, assert_one_error_line, run, run_cli
from tests.support.redis_servers import RedisServer


@pytest.mark.parametrize("argv, message", [
    (["--namespace", "", "reset", "gsm8k", "--yes"], "--namespace must not be empty or blank"),
    (["--namespace", "  ", "reset", "gsm8k", "--yes"], "--namespace must not be empty or blank"),
    (["reset", "gsm8k", "--yes", "--namespace", ""], "--namespace must not be empty or blank"),
    (["--url", "", "reset", "gsm8k", "--yes"], "--url must not be empty or blank"),
    (["stats", "--url", " "], "--url must not be empty or blank"),
])
def test_blank_namespace_or_url_is_refused_and_nothing_is_deleted(
        argv: list[str], message: str, server: RedisServer, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The default namespace on the server the default URL would reach: it must survive.
    monkeypatch.setenv("SHARED_REWARDNORM_URL", server.url)
    StatsStore(server.url).update("gsm8k", [1.0, 2.0])
    if "--url" not in argv:
        argv = ["--url", server.url, *argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert StatsStore(server.url).get("gsm8k").count == 2


@pytest.mark.own_server
def test_snapshot_writes_the_rdb_file(server: RedisServer, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    store = StatsStore(server.url)
    store.update("gsm8k", [1.0, -1.0])
    store.client.close()
    code, out, err = run(capsys, "--url", server.url, "snapshot")
    assert (code, err) == (0, "")
    assert (tmp_path / "dump.rdb").exists()
    assert str(tmp_path / "dump.rdb") in out
    assert f"127.0.0.1:{server.port}" in out and " ok " in out


def slow_saves(server: RedisServer, keys: int, delay_us: int) -> redis.Redis:
    """A client of ``server`` whose background saves take about keys * delay_us microseconds."""
    client = redis.Redis.from_url(server.url)
    client.config_set("rdb-key-save-delay", delay_us)
    client.mset({f"k{i}": i for i in range(keys)})
    return client


@pytest.mark.own_server
def test_snapshot_waits_for_a_save_already_running(server: RedisServer, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    client = slow_saves(server, keys=5, delay_us=100_000)  # each save takes about 0.5 s
    try:
        client.bgsave(schedule=False)
        started = time.monotonic()
        code, _, err = run(capsys, "--url", server.url, "snapshot")
        assert (code, err) == (0, "")
        assert time.monotonic() - started > 0.7  # the running save, then ours
        info = client.info("persistence")
        assert info["rdb_bgsave_in_progress"] == 0 and info["rdb_last_bgsave_status"] == "ok"
        assert (tmp_path / "dump.rdb").exists()
    finally:
        client.config_set("rdb-key-save-delay", 0)
        client.close()


@pytest.mark.own_server
def test_snapshot_timeout(server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    client = slow_saves(server, keys=5, delay_us=200_000)
    try:
        code, _, err = run(capsys, "--url", server.url, "snapshot", "--timeout", "0.2")
        assert code == 1
        assert_one_error_line(err, "still running after 0.2 s")
    finally:
        client.config_set("rdb-key-save-delay", 0)
        client.close()


@contextmanager
def one_master_cluster() -> Iterator[Any]:
    """A private single-master Redis Cluster (skipped without redis-server and redis-cli)."""
    from tests.support.redis_cluster import RedisCluster, cluster_tools_missing

    reason = cluster_tools_missing()
    if reason:
        pytest.skip(reason)
    with RedisCluster(masters=1) as cluster:
        yield cluster


@pytest.mark.own_server
@pytest.mark.slow
def test_cluster_stats_and_snapshot(capsys: pytest.CaptureFixture[str]) -> None:
    with one_master_cluster() as cluster:
        client = redis.cluster.RedisCluster.from_url(cluster.url)
        try:
            StatsStore(client, "cli").update("gsm8k", [1.0, -1.0, 1.0])
        finally:
            close_client(client)  # RedisCluster.close() alone leaves the node sockets open
        code, out, _ = run(capsys, "--url", cluster.url, "--cluster", "--namespace", "cli", "stats", "--json")
        assert code == 0
        assert json.loads(out)["envs"]["gsm8k"]["count"] == 3
        code, out, err = run(capsys, "--url", cluster.url, "--cluster", "snapshot")
        assert (code, err) == (0, "")
        assert all(f"127.0.0.1:{port}" in out for port in cluster.ports)
        assert "dump.rdb" in out


@pytest.mark.own_server
def test_load_functions_lets_a_functions_only_store_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shared_rewardnorm._redis.scripts import library_name

    with RedisServer(tmp_path, ["--save", ""]) as server:
        assert main(["--url", server.url, "load-functions"]) == 0
        assert library_name() in capsys.readouterr().out
        with StatsStore(server.url, "fn", functions=True) as store:
            assert store.update("env", [1.0, 3.0]).mean == 2.0


@pytest.mark.own_server
@pytest.mark.slow
def test_demo_on_a_cluster() -> None:
    with one_master_cluster() as cluster:
        result = run_cli("--url", cluster.url, "--cluster", "demo", *SMALL_DEMO)
        assert_all_checks_pass(result)
        client = redis.Redis.from_url(cluster.url)
        try:
            assert client.dbsize() == 0  # cleaned up
        finally:
            client.close()
