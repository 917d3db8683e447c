"""Shared fixtures: one backend parameter (embedded and real Redis) for the behavioural tests,
a random key namespace per test so runs never collide on a shared server, a private
``redis-server`` (with a client to inspect it) for the tests that need their own, and an event
loop running in another thread."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shared_rewardnorm._redis.connection import URL_VARIABLE, embedded_server
from tests.support.helpers import drop_namespace, require_binaries, unavailable
from tests.support.redis_servers import NO_PERSISTENCE, RedisServer

REAL_REDIS_URL = os.environ.get("SHARED_REWARDNORM_TEST_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(autouse=True)
def _no_url_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``redis=None`` means ``$SHARED_REWARDNORM_URL`` when it is set: a developer's exported
    variable must not turn the embedded-store tests into tests of their server. Tests of the
    variable set it themselves."""
    monkeypatch.delenv(URL_VARIABLE, raising=False)


@pytest.fixture(scope="session")
def real_redis_url() -> str:
    """The URL of a live Redis, or skip (fail under SHARED_REWARDNORM_REQUIRE_REDIS=1)."""
    client = redis.Redis.from_url(REAL_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"no Redis answers at {REAL_REDIS_URL}: {exc}")
    finally:
        client.close()
    return REAL_REDIS_URL


#: Every namespace this run uses on the shared server starts with this, so the check at the end
#: of the session (``pytest_sessionfinish``) looks at this run's keys only: other runs may be
#: using the same server at the same time.
SESSION_PREFIX = f"srn-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def shared_server() -> Iterator[redis.Redis | None]:
    """A client of the shared server for cleaning up, or None when none answers."""
    client = redis.Redis.from_url(REAL_REDIS_URL, socket_connect_timeout=2, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError:
        client.close()
        yield None
        return
    yield client
    client.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> Iterator[str]:
    """A key namespace of this test's own (tests derive more from it: ``namespace + "-copy"``).
    After a ``real_redis`` test every key starting with it is deleted from the shared server,
    whether the test reached the server through ``real_client``, ``real_redis_url`` or a URL of
    its own: batch records included. Other tests never contact the shared server."""
    name = f"{SESSION_PREFIX}-{uuid.uuid4().hex[:12]}"
    real = request.node.get_closest_marker("real_redis") is not None
    shared_server = request.getfixturevalue("shared_server") if real else None
    yield name
    if shared_server is not None:
        drop_namespace(shared_server, name)


@pytest.fixture
def real_client(real_redis_url: str, namespace: str) -> Iterator[redis.Redis]:
    """A client of the real server; the test's namespace is deleted afterwards."""
    client = redis.Redis.from_url(real_redis_url)
    yield client
    drop_namespace(client, namespace)
    client.close()


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.real_redis)], ids=["embedded", "redis"])
def backend(request: pytest.FixtureRequest, namespace: str) -> Iterator[Any]:
    """What to pass as ``redis=``: ``None`` (the embedded store) or a real ``redis.Redis``."""
    if request.param == "embedded":
        yield None
        import fakeredis

        drop_namespace(fakeredis.FakeRedis(server=embedded_server()), namespace)
    else:
        yield request.getfixturevalue("real_client")


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.real_redis)], ids=["embedded", "redis"])
def url(request: pytest.FixtureRequest, namespace: str) -> Iterator[str | None]:
    """What to pass as ``redis=`` where a URL is needed (clients made inside each event loop, process
    or adapter): ``None`` (the embedded store) or the real server's URL. The namespace is deleted
    afterwards (on the real server by the ``namespace`` fixture, batch records included)."""
    if request.param == "embedded":
        yield None
        import fakeredis

        drop_namespace(fakeredis.FakeRedis(server=embedded_server()), namespace)
    else:
        yield request.getfixturevalue("real_redis_url")


@pytest.fixture
def raw_client(backend: Any) -> Any:
    """A plain client of the same server as ``backend``, for inspecting and corrupting keys."""
    if backend is None:
        import fakeredis

        return fakeredis.FakeRedis(server=embedded_server())
    return backend


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` of this test's own, without persistence, in ``tmp_path``."""
    require_binaries("redis-server")
    with RedisServer(tmp_path, NO_PERSISTENCE) as running:
        yield running


@pytest.fixture
def inspector(server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of ``server``, for SCRIPT / FUNCTION commands and INFO."""
    client = redis.Redis(port=server.port, socket_timeout=10)
    yield client
    client.close()


@pytest.fixture
def thread_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in another thread (as TRL runs async reward functions); run work
    in it with ``tests.support.helpers.in_loop``."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the shared server through a fixture is a ``real_redis`` test, marked or
    not, so ``-m "not real_redis"`` never reaches the server."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if ({"real_redis_url", "real_client"} & set(getattr(item, "fixturenames", ()))
                or any(isinstance(value, str) and value == "redis" for value in params.values())):
            # (the second: a backend parameter "redis" that forgot its mark)
            item.add_marker(pytest.mark.real_redis)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave the shared server as found: fail the run if any key of this run's namespaces
    (statistics, batch records) is left, after deleting them. Only when ``real_redis`` tests
    were selected: ``-m "not real_redis"`` never contacts the shared server."""
    if not any(item.get_closest_marker("real_redis") for item in getattr(session, "items", [])):
        return
    client = redis.Redis.from_url(REAL_REDIS_URL, socket_connect_timeout=2, socket_timeout=10)
    try:
        left = sorted(client.scan_iter(match=f"{SESSION_PREFIX}-*", count=1000))
        if left:
            client.delete(*left)
    except redis.RedisError:
        return  # no shared server in this run: nothing can be left on it
    finally:
        client.close()
    if left:
        shown = ", ".join(key.decode(errors="replace") for key in left[:5])
        print(f"\nthe tests left {len(left)} keys on {REAL_REDIS_URL} (now deleted): {shown}"
              f"{', ...' if len(left) > 5 else ''}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
