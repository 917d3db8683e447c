"""Settings are refused, never silently changed: a URL database that is not a non-negative
integer, a database the server does not have (one library error, not a traceback of redis-py's),
and the identity's age shown by ``stats``."""

from __future__ import annotations

import re
from typing import Any

import pytest

from shared_rewardnorm import AsyncStatsStore, SharedRewardNormalizer, StatsStore, StoreConfigError
from shared_rewardnorm.cli import main


@pytest.mark.parametrize("url, text", [("redis://127.0.0.1:6379/abc", "'abc' (in the URL's path"),
                                       ("redis://:pw@127.0.0.1:6379/-1", "'-1' (in the URL's path: redis://:***@"),
                                       ("rediss://127.0.0.1:6379/1.5", "'1.5'"),
                                       ("unix:///tmp/redis.sock?db=x", "'x' (in the URL's db=")])
def test_a_database_that_is_not_an_integer_is_refused(url: str, text: str) -> None:
    for make in (StatsStore, AsyncStatsStore, lambda u, n: SharedRewardNormalizer("env", u, namespace=n)):
        with pytest.raises(ValueError, match="the database must be a non-negative integer, got " + re.escape(text)):
            make(url, "ns")


@pytest.mark.real_redis
def test_a_database_the_server_does_not_have_is_one_library_error(real_redis_url: str, namespace: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url = real_redis_url.rsplit("/", 1)[0] + "/999"
    with StatsStore(url, namespace) as store:
        with pytest.raises(StoreConfigError, match=r"has no database 999 \(DB index is out of range"):
            store.get("env")
        assert store.retries == 0  # no retry can help
    assert main(["--url", url, "--namespace", namespace, "stats"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no database 999" in err[0]


def test_stats_shows_the_identitys_age_and_origin(backend: Any, namespace: str) -> None:
    from shared_rewardnorm.cli.render import stats_json, stats_table

    store = StatsStore(backend, namespace)
    store.update("merged", [1.0, 2.0])
    store.set("replaced", store.get("merged"))
    found = store.infos()
    table = stats_table(found, now=max(info.epoch or 0 for info in found.values()) / 1e6 + 120)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows["merged"][-2:] == ["2m", "(merge)"] and rows["replaced"][-2:] == ["2m", "(replace)"]
    shown = stats_json(namespace, found)["envs"]
    assert shown["replaced"]["origin"] == "replace" and shown["replaced"]["epoch"] == found["replaced"].epoch
