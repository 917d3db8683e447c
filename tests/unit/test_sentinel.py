"""Sentinel URLs and the durability settings (``replicas=``), refused or parsed before anything
connects (the failovers and ``WAIT`` on real servers: tests/deployment/test_sentinel.py)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel

from shared_rewardnorm import AsyncStatsStore, StatsStore
from shared_rewardnorm._redis.sentinel import SentinelURL, parse_sentinel_url


def test_sentinel_url_parts() -> None:
    parsed = parse_sentinel_url("redis+sentinel://user:p%40ss@10.0.0.1:26379,sentinel-b:26380/mymaster/3")
    assert parsed == SentinelURL((("10.0.0.1", 26379), ("sentinel-b", 26380)), "mymaster", 3, "user", "p@ss")
    assert parse_sentinel_url("redis+sentinel://h:1/svc") == SentinelURL((("h", 1),), "svc")


@pytest.mark.parametrize(("url", "match"), [
    ("redis+sentinel://h:26379", "service name"),
    ("redis+sentinel://h:26379/", "service name"),
    ("redis+sentinel://h/svc", "host:port, got 'h'"),
    ("redis+sentinel://h:99999/svc", "host:port"),
    ("redis+sentinel://h:1,:2/svc", "host:port, got ':2'"),
    ("redis+sentinel://h:1/svc/x", "db number"),
    ("redis+sentinel://h:1/svc/0/more", "db number"),
    ("redis+sentinel://h:1/svc?ssl=true", "query"),
])
def test_bad_sentinel_urls_are_refused_before_connecting(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StatsStore(url)


def test_a_sentinel_url_never_echoes_its_password() -> None:
    with pytest.raises(ValueError, match="each Sentinel is host:port, got 'h'") as caught:
        parse_sentinel_url("redis+sentinel://u:hunter2@h/svc")
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(parse_sentinel_url("redis+sentinel://u:hunter2@h:1/svc"))


def test_a_sentinel_object_is_refused_with_what_to_pass_instead() -> None:
    with pytest.raises(TypeError, match=r"master_for\(service_name\)"):
        StatsStore(redis.sentinel.Sentinel([("127.0.0.1", 1)]))


def test_a_sentinel_url_is_not_a_cluster() -> None:
    with pytest.raises(ValueError, match="Cluster is reached over TCP"):
        StatsStore("redis+sentinel://h:1/svc", cluster=True)


@pytest.mark.parametrize(("options", "match"), [
    ({"replicas": -1}, "replicas must be an int >= 0"),
    ({"replicas": 1.0}, "replicas must be an int >= 0"),
    ({"replicas": True}, "replicas must be an int >= 0"),
    ({"replicas": 1, "replica_timeout": 0}, "replica_timeout must be a finite number of seconds > 0"),
    ({"replicas": 1, "replica_timeout": float("inf")}, "replica_timeout must be"),
    ({"replicas": 1, "replica_timeout": "1"}, "replica_timeout must be"),
])
def test_bad_durability_settings_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StatsStore(None, **options)


def test_a_cluster_refuses_replicas_before_connecting() -> None:
    # Port 1: nothing listens there; the refusal comes first.
    with pytest.raises(ValueError, match="replicas= is not supported on a Redis Cluster"):
        StatsStore("redis://127.0.0.1:1/0", cluster=True, replicas=1)
    with pytest.raises(ValueError, match="replicas= is not supported on a Redis Cluster"):
        AsyncStatsStore("redis://127.0.0.1:1/0", cluster=True, replicas=1)


def test_the_embedded_store_refuses_replicas() -> None:
    with pytest.raises(ValueError, match="embedded store has none"):
        StatsStore(None, replicas=1)
    with pytest.raises(ValueError, match="embedded store has none"):
        AsyncStatsStore(None, replicas=1)


@pytest.mark.parametrize("store_class", [StatsStore, AsyncStatsStore])
def test_a_socket_timeout_not_longer_than_replica_timeout_is_refused(store_class: Any) -> None:
    client = (redis.Redis if store_class is StatsStore else redis.asyncio.Redis)(port=1, socket_timeout=1.0)
    with pytest.raises(ValueError, match=r"replica_timeout \(1 s\) must be shorter than the client's "
                                         r"socket_timeout \(1 s\)"):
        store_class(client, replicas=1, replica_timeout=1.0)
    with pytest.raises(ValueError, match=r"socket_timeout \(0.5 s\)"):
        store_class("redis://127.0.0.1:1/0?socket_timeout=0.5", replicas=1, replica_timeout=1.0)
    store_class(client, replicas=1, replica_timeout=0.5)  # shorter: fine (nothing is sent here)
    store_class(client, replicas=0, replica_timeout=5.0)  # not waiting: the timeout does not matter
