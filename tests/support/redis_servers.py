"""Start and stop private ``redis-server`` processes for tests that need their own server
(persistence, restarts, config checks), on free loopback ports in temp dirs.

The process plumbing (``free_port``, ``start_on_a_free_port``, ``wait_until_answering``,
``stop_process``) serves ``redis_cluster.py`` and the TLS server of ``test_tls.py`` too. Only
the stdlib and redis-py: the benchmarks import these modules as well.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

#: Options the helper always sets itself, so the server lives in the sandbox.
SANDBOX_OPTIONS = frozenset({"--port", "--bind", "--dir", "--daemonize", "--logfile"})
#: Nothing on disk: no RDB snapshots, no AOF (a restart starts empty, script cache included).
NO_PERSISTENCE = ["--save", "", "--appendonly", "no"]

_START_ATTEMPTS = 3
_Started = TypeVar("_Started")


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


class PortTaken(Exception):
    """redis-server could not bind a port that looked free a moment ago."""


class ServerExited(RuntimeError):
    """redis-server exited before it answered PING; ``output`` is what it printed and logged."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a child process (SIGTERM, then SIGKILL after 10 s), reap it and close its stdout;
    safe to call twice, after it exited, or with None (never started)."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout:
        process.stdout.close()


def start_on_a_free_port(start_once: Callable[[], _Started], move: Callable[[], None]) -> _Started:
    """``start_once()``, and again after ``move()`` (to other free ports) each time it raises
    ``PortTaken``: ``free_port()`` only saw a port free, someone else may have bound it since.
    Gives up with RuntimeError after a few attempts."""
    for attempt in range(_START_ATTEMPTS):
        try:
            return start_once()
        except PortTaken:
            if attempt == _START_ATTEMPTS - 1:
                raise RuntimeError(f"no free port after {_START_ATTEMPTS} attempts") from None
            move()
    raise AssertionError("unreachable")


def wait_until_answering(process: subprocess.Popen[bytes], client: redis.Redis, output: Callable[[], str],
                         name: str = "redis-server", timeout: float = 10.0) -> None:
    """Poll ``client.ping()`` until the just-started ``process`` answers.

    If the process exits first it is reaped and ``PortTaken`` raised when ``output()`` (what it
    printed and logged) says its port was taken, ``ServerExited`` otherwise. Without an answer
    after ``timeout`` seconds it is stopped (no server is left behind that nobody will stop) and
    RuntimeError raised. ``name`` says which server in the messages.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            detail = output()
            stop_process(process)
            if "Address already in use" in detail:
                raise PortTaken
            raise ServerExited(f"{name} exited with {process.returncode}: {detail[-2000:]}", detail)
        try:
            if client.ping():
                return
        except (redis.ConnectionError, redis.TimeoutError):  # BusyLoadingError is a ConnectionError
            pass
        if time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError(f"{name} did not answer PING within {timeout:g} s")
        time.sleep(0.05)


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

    def ping_client(self) -> redis.Redis:
        """The client that checks the server is up (short timeouts); a subclass serving another
        protocol (TLS) overrides it."""
        return redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING (at most 10 s)."""
        return start_on_a_free_port(self._start_once, self._move)

    def _move(self) -> None:
        self.port = free_port()

    def _start_once(self) -> RedisServer:
        log = self.directory / "redis.log"
        log_offset = log.stat().st_size if log.exists() else 0
        process = self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL)

        def output() -> str:  # what this start printed and logged
            printed = process.stdout.read().decode(errors="replace") if process.stdout else ""
            return printed + (log.read_bytes()[log_offset:].decode(errors="replace") if log.exists() else "")

        client = self.ping_client()
        try:
            wait_until_answering(process, client, output)
        finally:
            client.close()
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and reap it; safe to call twice."""
        stop_process(self.process)

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
            except PortTaken:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {self.port} still taken after {timeout} s") from None
                time.sleep(0.1)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
