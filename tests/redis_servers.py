"""Start and stop private ``redis-server`` processes for tests that need their own server
(persistence, restarts, config checks), on free loopback ports in temp dirs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

#: Options the helper always sets itself, so the server lives in the sandbox.
SANDBOX_OPTIONS = frozenset({"--port", "--bind", "--dir", "--daemonize", "--logfile"})

_START_ATTEMPTS = 3


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def without_options(args: list[str], names: frozenset[str]) -> list[str]:
    """``args`` less every ``--name value...`` group whose name is in ``names``.

    An option's values are the arguments up to the next one starting with ``--``, which is how
    redis-server itself groups its command line.
    """
    kept: list[str] = []
    dropping = False
    for arg in args:
        if arg.startswith("--"):
            dropping = arg in names
        if not dropping:
            kept.append(arg)
    return kept


def require_binaries(*names: str) -> None:
    """Skip the calling test when a Redis binary is missing from PATH (a failure under
    SHARED_REWARDNORM_REQUIRE_REDIS=1, as everywhere else in the suite)."""
    import os

    import pytest

    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        reason = f"{' and '.join(missing)} not on PATH"
        if os.environ.get("SHARED_REWARDNORM_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason} (SHARED_REWARDNORM_REQUIRE_REDIS=1, so this is a failure)")
        pytest.skip(reason)


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

    def command(self) -> list[str]:
        """The full command line: the caller's args, then the sandbox's options."""
        # The caller's own port, bind, dir... are dropped rather than merely overridden: Redis
        # applies each option as it reads it, and `dir` chdirs at once, so a `--dir /data` (as in
        # docker-compose.yml) that does not exist here kills the server before ours is reached.
        return ["redis-server", *without_options(self.args, SANDBOX_OPTIONS),
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log")]

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING (at most 10 s)."""
        for attempt in range(_START_ATTEMPTS):
            try:
                return self._start_once()
            except _PortTaken:
                # free_port() only saw the port free; someone else may have bound it since.
                if attempt == _START_ATTEMPTS - 1:
                    raise RuntimeError(f"no free port after {_START_ATTEMPTS} attempts") from None
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> RedisServer:
        log = self.directory / "redis.log"
        log_offset = log.stat().st_size if log.exists() else 0
        self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    output = self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""
                    detail = output + (log.read_bytes()[log_offset:].decode(errors="replace")
                                       if log.exists() else "")
                    self.stop()
                    if "Address already in use" in detail:
                        raise _PortTaken()
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}: {detail[-2000:]}")
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()  # don't leave a server nobody will stop behind
                    raise RuntimeError("redis-server did not answer PING within 10 s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and reap it; safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout:
            self.process.stdout.close()

    def kill(self) -> None:
        """Crash the server: SIGKILL (nothing is flushed or saved on the way out) and reap it;
        safe to call when it is already gone. ``restart()`` brings it back on the same port."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Start the server again after ``stop()`` or ``kill()``: same port, directory and
        args, so clients holding the old URL reconnect to it. Waits until it answers PING
        (after loading its data). Unlike ``start()`` it never moves to another port: if the
        port stays taken for ``timeout`` seconds it raises."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the server is still running: stop() or kill() it first")
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._start_once()
            except _PortTaken:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {self.port} still taken after {timeout} s") from None
                time.sleep(0.1)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _PortTaken(Exception):
    """redis-server could not bind the port free_port() chose."""
