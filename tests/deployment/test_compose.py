"""docker-compose.yml: the Redis it describes really persists what it promises.

There is no Docker engine in CI, so the compose file is checked in two halves: its structure
(healthcheck, loopback-only port, named volume mounted where the command's ``--dir`` points)
is read with PyYAML, and its ``command:`` is run with the local ``redis-server`` (in a temp dir,
on a free loopback port) to check that the persistence options take effect: CONFIG GET, the
multi-part AOF on disk, a restart after SIGKILL that recovers from the AOF, and BGSAVE's
dump.rdb. The local server is 7.0 while the image is 7.2; every option used here means the same
in both.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.support import REPO
from tests.support.helpers import require_binaries, wait_for
from tests.support.redis_servers import RedisServer

COMPOSE_FILE = REPO / "docker-compose.yml"


# --- reading the compose file -------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    with COMPOSE_FILE.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    assert isinstance(document, dict), "docker-compose.yml must be a mapping"
    return document


@pytest.fixture(scope="module")
def service(compose: dict[str, Any]) -> dict[str, Any]:
    """The ``redis`` service."""
    assert list(compose.get("services", {})) == ["redis"], "expected exactly one service, redis"
    return compose["services"]["redis"]


def server_args(service: dict[str, Any]) -> list[str]:
    """The arguments the service passes to redis-server (list form, as strings)."""
    command = service.get("command")
    assert isinstance(command, list), "command: must be in list form"
    assert all(isinstance(item, str) for item in command), (
        f"quote every command item so YAML keeps it a string (yes/no become booleans): {command!r}")
    assert command[0] == "redis-server", f"command must start with redis-server, got {command[0]!r}"
    return command[1:]


def options(args: list[str]) -> dict[str, list[str]]:
    """``--name value...`` groups as ``{name: [value, ...]}``, values joined across repeats."""
    parsed: dict[str, list[str]] = {}
    name = None
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:]
            parsed.setdefault(name, [])
        else:
            assert name is not None, f"value {arg!r} before any --option"
            parsed[name].append(arg)
    return parsed


def save_schedule(text: str) -> list[tuple[int, int]]:
    """``"900 1 300 10"`` as ``[(900, 1), (300, 10)]``."""
    numbers = [int(word) for word in text.split()]
    assert numbers and len(numbers) % 2 == 0, f"save needs <seconds> <changes> pairs, got {text!r}"
    return list(zip(numbers[0::2], numbers[1::2]))


def test_image_is_redis_7(service: dict[str, Any]) -> None:
    image = service["image"]
    name, _, tag = image.partition(":")
    # Redis >= 7.0 for the multi-part AOF (appendonlydir) the own-server tests check.
    assert name in {"redis", "docker.io/library/redis"} and tag.split(".")[0] == "7", image


def test_command_asks_for_aof_everysec_and_rdb(service: dict[str, Any]) -> None:
    opts = options(server_args(service))
    assert opts.get("appendonly") == ["yes"]
    assert opts.get("appendfsync") == ["everysec"]
    schedule = save_schedule(" ".join(opts.get("save", [])))
    assert all(seconds > 0 and changes > 0 for seconds, changes in schedule)
    assert opts.get("dir") == ["/data"]


def test_data_dir_is_the_named_volume(compose: dict[str, Any], service: dict[str, Any]) -> None:
    data_dir = options(server_args(service))["dir"][0]
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            mounts.append((source, rest.split(":")[0]))
        else:
            mounts.append((volume.get("source"), volume.get("target")))
    assert ("redis-data", data_dir) in mounts, f"redis-data must be mounted at {data_dir}: {mounts}"
    # Declared at the top level, so it is a named volume and not a bind mount of ./redis-data.
    assert "redis-data" in (compose.get("volumes") or {})


def test_port_is_published_on_loopback_only(service: dict[str, Any]) -> None:
    ports = service.get("ports")
    assert ports, "the port must be published for clients on the host"
    published = []
    for port in ports:
        if isinstance(port, str):
            parts = port.split(":")
            assert len(parts) == 3, f"{port!r} has no host IP, so Docker publishes it on every interface"
            host_ip, host_port, container_port = parts
        else:
            host_ip, host_port, container_port = (port.get("host_ip"), str(port.get("published")),
                                                  str(port.get("target")))
        assert host_ip == "127.0.0.1", f"{port!r} is reachable from outside the host"
        published.append((host_port, container_port))
    assert ("6379", "6379") in published
    assert "network_mode" not in service, "host networking would bypass the loopback binding"


def test_healthcheck_pings(service: dict[str, Any]) -> None:
    check = service.get("healthcheck")
    assert check and not check.get("disable"), "the service needs a healthcheck"
    test = check["test"]
    assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, test
    assert "redis-cli" in " ".join(test[1:]) and "ping" in " ".join(test[1:]), test
    assert int(check.get("retries", 3)) >= 1


def test_restarts_by_itself(service: dict[str, Any]) -> None:
    assert service.get("restart") in {"always", "unless-stopped", "on-failure"}


# --- running the compose command with the local redis-server ------------------------------------

@pytest.fixture
def redis_binaries() -> None:
    """Skip without redis-server and redis-cli (fail under SHARED_REWARDNORM_REQUIRE_REDIS=1)."""
    require_binaries("redis-server", "redis-cli")


def aof_files(directory: Path, appenddirname: str) -> dict[str, Path]:
    """The AOF manifest's files by type (b: base, i: incremental)."""
    aof_dir = directory / appenddirname
    manifests = list(aof_dir.glob("*.manifest"))
    assert len(manifests) == 1, f"expected one AOF manifest in {aof_dir}: {sorted(aof_dir.iterdir())}"
    files = {}
    for line in manifests[0].read_text().splitlines():
        fields = line.split()
        entry = dict(zip(fields[0::2], fields[1::2]))
        files[entry["type"]] = aof_dir / entry["file"]
    return files


