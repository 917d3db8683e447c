"""Shared fixtures: one backend parameter (embedded and real Redis) for the behavioural tests,
and a random key namespace per test so runs never collide on a shared server."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent))

from shared_rewardnorm.connection import embedded_server  # noqa: E402

REAL_REDIS_URL = os.environ.get("SHARED_REWARDNORM_TEST_URL", "redis://127.0.0.1:6379/0")
REQUIRE_REDIS = os.environ.get("SHARED_REWARDNORM_REQUIRE_REDIS") == "1"


def _unavailable(reason: str) -> None:
    if REQUIRE_REDIS:
        pytest.fail(f"{reason} (SHARED_REWARDNORM_REQUIRE_REDIS=1, so this is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_redis_url() -> str:
    """The URL of a live Redis, or skip (fail under SHARED_REWARDNORM_REQUIRE_REDIS=1)."""
    client = redis.Redis.from_url(REAL_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable(f"no Redis answers at {REAL_REDIS_URL}: {exc}")
    finally:
        client.close()
    return REAL_REDIS_URL


@pytest.fixture
def namespace() -> str:
    """A key namespace of this test's own."""
    return f"srn-test-{uuid.uuid4().hex[:12]}"


def _drop_namespace(client: Any, namespace: str) -> None:
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def real_client(real_redis_url: str, namespace: str) -> Iterator[redis.Redis]:
    """A client of the real server; the test's namespace is deleted afterwards."""
    client = redis.Redis.from_url(real_redis_url)
    yield client
    _drop_namespace(client, namespace)
    client.close()


@pytest.fixture(params=["embedded", "redis"], ids=["embedded", "redis"])
def backend(request: pytest.FixtureRequest, namespace: str) -> Iterator[Any]:
    """What to pass as ``redis=``: ``None`` (the embedded store) or a real ``redis.Redis``."""
    if request.param == "embedded":
        yield None
        import fakeredis

        _drop_namespace(fakeredis.FakeRedis(server=embedded_server()), namespace)
    else:
        yield request.getfixturevalue("real_client")


@pytest.fixture
def raw_client(backend: Any) -> Any:
    """A plain client of the same server as ``backend``, for inspecting and corrupting keys."""
    if backend is None:
        import fakeredis

        return fakeredis.FakeRedis(server=embedded_server())
    return backend
