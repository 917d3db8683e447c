"""Start and stop a private Redis Cluster for tests and benchmarks: N masters, no replicas,
each a ``redis-server --cluster-enabled yes`` in its own temp dir on free loopback ports.

    with RedisCluster(masters=3) as cluster:
        client = redis.cluster.RedisCluster.from_url(cluster.url)

Three or more masters are joined with ``redis-cli --cluster create``; fewer (which that command
refuses) get their slots with ``CLUSTER ADDSLOTSRANGE`` and meet each other with ``CLUSTER
MEET``. ``start()`` returns once every node reports ``cluster_state:ok``, knows every other
node, and maps all 16384 slots exactly as every other node does, so a client built from any
seed sees the final topology. Everything is torn down on exit (processes stopped, dirs removed).

The nodes share ``redis_servers``' process plumbing (free ports, waiting for PING, stopping);
like it, this needs only the stdlib and redis-py (no pytest): ``benchmarks/bench_cluster.py``
imports it too.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tests.support.redis_servers import free_port, start_on_a_free_port, stop_process, wait_until_answering

__all__ = ["SLOTS", "ClusterNode", "RedisCluster", "cluster_tools_missing"]

SLOTS = 16384
#: Options every node gets (on top of port, bind, dir, logfile).
NODE_OPTIONS = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000", "--appendonly", "no", "--save", ""]


def cluster_tools_missing() -> str | None:
    """Why a cluster cannot be started here (``redis-server``/``redis-cli`` missing), or None."""
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not on PATH" if missing else None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _server_major_version() -> int:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True).stdout
    # "Redis server v=7.0.15 sha=..."
    version = out.split("v=", 1)[1].split()[0]
    return int(version.split(".")[0])


def _pick_ports(explicit_bus_port: bool) -> tuple[int, int]:
    """A client port and a cluster-bus port, both free right now.

    Redis >= 7 takes ``--cluster-port``, so both come from the kernel. Older servers always use
    port + 10000 for the bus, so we look for a port whose +10000 twin is free too.
    """
    if explicit_bus_port:
        port = free_port()
        bus = free_port()
        while bus == port:
            bus = free_port()
        return port, bus
    for _ in range(1000):
        port = random.randint(20000, 55000)
        if _port_free(port) and _port_free(port + 10000):
            return port, port + 10000
    raise RuntimeError("found no free port pair (p, p + 10000)")


class ClusterNode:
    """One ``redis-server --cluster-enabled yes`` child process."""

    def __init__(self, directory: Path, explicit_bus_port: bool) -> None:
        self.directory = directory
        self.explicit_bus_port = explicit_bus_port
        self.port, self.bus_port = _pick_ports(explicit_bus_port)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def command(self) -> list[str]:
        bus = ["--cluster-port", str(self.bus_port)] if self.explicit_bus_port else []
        return ["redis-server", *NODE_OPTIONS, *bus, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--daemonize", "no", "--logfile", str(self.log)]

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain (non-cluster) client of this node only; close it after use."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=5, **kwargs)

    def start(self) -> None:
        """Start the node and wait until it answers PING (at most 10 s)."""
        start_on_a_free_port(self._start_once, self._move)

    def _move(self) -> None:
        self.port, self.bus_port = _pick_ports(self.explicit_bus_port)

    def _start_once(self) -> None:
        # A fresh node each attempt: a half-started one may have written nodes.conf.
        for stale in ("nodes.conf", "redis.log"):
            (self.directory / stale).unlink(missing_ok=True)
        self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            wait_until_answering(self.process, client, self.output, name=f"redis-server on {self.port}")
        finally:
            client.close()

    def output(self) -> str:
        """What the process printed plus its log (for error messages)."""
        text = ""
        if self.process is not None and self.process.stdout and self.process.poll() is not None:
            text += self.process.stdout.read().decode(errors="replace")
        if self.log.exists():
            text += self.log.read_text(errors="replace")
        return text

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s, reap; safe to call twice."""
        stop_process(self.process)


