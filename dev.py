#!/usr/bin/env python3
"""Set everything up and run the demo or the tests: ``python3 dev.py demo`` / ``python3 dev.py test``.

Needs nothing but Python 3.10+ (the standard library only). The first run makes a venv in
``.venv`` and installs the project with what the command needs (``pip install -e ".[test]"``
for the tests); later runs reuse it, and install again only when ``pyproject.toml`` changed or
a command needs extras not installed yet (a stamp in the venv records both), so a second run
starts at once.

``test`` runs pytest (extra arguments go to it) against the Redis at
``$SHARED_REWARDNORM_TEST_URL`` (default ``redis://127.0.0.1:6379/0``) if one answers there
(an answer asking for a password counts: that port is taken), else, only for the default
local URL, one it starts there for the run (no persistence, in a temp dir, stopped by PID
afterwards, also on SIGTERM) when ``redis-server`` is on PATH; tests that need a server skip
without one (fail under ``SHARED_REWARDNORM_REQUIRE_REDIS=1``). pytest collecting no test is a
failure.
``check`` runs the static checks configured in ``pyproject.toml`` from the repo root, ``ruff
check .`` and ``mypy``, both always (each one's findings are printed), and fails if either
finds anything; their caches go into the venv, not the checkout.
``.ci/run`` calls ``check``, then ``test``, with a fresh venv (``--venv DIR --no-editable``).

Another suite with a venv of its own (say an integration with a framework that pins other
versions) is one more call of ``ensure_venv(path, extras)`` and one more command below.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent
DEFAULT_VENV = REPO / ".venv"
STAMP = ".shared-rewardnorm-dev.json"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
TEST_URL_VARIABLE = "SHARED_REWARDNORM_TEST_URL"
DEFAULT_TEST_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
#: What a Redis answers to PING when it wants a password: it is a Redis all the same.
REDIS_REPLIES = (b"+PONG", b"-NOAUTH", b"-WRONGPASS")


def say(message: str) -> None:
    print(f"dev.py: {message}", flush=True)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _project_hash() -> str:
    return hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv(venv: Path, extras: set[str], editable: bool = True) -> Path:
    """A venv at ``venv`` with the project and ``extras`` installed; installs only what is
    missing or out of date. Returns its python."""
    python = venv_python(venv)
    if not python.exists():
        say(f"creating a venv in {venv}")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(venv, ignore_errors=True)  # a half-made venv would be taken as made next time
            raise SystemExit(f"dev.py: `{sys.executable} -m venv` failed (exit {exc.returncode}). On Debian and "
                             "Ubuntu the venv module is a package of its own: install python3-venv (e.g. "
                             "`sudo apt-get install python3-venv`), then run this again") from None
    stamp_path = venv / STAMP
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = {}
    wanted = {"project": _project_hash(), "editable": editable}
    installed = set(stamp.get("extras", []))
    if all(stamp.get(key) == value for key, value in wanted.items()) and extras <= installed:
        return python
    extras = extras | (installed if stamp.get("project") == wanted["project"] else set())
    target = f".[{','.join(sorted(extras))}]" if extras else "."
    say(f"installing {target} into {venv} (once; later runs reuse it)")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True, env=env)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *(["-e"] if editable else []), target],
                   check=True, cwd=REPO, env=env)
    stamp_path.write_text(json.dumps({**wanted, "extras": sorted(extras)}))
    return python


def redis_for_tests(url: str | None) -> tuple[str, int, bool]:
    """Host and port of the tests' Redis (``$SHARED_REWARDNORM_TEST_URL``, else the default),
    and whether it is the default local one, the only one this script may start."""
    url = url or DEFAULT_TEST_URL
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return "", 0, False  # a unix socket or TLS URL: the tests' own business, never started here
    try:
        port = parts.port or 6379
    except ValueError:
        return "", 0, False
    return parts.hostname, port, (parts.scheme, parts.hostname, port) == ("redis", REDIS_HOST, REDIS_PORT)


def redis_answers(host: str = REDIS_HOST, port: int = REDIS_PORT) -> bool:
    """Whether a Redis answers PING at host:port (plain RESP over a socket: no client needed).
    ``-NOAUTH``/``-WRONGPASS`` count: a Redis with a password holds that port all the same."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(REDIS_REPLIES)
    except OSError:
        return False


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` while inside, so ``finally`` blocks run (the Redis
    started for the run is stopped when CI or a user terminates this script)."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_redis(directory: Path) -> subprocess.Popen[bytes] | None:
    """A redis-server on 127.0.0.1:6379 for this run (no persistence), or None if there is no
    redis-server to start or it does not answer."""
    if shutil.which("redis-server") is None:
        say("no Redis answers at 127.0.0.1:6379 and redis-server is not on PATH: "
            "the tests that need a server will skip (or fail under SHARED_REWARDNORM_REQUIRE_REDIS=1)")
        return None
    say(f"no Redis answers at {REDIS_HOST}:{REDIS_PORT}; starting one for this run in {directory}")
    process = subprocess.Popen(
        ["redis-server", "--port", str(REDIS_PORT), "--bind", REDIS_HOST, "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--logfile", str(directory / "redis.log"), "--daemonize", "no"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        if redis_answers():
            return process
        time.sleep(0.1)
    log = directory / "redis.log"
    say("the redis-server started here does not answer; its log:\n" + (log.read_text() if log.exists() else ""))
    stop(process)
    return None


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    say(f"stopping the redis-server started for this run (pid {process.pid})")
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cmd_demo(python: Path, rest: list[str]) -> int:
    return subprocess.run([str(python), "-m", "shared_rewardnorm", "demo", *rest], cwd=REPO, check=False).returncode


def cmd_test(python: Path, rest: list[str]) -> int:
    host, port, default = redis_for_tests(os.environ.get(TEST_URL_VARIABLE))
    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="shared-rewardnorm-redis-") as directory:
        server = None
        if host and not redis_answers(host, port):
            if default:
                server = start_redis(Path(directory))
            else:
                say(f"no Redis answers at {host}:{port} (${TEST_URL_VARIABLE}); only the default "
                    f"{DEFAULT_TEST_URL} is started here, so the tests that need it will skip or fail")
        try:
            # The checkout comes first on sys.path (python -m pytest from the repo), so the tests
            # check this commit's code even with a non-editable install (see .ci/run).
            status = subprocess.run([str(python), "-m", "pytest", "-q", *rest], cwd=REPO,
                                    check=False).returncode
        finally:
            stop(server)
    if status == 5:
        say("pytest collected no tests; that is a failure")
        return 1
    return status


def cmd_check(python: Path, rest: list[str]) -> int:
    if rest:
        raise SystemExit(f"dev.py: check takes no arguments, got {' '.join(rest)}")
    venv = python.parent.parent
    env = {**os.environ, "RUFF_CACHE_DIR": str(venv / ".ruff_cache"), "MYPY_CACHE_DIR": str(venv / ".mypy_cache")}
    failed = []
    for tool, command in (("ruff", ["ruff", "check", "."]), ("mypy", ["mypy"])):
        say(f"running {' '.join(command)}")
        if subprocess.run([str(python), "-m", *command], cwd=REPO, env=env, check=False).returncode != 0:
            failed.append(tool)
    if failed:
        say(f"static checks failed: {', '.join(failed)}")
        return 1
    return 0


COMMANDS = {"demo": (set(), cmd_demo), "test": ({"test"}, cmd_test), "check": ({"test"}, cmd_check)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"the venv to use (default {DEFAULT_VENV})")
    parser.add_argument("--no-editable", action="store_true",
                        help="a regular install (pip builds the wheel, as a user's install does), as CI does")
    parser.add_argument("command", choices=sorted(COMMANDS),
                        help="demo: the demo, embedded; test: the test suite; check: ruff and mypy")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="passed on (to the demo, or to pytest)")
    args = parser.parse_args(argv)
    extras, run = COMMANDS[args.command]
    python = ensure_venv(args.venv.resolve(), extras, editable=not args.no_editable)
    return run(python, args.rest)


if __name__ == "__main__":
    sys.exit(main())