def run_healthcheck(test: list[str], port: int, scratch: Path) -> subprocess.CompletedProcess[bytes]:
    """Run the compose healthcheck as Docker would, against the server on ``port``.

    In the container redis-cli's default port is the server's; here a ``redis-cli`` wrapper
    first on PATH adds ``-p <port>``, so the same command line reaches the test server.
    """
    wrapper_dir = scratch / "healthcheck-bin"
    wrapper_dir.mkdir(exist_ok=True)
    wrapper = wrapper_dir / "redis-cli"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("redis-cli")} -p {port} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{wrapper_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])
    if argv[0] == "redis-cli":
        argv[0] = str(wrapper)
    return subprocess.run(argv, capture_output=True, timeout=10, env=env)


@pytest.mark.own_server
def test_compose_command_persists(tmp_path: Path, service: dict[str, Any], redis_binaries: None) -> None:
    opts = options(server_args(service))
    with RedisServer(tmp_path, server_args(service)) as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        try:
            version = client.info("server")["redis_version"]
            assert int(version.split(".")[0]) >= 7, f"multi-part AOF needs Redis 7, this is {version}"
            config = client.config_get("*")
            assert config["appendonly"] == "yes"
            assert config["appendfsync"] == "everysec"
            assert save_schedule(config["save"]) == save_schedule(" ".join(opts["save"]))
            assert Path(config["dir"]).resolve() == tmp_path.resolve()

            # Redis 7 writes the AOF as a directory: a base file, incremental files, a manifest.
            appenddir = config["appenddirname"]
            assert (tmp_path / appenddir).is_dir()
            incremental = aof_files(tmp_path, appenddir)["i"]
            assert client.set("srn-compose:key", "persisted-value")
            # Written to the file before the reply in the common case; at most ~2 s late if an
            # everysec fsync is still running.
            wait_for(lambda: b"persisted-value" in incremental.read_bytes(), "the write in the AOF")
            assert not (tmp_path / "dump.rdb").exists(), "no snapshot should have been taken yet"

            healthy = run_healthcheck(service["healthcheck"]["test"], server.port, tmp_path)
            assert healthy.returncode == 0, healthy

            # A crash of the process: whatever comes back must come from the AOF (there is no RDB).
            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(timeout=10)
        finally:
            client.close()
    unhealthy = run_healthcheck(service["healthcheck"]["test"], server.port, tmp_path)
    assert unhealthy.returncode != 0, "the healthcheck must fail when nothing answers"

    with RedisServer(tmp_path, server_args(service)) as restarted:
        client = redis.Redis(port=restarted.port, decode_responses=True)
        try:
            assert client.get("srn-compose:key") == "persisted-value"
        finally:
            client.close()


@pytest.mark.own_server
def test_compose_command_snapshots(tmp_path: Path, service: dict[str, Any], redis_binaries: None) -> None:
    with RedisServer(tmp_path, server_args(service)) as server:
        client = redis.Redis(port=server.port, decode_responses=True)
        try:
            client.set("srn-compose:snap", "1")
            assert not (tmp_path / "dump.rdb").exists()
            # SCHEDULE: if an AOF rewrite happens to be running, save right after it instead of
            # refusing.
            client.execute_command("BGSAVE", "SCHEDULE")

            def saved() -> bool:
                # Redis writes temp-<pid>.rdb and renames it, so dump.rdb appears only when complete.
                info = client.info("persistence")
                return info["rdb_bgsave_in_progress"] == 0 and (tmp_path / "dump.rdb").is_file()

            wait_for(saved, "BGSAVE to write dump.rdb")
            info = client.info("persistence")
            assert info["rdb_last_bgsave_status"] == "ok"
            assert info["rdb_changes_since_last_save"] == 0
            assert (tmp_path / "dump.rdb").read_bytes().startswith(b"REDIS")
        finally:
            client.close()
