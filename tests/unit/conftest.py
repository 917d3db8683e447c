"""The unit tests need no server, and this makes sure of it: a unit test that asks for a fixture
of a server (the backends, the shared server, a private one) fails at collection, and while a
unit test runs the embedded store cannot start and no socket can connect. A test that needs
either belongs in tests/behaviour (or tests/deployment)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from shared_rewardnorm._redis import connection

HERE = Path(__file__).parent
#: The fixtures of tests/conftest.py that reach a store or a server.
SERVER_FIXTURES = frozenset({"backend", "url", "raw_client", "real_client", "real_redis_url", "shared_server",
                             "server", "inspector"})


def _server_fixtures(item: pytest.Item) -> set[str]:
    """The server fixtures ``item`` uses (an argument parametrized directly, say ``url``, is none)."""
    direct: set[str] = set()
    for mark in item.iter_markers("parametrize"):
        names = mark.args[0]
        direct.update(name.strip() for name in (names.split(",") if isinstance(names, str) else names))
    return (SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))) - direct


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    wrong = [f"{item.nodeid} (uses {', '.join(sorted(_server_fixtures(item)))})"
             for item in items if HERE in item.path.parents and _server_fixtures(item)]
    if wrong:
        raise pytest.UsageError("unit tests run no server; move these to tests/behaviour: " + "; ".join(wrong))


@pytest.fixture(autouse=True)
def _no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_embedded_store() -> Any:
        raise AssertionError("a unit test started the embedded store: it belongs in tests/behaviour")

    def no_connection(self: socket.socket, address: Any) -> Any:
        raise AssertionError(f"a unit test connected a socket to {address!r}: it belongs in tests/behaviour")

    monkeypatch.setattr(connection, "embedded_server", no_embedded_store)
    monkeypatch.setattr(socket.socket, "connect", no_connection)
    monkeypatch.setattr(socket.socket, "connect_ex", no_connection)
