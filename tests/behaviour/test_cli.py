"""The ``shared-rewardnorm`` command line on the shared server: what it prints matches the store,
snapshots round-trip exactly, bad input and unreachable servers give one line and no write.
(Without a server: tests/unit/test_cli.py; ``snapshot``, a cluster and ``load-functions`` on
servers of their own: tests/deployment/test_cli.py.)

Most tests call ``main([...])`` in process; a few run the installed console script, as a user
would."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from shared_rewardnorm import StatsStore
from shared_rewardnorm.cli.bgsave import snapshot_masters
from tests.support.cli import PROG, assert_one_error_line, cli_command, run
from tests.support.redis_servers import free_port

SEED_VALUES = {
    "gsm8k": [1.0, -1.0, 1.0, 1.0, -1.0, 1.0],
    "tool_use": [0.125, 0.5, 0.875, 0.3333333333333333],
    "code": [12.0, 40.0, 100.0, 0.0, 57.0],
}


def namespace_keys(client: redis.Redis, namespace: str) -> dict[bytes, Any]:
    """Every key of the namespace with its content, to show that nothing changed."""
    return {key: client.hgetall(key) if client.type(key) == b"hash" else client.type(key)
            for key in sorted(client.scan_iter(match=f"{namespace}:*", count=1000))}


@pytest.fixture
def seeded(real_client: redis.Redis, namespace: str) -> StatsStore:
    """The test's namespace with three envs of statistics."""
    store = StatsStore(real_client, namespace)
    for env, values in SEED_VALUES.items():
        store.update(env, values)
    return store


@pytest.fixture
def cli(real_redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]) -> Any:
    """``main`` with the real server and the test's namespace given before the command."""
    def invoke(*argv: str) -> tuple[int, str, str]:
        return run(capsys, "--url", real_redis_url, "--namespace", namespace, *argv)
    return invoke


def table_rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line and not line.startswith("-")}


# --- stats and watch ----------------------------------------------------------------------------


@pytest.mark.real_redis
def test_stats_table_matches_store(cli: Any, seeded: StatsStore) -> None:
    code, out, err = cli("stats")
    assert (code, err) == (0, "")
    rows = table_rows(out)
    expected = {**seeded.all(), "aggregate": seeded.aggregate()}
    assert set(rows) == set(expected)
    for name, stats in expected.items():
        numbers = [f"{v:.6g}" for v in (stats.mean, stats.std, stats.min, stats.max)]
        assert rows[name][:5] == [str(stats.count), *numbers]
        if name != "aggregate":  # no half-life: no recent mean or std; not frozen; merged seconds ago
            assert rows[name][5:8] == ["-", "-", "no"] and re.fullmatch(r"\d+s", rows[name][8])


def summary(values: list[float]) -> dict[str, Any]:
    """What ``stats --json`` must show for these samples, computed here from the samples
    (correctly rounded sums), not by the library."""
    mean = math.fsum(values) / len(values)
    m2 = math.fsum((v - mean) ** 2 for v in values)
    return {"count": len(values), "mean": mean, "m2": m2, "std": math.sqrt(m2 / len(values)),
            "min": min(values), "max": max(values)}


def assert_summary(shown: dict[str, Any], values: list[float]) -> None:
    expected = summary(values)
    assert {name: shown[name] for name in expected} == pytest.approx(expected, rel=1e-13, abs=1e-15)


