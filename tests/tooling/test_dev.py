"""dev.py (the README's two commands): which Redis it checks and starts, what counts as a
Redis answering, SIGTERM, and the hint when ``python3 -m venv`` fails. Only its pure parts and
tiny stand-in servers: the real venv and test run are what ``.ci/run`` exercises."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.helpers import import_script

dev = import_script(REPO / "dev.py")


@pytest.mark.parametrize(("url", "expected"), [
    (None, ("127.0.0.1", 6379, True)),
    ("redis://127.0.0.1:6379/0", ("127.0.0.1", 6379, True)),
    ("redis://127.0.0.1:6390/0", ("127.0.0.1", 6390, False)),
    ("redis://redis-host/0", ("redis-host", 6379, False)),
    ("redis://:secret@127.0.0.1:6379/0", ("127.0.0.1", 6379, True)),
    ("unix:///tmp/redis.sock", ("", 0, False)),
])
def test_the_tests_redis_follows_the_test_url(url: str | None, expected: tuple[str, int, bool]) -> None:
    assert dev.redis_for_tests(url) == expected


@pytest.fixture
def one_reply_server(request: pytest.FixtureRequest) -> Iterator[int]:
    """A TCP server on a free loopback port that answers anything with ``request.param``."""
    listener = socket.create_server(("127.0.0.1", 0))
    reply: bytes = request.param

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


@pytest.mark.parametrize("one_reply_server", [b"+PONG\r\n", b"-NOAUTH Authentication required.\r\n",
                                              b"-WRONGPASS invalid username-password pair\r\n"], indirect=True)
def test_a_redis_wanting_a_password_counts_as_answering(one_reply_server: int) -> None:
    assert dev.redis_answers("127.0.0.1", one_reply_server)


@pytest.mark.parametrize("one_reply_server", [b"HTTP/1.1 400 Bad Request\r\n"], indirect=True)
def test_something_else_is_not_a_redis(one_reply_server: int) -> None:
    assert not dev.redis_answers("127.0.0.1", one_reply_server)


def test_sigterm_runs_the_cleanup() -> None:
    """The server dev.py started is stopped in a ``finally``: SIGTERM must reach it."""
    code = (f"import importlib.util, os, signal, time\n"
            f"spec = importlib.util.spec_from_file_location('dev', {str(REPO / 'dev.py')!r})\n"
            "dev = importlib.util.module_from_spec(spec); spec.loader.exec_module(dev)\n"
            "try:\n"
            "    with dev.sigterm_as_exit():\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(10)\n"
            "finally:\n"
            "    print('cleaned up', flush=True)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout == "cleaned up\n"
    assert result.returncode == 128 + signal.SIGTERM


def test_a_failing_venv_module_names_python3_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_venv(*args: object, **kwargs: object) -> None:
        raise subprocess.CalledProcessError(1, args[0])

    monkeypatch.setattr(dev.subprocess, "run", no_venv)
    with pytest.raises(SystemExit, match=r"-m venv` failed \(exit 1\)\. On Debian and Ubuntu .* install "
                                         r"python3-venv"):
        dev.ensure_venv(tmp_path / "venv", set())
    assert not (tmp_path / "venv").exists()
