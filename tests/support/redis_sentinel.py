"""Start and stop a private Sentinel deployment for tests and benchmarks: a primary, one replica
and three Sentinels, each a ``redis-server`` in its own temp dir on free loopback ports.

    with SentinelGroup(tmp_path) as group:
        client = redis.Redis.from_url(...)   # or group.url, a redis+sentinel:// URL
        group.kill_primary()                 # SIGKILL; the Sentinels promote the replica
        group.wait_for_new_primary()

``lag`` (seconds) routes the replication stream through ``LagProxy``, which delivers what the
primary sends only after that delay and drops what it still holds when the primary dies: the
replication lag of a loaded network, which is what makes an asynchronous failover lose writes
the primary had acknowledged. ``start()`` returns once every Sentinel knows the replica and the
two other Sentinels (so a failover can be elected at once). Only the stdlib and redis-py.
"""

from __future__ import annotations

import collections
import select
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

from tests.support.redis_servers import NO_PERSISTENCE, RedisServer, free_port, stop_process, wait_until_answering
from tests.support.tcp_proxy import TcpProxy

__all__ = ["SERVICE", "LagProxy", "SentinelGroup"]

SERVICE = "srn-primary"


class LagProxy(TcpProxy):
    """Forward 127.0.0.1:<port> to ``upstream``: bytes towards the client (the replica) leave
    ``lag`` seconds after they arrived, bytes towards the upstream at once. When the upstream
    closes, what is still held is dropped, as a link that dies with data in flight. Starts
    serving at once."""

    def __init__(self, upstream_port: int, lag: float) -> None:
        super().__init__(upstream_port)
        self.lag = lag
        self.start()

    def _accepted(self, client: socket.socket) -> None:
        upstream = self._connect_upstream(client)
        if upstream is None:
            return
        self._track(client, upstream)
        threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        held: collections.deque[tuple[float, bytes]] = collections.deque()
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                while held and held[0][0] <= now:
                    client.sendall(held.popleft()[1])
                wait = max(0.0, held[0][0] - now) if held else 0.05
                readable, _, _ = select.select([client, upstream], [], [], min(wait, 0.05))
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return  # either side gone: held bytes are lost with the link
                    if sock is upstream:
                        held.append((time.monotonic() + self.lag, data))
                    else:
                        upstream.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.stop()


class SentinelProcess:
    """One ``redis-server --sentinel`` with its own config file (Sentinels rewrite it)."""

    def __init__(self, directory: Path, primary_port: int, down_after_ms: int) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.primary_port = primary_port
        self.down_after_ms = down_after_ms
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        config = self.directory / "sentinel.conf"
        config.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", "daemonize no", f"dir {self.directory}",
            f"logfile {self.directory / 'sentinel.log'}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
            f"sentinel failover-timeout {SERVICE} 10000",
            f"sentinel parallel-syncs {SERVICE} 1", ""]))
        self.process = subprocess.Popen(["redis-server", str(config), "--sentinel"], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        client = self.client()
        try:
            wait_until_answering(self.process, client, lambda: (self.directory / "sentinel.log").read_text()
                                 if (self.directory / "sentinel.log").exists() else "", name="redis-sentinel")
        finally:
            client.close()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)

    def stop(self) -> None:
        stop_process(self.process)


class SentinelGroup:
    """A primary, a replica (through a ``LagProxy`` when ``lag`` > 0) and three Sentinels."""

    def __init__(self, directory: Path, *, lag: float = 0.0, down_after_ms: int = 1000) -> None:
        self.directory = Path(directory)
        self.lag = lag
        self.down_after_ms = down_after_ms
        (self.directory / "primary").mkdir(parents=True, exist_ok=True)
        (self.directory / "replica").mkdir(parents=True, exist_ok=True)
        self.primary = RedisServer(self.directory / "primary", NO_PERSISTENCE)
        self.replica = RedisServer(self.directory / "replica", NO_PERSISTENCE)
        self.proxy: LagProxy | None = None
        self.sentinels: list[SentinelProcess] = []

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of this group's primary."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelGroup:
        try:
            self.primary.start()
            self.replica.start()
            upstream = self.primary.port
            if self.lag > 0:
                self.proxy = LagProxy(self.primary.port, self.lag)
                upstream = self.proxy.port
            with redis.Redis(port=self.replica.port, socket_timeout=5) as replica:
                replica.replicaof("127.0.0.1", upstream)
            self._wait(self._replica_in_sync, "the replica to sync")
            for index in range(3):
                self.sentinels.append(SentinelProcess(self.directory / f"sentinel{index}", self.primary.port,
                                                      self.down_after_ms).start())
            self._wait(self._sentinels_ready, "the Sentinels to find the replica and each other", timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, condition, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.1)

    def _replica_in_sync(self) -> bool:
        with redis.Redis(port=self.replica.port, socket_timeout=2, decode_responses=True) as replica:
            return replica.info("replication").get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.execute_command("SENTINEL", "MASTER", SERVICE)
                fields = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else state
                if int(fields["num-slaves"]) < 1 or int(fields["num-other-sentinels"]) < 2:
                    return False
        return True

    def primary_port(self) -> int:
        """The port of the primary as the Sentinels report it now."""
        with self.sentinels[0].client() as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(port)

    def kill_primary(self) -> None:
        """SIGKILL the primary: nothing is flushed, the replication stream stops mid-flight."""
        self.primary.kill()

    def wait_for_new_primary(self, timeout: float = 30.0) -> None:
        """Wait until the Sentinels name the replica as the primary and it accepts writes."""
        def promoted() -> bool:
            if any(self._reported_port(sentinel) != self.replica.port for sentinel in self.sentinels):
                return False
            with redis.Redis(port=self.replica.port, socket_timeout=2, decode_responses=True) as replica:
                return replica.info("replication").get("role") == "master"
        self._wait(promoted, "the Sentinels to promote the replica", timeout)

    def set_down_after(self, milliseconds: int) -> None:
        """Change how long every Sentinel waits before it calls the primary down."""
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                client.execute_command("SENTINEL", "SET", SERVICE, "down-after-milliseconds", str(milliseconds))

    @staticmethod
    def _reported_port(sentinel: SentinelProcess) -> int:
        with sentinel.client() as client:
            return int(client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1])

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        if self.proxy is not None:
            self.proxy.close()
        self.replica.stop()
        self.primary.stop()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