@pytest.mark.real_redis
def test_stats_json_is_exact(cli: Any, seeded: StatsStore, namespace: str) -> None:
    """Every field of every env, as known from what was done to them: totals of the samples, a
    half-life and its decayed statistics, the frozen flag, merges, a recent server time. Floats
    are the stored doubles exactly."""
    seeded.configure("tool_use", half_life=4)
    seeded.update("tool_use", [1.0, 3.0])  # the decayed statistics start here: weight 2, mean 2, m2 2
    seeded.freeze("code")
    code, out, _ = cli("stats", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["namespace"] == namespace and set(shown) == {"namespace", "envs", "aggregate"}
    values = {**SEED_VALUES, "tool_use": SEED_VALUES["tool_use"] + [1.0, 3.0]}
    assert set(shown["envs"]) == set(values)
    for env, entry in shown["envs"].items():
        assert set(entry) == {"count", "mean", "m2", "std", "min", "max", "decayed", "half_life", "frozen",
                              "merges", "updated_at", "epoch", "origin"}
        assert entry["origin"] == "merge" and entry["epoch"] == seeded.info(env).epoch
        assert_summary(entry, values[env])
        assert entry["mean"] == seeded.get(env).mean and entry["m2"] == seeded.get(env).m2  # exact
        assert entry["frozen"] is (env == "code") and entry["merges"] == (2 if env == "tool_use" else 1)
        assert isinstance(entry["updated_at"], int) and abs(entry["updated_at"] / 1000 - time.time()) < 120
        if env == "tool_use":
            assert entry["half_life"] == 4.0 and entry["decayed"] == {"weight": 2.0, "mean": 2.0, "m2": 2.0, "std": 1.0}
        else:
            assert entry["half_life"] is None and entry["decayed"] is None
    assert_summary(shown["aggregate"], [v for env in sorted(values) for v in values[env]])


@pytest.mark.real_redis
def test_stats_of_a_named_env_without_statistics_says_so_and_fails(cli: Any, seeded: StatsStore,
                                                                   namespace: str) -> None:
    code, out, err = cli("stats", "gsm8k", "absent", "--json")
    assert code == 1
    shown = json.loads(out)
    assert set(shown["envs"]) == {"gsm8k"}
    assert_summary(shown["envs"]["gsm8k"], SEED_VALUES["gsm8k"])
    assert_summary(shown["aggregate"], SEED_VALUES["gsm8k"])
    assert_one_error_line(err, "env 'absent' has no statistics", f"{namespace}:{{absent}} does not exist")
    code, out, err = cli("stats", "nosuchenv")
    assert (code, out) == (1, "")
    assert_one_error_line(err, "env 'nosuchenv' has no statistics")


def break_two_envs(client: redis.Redis, namespace: str) -> None:
    """A corrupt hash and a key of another type next to the seeded envs: both are named by the
    commands that survey the namespace."""
    client.hset(f"{namespace}:{{broken}}", mapping={"count": "3", "mean": "zero", "m2": "0", "min": "0", "max": "0"})
    client.set(f"{namespace}:{{other}}", "not a hash")


@pytest.mark.real_redis
@pytest.mark.parametrize("json_output", [False, True], ids=["table", "json"])
def test_stats_of_a_namespace_shows_every_healthy_env_and_names_the_broken(
        cli: Any, seeded: StatsStore, real_client: redis.Redis, namespace: str, json_output: bool) -> None:
    break_two_envs(real_client, namespace)
    code, out, err = cli("stats", *(["--json"] if json_output else []))
    assert code == 1
    shown = set(json.loads(out)["envs"]) if json_output else set(table_rows(out)) - {"aggregate"}
    assert shown == set(SEED_VALUES)
    broken, other = err.strip().splitlines()
    assert_one_error_line(broken, "env 'broken'", "corrupt", "mean")
    assert_one_error_line(other, "env 'other'", "holds a non-hash value")
    code, out, err = cli("stats", "gsm8k", "broken", "other", *(["--json"] if json_output else []))
    assert code == 1
    shown = set(json.loads(out)["envs"]) if json_output else set(table_rows(out)) - {"aggregate"}
    assert shown == {"gsm8k"}
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{PROG}: error: env ") for line in lines), err
    assert "'broken'" in lines[0] and "corrupt" in lines[0] and "mean" in lines[0]
    assert "'other'" in lines[1] and "non-hash" in lines[1]


@pytest.mark.real_redis
def test_watch_shows_every_healthy_env_and_names_the_broken(cli: Any, seeded: StatsStore,
                                                            real_client: redis.Redis, namespace: str) -> None:
    break_two_envs(real_client, namespace)
    code, out, _ = cli("watch", "--iterations", "1", "--interval", "0.01")
    assert code == 1
    assert set(SEED_VALUES) <= set(table_rows(out.split("\n", 1)[1]))
    assert "error: env 'broken'" in out


@pytest.mark.real_redis
def test_export_writes_every_healthy_env_and_names_the_broken(cli: Any, seeded: StatsStore, tmp_path: Path,
                                                              real_client: redis.Redis, namespace: str) -> None:
    break_two_envs(real_client, namespace)
    path = tmp_path / "snapshot.json"
    code, _, err = cli("export", str(path))
    assert code == 1
    assert set(json.loads(path.read_text())["envs"]) == set(SEED_VALUES)
    exported, broken, other = err.strip().splitlines()
    assert exported.startswith(f"exported 3 envs of namespace {namespace!r}")
    assert_one_error_line(broken, "env 'broken' left out of the snapshot", "corrupt")
    assert_one_error_line(other, "env 'other' left out of the snapshot", "holds a non-hash value")


@pytest.mark.real_redis
def test_stats_of_empty_namespace(cli: Any, real_client: redis.Redis, namespace: str) -> None:
    code, out, _ = cli("stats")
    assert code == 0
    assert f"no statistics in namespace {namespace!r}" in out


@pytest.mark.real_redis
def test_options_after_the_command(real_redis_url: str, namespace: str, seeded: StatsStore,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "stats", "--url", real_redis_url, "--namespace", namespace, "--json")
    assert code == 0
    assert json.loads(out)["aggregate"]["count"] == seeded.aggregate().count


@pytest.mark.real_redis
def test_watch_refreshes_then_stops(cli: Any, seeded: StatsStore) -> None:
    code, out, _ = cli("watch", "--iterations", "2", "--interval", "0.05")
    assert code == 0
    assert out.count("Ctrl-C to stop") == 2
    assert out.count("aggregate") == 2
    assert "\033[2J" not in out  # not a terminal: no screen clearing


@pytest.mark.real_redis
def test_watch_ctrl_c_exits_cleanly(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupt)
    code, out, err = cli("watch")
    assert (code, err) == (0, "")
    assert out.count("Ctrl-C to stop") == 1


# --- export and import --------------------------------------------------------------------------


@pytest.mark.real_redis
def test_export_import_round_trip_is_exact(cli: Any, seeded: StatsStore, real_client: redis.Redis,
                                           real_redis_url: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "snapshot.json"
    code, _, err = cli("export", str(target))
    assert code == 0 and "exported 3 envs" in err
    other = seeded.namespace + "-copy"
    try:
        code, out, _ = run(capsys, "--url", real_redis_url, "--namespace", other, "import", str(target))
        assert code == 0 and "restored 3 envs" in out
        assert StatsStore(real_client, other).all() == seeded.all()  # bit for bit
    finally:
        for key in real_client.scan_iter(match=f"{other}:*"):
            real_client.delete(key)


@pytest.mark.real_redis
def test_export_to_stdout_and_import_from_stdin(cli: Any, seeded: StatsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = cli("export", "-")
    assert code == 0
    exported = json.loads(out)
    assert exported["version"] == 2
    assert exported["envs"] == {env: seeded.info(env).to_dict() for env in seeded.all()}
    before = seeded.all()
    for env in before:
        seeded.reset(env)
    monkeypatch.setattr(sys, "stdin", io.StringIO(out))
    code, _, _ = cli("import", "-")
    assert code == 0
    assert seeded.all() == before


def snapshot_text(envs: dict[str, Any], **top: Any) -> str:
    return json.dumps({"format": "shared_rewardnorm.snapshot", "version": 1, "namespace": "x", "envs": envs, **top})


GOOD_ENV = {"count": 2, "mean": 0.5, "m2": 0.5, "min": 0.0, "max": 1.0}
MALFORMED = {
    "bad JSON": ('{"format": "shared_rewardnorm.snapshot", "envs": {', "not a JSON snapshot"),
    "not an object": ("[1, 2]", "must be a JSON object"),
    "wrong format": (snapshot_text({}, format="something.else"), "not a shared_rewardnorm snapshot"),
    "wrong version": (snapshot_text({}, version=99), "unsupported snapshot version 99"),
    "negative m2": (snapshot_text({"new": GOOD_ENV, "gsm8k": {**GOOD_ENV, "m2": -1.0}}), "m2 must be >= 0"),
    "env name with braces": (snapshot_text({"new": GOOD_ENV, "a{b}": GOOD_ENV}), "braces are reserved"),
    "NaN mean": (snapshot_text({"new": GOOD_ENV}).replace('"mean": 0.5', '"mean": NaN'), "must be finite"),
}


@pytest.mark.real_redis
@pytest.mark.parametrize("case", list(MALFORMED))
def test_import_refuses_malformed_files_before_writing(case: str, cli: Any, seeded: StatsStore,
                                                       real_client: redis.Redis, namespace: str,
                                                       tmp_path: Path) -> None:
    text, message = MALFORMED[case]
    path = tmp_path / "bad.json"
    path.write_text(text)
    before = namespace_keys(real_client, namespace)
    code, out, err = cli("import", str(path))
    assert code == 1 and out == ""
    assert_one_error_line(err, str(path), message, "nothing was written")
    assert namespace_keys(real_client, namespace) == before


def test_import_of_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "--url", f"redis://127.0.0.1:{free_port()}/0", "import", str(tmp_path / "nope.json"))
    assert code == 1
    assert_one_error_line(err, "nope.json")


# --- reset --------------------------------------------------------------------------------------


@pytest.mark.real_redis
def test_reset_needs_yes(cli: Any, seeded: StatsStore) -> None:
    code, out, err = cli("reset", "gsm8k")
    assert code == 2 and out == ""
    assert_one_error_line(err, "--yes")
    assert seeded.get("gsm8k").count == len(SEED_VALUES["gsm8k"])

    code, out, _ = cli("reset", "gsm8k", "code", "--yes")
    assert code == 0 and "reset gsm8k" in out
    assert set(seeded.all()) == {"tool_use"}


@pytest.mark.real_redis
def test_reset_checks_every_name_before_deleting(cli: Any, seeded: StatsStore) -> None:
    code, _, err = cli("reset", "gsm8k", "bad{name}", "--yes")
    assert code == 1
    assert_one_error_line(err, "bad{name}")
    assert seeded.get("gsm8k").count == len(SEED_VALUES["gsm8k"])


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["stats"], ["stats", "--json"], ["watch", "--iterations", "1"],
                                  ["export", "-"], ["reset", "x", "--yes"], ["snapshot"]])