class RedisCluster:
    """A private Redis Cluster of ``masters`` masters (no replicas); a context manager.

    Attributes after ``start()``: ``url`` (a seed node, ``redis://127.0.0.1:<port>``), ``urls``,
    ``ports``, ``nodes`` (``ClusterNode``s, in creation order).
    """

    def __init__(self, masters: int = 3, *, ready_timeout: float = 60.0) -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        reason = cluster_tools_missing()
        if reason:
            raise RuntimeError(reason)
        self.masters = masters
        self.ready_timeout = ready_timeout
        self.nodes: list[ClusterNode] = []
        self._root: Path | None = None

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        """A seed node's URL, for ``RedisCluster.from_url`` or ``StatsStore(url, cluster=True)``."""
        return self.urls[0]

    def start(self) -> RedisCluster:
        try:
            self._root = Path(tempfile.mkdtemp(prefix="srn-cluster-"))
            explicit_bus_port = _server_major_version() >= 7
            for index in range(self.masters):
                directory = self._root / f"node{index}"
                directory.mkdir()
                node = ClusterNode(directory, explicit_bus_port)
                self.nodes.append(node)
                node.start()
            if self.masters >= 3:
                self._create_with_redis_cli()
            else:
                self._create_by_hand()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _create_with_redis_cli(self) -> None:
        command = ["redis-cli", "--cluster", "create", *(node.address for node in self.nodes),
                   "--cluster-replicas", "0", "--cluster-yes"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.ready_timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{' '.join(command)} did not finish in {self.ready_timeout} s") from exc
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def _create_by_hand(self) -> None:
        """One or two masters (``redis-cli --cluster create`` wants three): split the slots
        evenly, give every node its own config epoch, and introduce them."""
        bounds = [SLOTS * i // self.masters for i in range(self.masters + 1)]
        for index, node in enumerate(self.nodes):
            client = node.client()
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[index], bounds[index + 1] - 1)
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
                for other in self.nodes[:index]:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port, other.bus_port)
            finally:
                client.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        problem = "not checked yet"
        while time.monotonic() < deadline:
            problem = self._readiness_problem()
            if problem is None:
                return
            time.sleep(0.1)
        logs = "\n".join(f"--- node {n.port}:\n{n.output()[-1500:]}" for n in self.nodes)
        raise RuntimeError(f"cluster not ready after {self.ready_timeout} s: {problem}\n{logs}")

    def _readiness_problem(self) -> str | None:
        """None once every node is ok, knows all nodes, and agrees on the full slot map."""
        maps = []
        for node in self.nodes:
            client = node.client()
            try:
                info = client.cluster("INFO")
                slots = client.cluster("SLOTS")
            except redis.RedisError as exc:
                return f"node {node.port}: {exc}"
            finally:
                client.close()
            if info.get("cluster_state") != "ok":
                return f"node {node.port}: cluster_state {info.get('cluster_state')}"
            if int(info.get("cluster_slots_assigned", 0)) != SLOTS:
                return f"node {node.port}: {info.get('cluster_slots_assigned')} slots assigned"
            if int(info.get("cluster_known_nodes", 0)) != self.masters:
                return f"node {node.port}: knows {info.get('cluster_known_nodes')} nodes"
            maps.append(_slot_map(slots))
        if any(m != maps[0] for m in maps):
            return "nodes disagree on the slot map"
        if sum(end - start + 1 for start, end, _ in maps[0]) != SLOTS:
            return "slot map does not cover every slot"
        if sorted({port for _, _, port in maps[0]}) != sorted(self.ports):
            return "some master owns no slot"
        return None

    def slot_map(self) -> list[tuple[int, int, int]]:
        """``(first slot, last slot, port of the master)`` ranges, sorted, as the seed sees them."""
        client = self.nodes[0].client()
        try:
            return _slot_map(client.cluster("SLOTS"))
        finally:
            client.close()

    def port_of_slot(self, slot: int) -> int:
        """The port of the master owning ``slot``."""
        for start, end, port in self.slot_map():
            if start <= slot <= end:
                return port
        raise KeyError(slot)

    def stop(self) -> None:
        """Stop every node and remove the temp dirs; safe to call twice."""
        errors = []
        for node in self.nodes:
            try:
                node.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        if errors:
            raise errors[0]

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisCluster(masters={self.masters}, ports={self.ports})"


def _slot_map(reply: Any) -> list[tuple[int, int, int]]:
    """Normalize redis-py's CLUSTER SLOTS reply (a dict ``{(start, end): {"primary": (host,
    port), ...}}`` in redis-py >= 4, a raw list otherwise) to sorted ``(start, end, port)``."""
    ranges = []
    if isinstance(reply, dict):
        for (start, end), entry in reply.items():
            ranges.append((int(start), int(end), int(entry["primary"][1])))
    else:
        for entry in reply:
            ranges.append((int(entry[0]), int(entry[1]), int(entry[2][1])))
    return sorted(ranges)


if __name__ == "__main__":  # a quick manual check: python -m tests.support.redis_cluster [masters]
    import sys

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    started = time.monotonic()
    with RedisCluster(count) as demo:
        print(f"{demo!r} ready in {time.monotonic() - started:.1f} s; seed {demo.url}")
        for first, last, owner in demo.slot_map():
            print(f"  slots {first}-{last} on {owner}")
