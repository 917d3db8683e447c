"""``redis=None`` fails safe in a fleet: it follows ``$SHARED_REWARDNORM_URL`` when that is set,
and only otherwise falls back to the embedded store, logging once per process that the
statistics are local to it."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any

import fakeredis
import pytest

from shared_rewardnorm import AsyncSharedRewardNormalizer, AsyncStatsStore, SharedRewardNormalizer, StatsStore
from shared_rewardnorm._redis import connection
from shared_rewardnorm._redis.connection import URL_VARIABLE

LOCAL = "local to this process"


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget that this process already warned, so the test sees the first warning."""
    monkeypatch.setattr(connection, "_warned_pid", None)


def local_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "shared_rewardnorm" and LOCAL in r.getMessage()]


@pytest.mark.real_redis
def test_none_follows_the_variable(monkeypatch: pytest.MonkeyPatch, real_client: Any, namespace: str,
                                   real_redis_url: str, caplog: pytest.LogCaptureFixture,
                                   fresh_warning: None) -> None:
    monkeypatch.setenv(URL_VARIABLE, real_redis_url)
    with (caplog.at_level(logging.WARNING, logger="shared_rewardnorm"),
          SharedRewardNormalizer("env-a", None, namespace=namespace, warmup=0) as norm):
        norm.normalize([1.0, 2.0, 3.0])
        assert not isinstance(norm.store.client, fakeredis.FakeRedis)
    # The statistics are on the real server, where any other process can see them.
    assert StatsStore(real_client, namespace).get("env-a").count == 3
    assert local_warnings(caplog) == []


@pytest.mark.real_redis
def test_async_none_follows_the_variable(monkeypatch: pytest.MonkeyPatch, real_client: Any, namespace: str,
                                         real_redis_url: str, fresh_warning: None) -> None:
    monkeypatch.setenv(URL_VARIABLE, real_redis_url)

    async def main() -> None:
        async with AsyncSharedRewardNormalizer("env-b", None, namespace=namespace, warmup=0) as norm:
            await norm.normalize([1.0, 5.0])
            assert not isinstance(norm.store.client, fakeredis.FakeAsyncRedis)

    asyncio.run(main())
    assert StatsStore(real_client, namespace).get("env-b").count == 2


def test_without_the_variable_one_warning_per_process(caplog: pytest.LogCaptureFixture,
                                                       fresh_warning: None, namespace: str) -> None:
    with caplog.at_level(logging.WARNING, logger="shared_rewardnorm"):
        stores = [StatsStore(None, namespace) for _ in range(3)]
        asyncio.run(AsyncStatsStore(None, namespace).aclose())
    assert all(isinstance(store.client, fakeredis.FakeRedis) for store in stores)
    [record] = local_warnings(caplog)
    assert record.levelno == logging.WARNING
    assert URL_VARIABLE in record.getMessage()
    for store in stores:
        store.close()


def test_the_warning_is_a_log_record_not_a_python_warning() -> None:
    """The suite runs with ``filterwarnings = error``; a fresh interpreter with ``-W error``
    must build an embedded store and print the warning on stderr (logging's last resort)."""
    code = ("import os; os.environ.pop('SHARED_REWARDNORM_URL', None)\n"
            "from shared_rewardnorm import StatsStore\n"
            "StatsStore(None); StatsStore(None)\n"
            "print('built')\n")
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "built"
    assert result.stderr.count(LOCAL) == 1, result.stderr


@pytest.mark.parametrize("value", ["localhost:6379", "http://127.0.0.1:6379"])
def test_a_malformed_variable_is_an_error_not_a_fallback(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(URL_VARIABLE, value)
    with pytest.raises(ValueError, match=r"\$SHARED_REWARDNORM_URL must start with redis://.*" + value):
        StatsStore(None)
    with pytest.raises(ValueError, match=r"\$SHARED_REWARDNORM_URL must start with redis://"):
        AsyncStatsStore(None)


def test_a_unix_variable_cannot_name_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_VARIABLE, "unix:///tmp/redis.sock")
    with pytest.raises(ValueError, match=r"Redis Cluster is reached over TCP: \$SHARED_REWARDNORM_URL"):
        StatsStore(None, cluster=True)


@pytest.mark.parametrize("value", ["", "  "])
def test_a_blank_variable_is_an_error_not_a_fallback(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """``export SHARED_REWARDNORM_URL="$UNSET"``: set but blank is a mistake, as in the CLI."""
    monkeypatch.setenv(URL_VARIABLE, value)
    with pytest.raises(ValueError, match=r"\$SHARED_REWARDNORM_URL is set but blank"):
        StatsStore(None)
    with pytest.raises(ValueError, match=r"\$SHARED_REWARDNORM_URL is set but blank"):
        AsyncStatsStore(None)


def test_an_explicit_argument_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable only replaces ``None``: a client or URL passed in is used as given."""
    monkeypatch.setenv(URL_VARIABLE, "not a url")
    client = fakeredis.FakeRedis(server=connection.embedded_server())
    assert StatsStore(client).client is client