def test_no_server_is_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, _, err = run(capsys, "--url", url, *argv)
    assert code == 1
    assert_one_error_line(err, f"cannot reach Redis at {url}")


def test_url_from_the_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("SHARED_REWARDNORM_URL", url)
    code, _, err = run(capsys, "stats")
    assert code == 1
    assert_one_error_line(err, url)


@pytest.mark.real_redis
def test_wrong_type_at_a_key(cli: Any, real_client: redis.Redis, namespace: str) -> None:
    real_client.set(f"{namespace}:{{gsm8k}}", "not a hash")
    code, _, err = cli("stats", "gsm8k")
    assert code == 1
    assert_one_error_line(err, f"{namespace}:{{gsm8k}}", "non-hash")


@pytest.mark.real_redis
def test_corrupt_hash(cli: Any, real_client: redis.Redis, namespace: str) -> None:
    real_client.hset(f"{namespace}:{{gsm8k}}", mapping={"count": "3", "mean": "zero", "m2": "0", "min": "0",
                                                       "max": "0"})
    code, _, err = cli("stats", "gsm8k")
    assert code == 1
    assert_one_error_line(err, "corrupt", "mean")


# --- the installed command ----------------------------------------------------------------------


@pytest.mark.real_redis
def test_console_script(real_redis_url: str, namespace: str, seeded: StatsStore) -> None:
    result = subprocess.run([*cli_command(), "--url", real_redis_url, "--namespace", namespace, "stats", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert_summary(json.loads(result.stdout)["aggregate"], [v for env in sorted(SEED_VALUES) for v in SEED_VALUES[env]])


def test_console_script_without_server() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    result = subprocess.run([*cli_command(), "--url", url, "stats"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "cannot reach Redis", "Connection refused")
    assert "hunter2" not in result.stderr


# --- snapshot -----------------------------------------------------------------------------------


def test_embedded_store_cannot_snapshot() -> None:
    store = StatsStore(None, "snapshot-test")
    with pytest.raises(TypeError, match="embedded store"):
        snapshot_masters(store.client)


# --- configure, freeze, unfreeze ---------------------------------------------------------------


@pytest.mark.real_redis
def test_configure_freeze_unfreeze_and_what_stats_shows(cli: Any, seeded: StatsStore) -> None:
    assert cli("configure", "gsm8k", "--half-life", "50") == (0, "gsm8k: half-life 50 samples (decayed statistics "
                                                               "start afresh)\n", "")
    assert cli("configure", "gsm8k", "--half-life", "50")[1] == "gsm8k: half-life 50 samples (unchanged)\n"
    seeded.update("gsm8k", [1.0, 3.0])
    assert cli("freeze", "gsm8k", "code") == (0, "gsm8k: frozen\ncode: frozen\n", "")
    assert cli("freeze", "code")[1] == "code: frozen (already)\n"
    before = seeded.get("code")
    assert seeded.update("code", [5.0]) == before
    rows = table_rows(cli("stats")[1])
    assert rows["gsm8k"][5:8] == ["2", "1", "yes"] and rows["code"][5:8] == ["-", "-", "yes"]
    shown = json.loads(cli("stats", "--json", "gsm8k")[1])["envs"]["gsm8k"]
    assert shown["decayed"] == {"weight": 2.0, "mean": 2.0, "m2": 2.0, "std": 1.0} and shown["half_life"] == 50
    assert cli("unfreeze", "gsm8k", "code") == (0, "gsm8k: unfrozen\ncode: unfrozen\n", "")
    assert cli("configure", "gsm8k", "--no-decay")[1] == "gsm8k: no decay (decayed statistics deleted)\n"
    assert seeded.info("gsm8k").decayed is None and not seeded.info("code").frozen


@pytest.mark.real_redis
def test_stats_lists_configured_and_frozen_envs_without_statistics(cli: Any, seeded: StatsStore) -> None:
    """``stats`` shows every env ``envs`` and ``export`` list: a frozen or configured env with
    no statistics yet is a row, not nothing."""
    assert cli("freeze", "new", "--create")[0] == 0
    assert cli("configure", "decaying", "--half-life", "10", "--create")[0] == 0
    assert seeded.envs() == ["code", "decaying", "gsm8k", "new", "tool_use"]
    rows = table_rows(cli("stats")[1])
    assert set(rows) == {*seeded.envs(), "aggregate"}
    assert rows["new"][0] == "0" and rows["new"][7] == "yes" and rows["decaying"][5:8] == ["0", "0", "no"]
    shown = json.loads(cli("stats", "--json")[1])
    assert set(shown["envs"]) == set(seeded.export()["envs"]) == set(seeded.envs())
    assert shown["envs"]["new"]["frozen"] is True and shown["envs"]["new"]["count"] == 0
    assert shown["envs"]["decaying"]["half_life"] == 10.0
    assert_summary(shown["aggregate"], [v for env in sorted(SEED_VALUES) for v in SEED_VALUES[env]])
    assert set(seeded.infos()) == set(seeded.envs())
    assert "reward_norm/new/count" not in seeded.metrics()  # metrics of all envs: those with statistics


@pytest.mark.real_redis
def test_freeze_checks_every_name_before_the_first_change(cli: Any, seeded: StatsStore) -> None:
    code, _, err = cli("freeze", "gsm8k", "bad{name}")
    assert code == 1 and "bad{name}" in err
    assert not seeded.info("gsm8k").frozen


def test_commands_on_a_missing_env_need_create_and_change_nothing(cli: Any, seeded: StatsStore) -> None:
    """freeze/unfreeze/configure of a mistyped env would create it; reset of one would succeed."""
    for argv in (["freeze", "gsm8k", "gsm8kk"], ["unfreeze", "gsm8kk"], ["configure", "gsm8kk", "--half-life", "5"]):
        code, _, err = cli(*argv)
        assert code == 1
        assert_one_error_line(err, "no env 'gsm8kk' in namespace", "add --create")
    assert not seeded.info("gsm8k").frozen and "gsm8kk" not in seeded.envs()
    code, _, err = cli("reset", "gsm8k", "gsm8kk", "--yes")
    assert code == 1
    assert_one_error_line(err, "no env 'gsm8kk'", "nothing was reset")
    assert seeded.get("gsm8k").count > 0


def test_reset_says_what_happens_to_the_frozen_flag_and_the_listing_agrees(cli: Any, seeded: StatsStore) -> None:
    assert cli("freeze", "gsm8k")[0] == 0
    code, out, _ = cli("reset", "gsm8k", "--yes")
    assert code == 0 and "count 6 -> 0" in out and "still frozen: merges add nothing until `unfreeze`" in out
    rows = table_rows(cli("stats")[1])
    assert rows["gsm8k"][0] == "0" and rows["gsm8k"][7] == "yes"  # listed: frozen, with count 0
    assert seeded.info("gsm8k").frozen


def test_export_refuses_to_replace_a_file_with_an_empty_snapshot(cli: Any, seeded: StatsStore,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    assert cli("export", str(path))[0] == 0
    good = path.read_text()
    code, _, err = cli("--namespace", "mistyped", "export", str(path))
    assert code == 1
    assert_one_error_line(err, "namespace 'mistyped' has no envs to export", f"refusing to replace {path}", "--force")
    assert path.read_text() == good
    assert cli("--namespace", "mistyped", "export", str(path), "--force")[0] == 0
    assert json.loads(path.read_text())["envs"] == {}
    assert [p.name for p in tmp_path.iterdir()] == ["backup.json"]  # no temporary file left
    code, _, err = cli("export", str(tmp_path / "no-such-dir" / "x.json"))
    assert code == 1
    assert_one_error_line(err, f"cannot write {tmp_path / 'no-such-dir' / 'x.json'}", "No such file or directory")
