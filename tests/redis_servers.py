"""Start and stop private ``redis-server`` processes for tests that need their own server
(persistence, restarts, config checks), on free loopback ports in temp dirs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A ``redis-server`` child process; use as a context manager."""

    def __init__(self, directory: Path, args: list[str] | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH")
        self.directory = Path(directory)
        self.port = free_port()
        self.args = list(args or [])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        # Caller's args first; ours last so port, bind and dir always point at the sandbox.
        command = ["redis-server", *self.args, "--port", str(self.port), "--bind", "127.0.0.1",
                   "--dir", str(self.directory), "--daemonize", "no",
                   "--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    log = self.directory / "redis.log"
                    output = self.process.stdout.read().decode() if self.process.stdout else ""
                    detail = log.read_text() if log.exists() else output
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}: {detail[-2000:]}")
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer PING within 10 s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout:
            self.process.stdout.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
