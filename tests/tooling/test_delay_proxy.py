"""The delaying proxy of the network benchmark: it passes every command and reply through, in
order, and holds each direction for at least its delay."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from tests.support.delay_proxy import DelayProxy


def port_of(url: str) -> int:
    return redis.connection.parse_url(url)["port"]


@pytest.mark.real_redis
def test_a_round_trip_takes_at_least_twice_the_delay(real_redis_url: str, namespace: str, real_client: Any) -> None:
    with DelayProxy(port_of(real_redis_url), delay=0.02) as proxy:
        client = redis.Redis.from_url(proxy.url)
        client.ping()
        started = time.perf_counter()
        assert client.ping() is True
        elapsed = time.perf_counter() - started
        # Pipelined commands keep their order and each gets its own reply.
        pipe = client.pipeline(transaction=False)
        for i in range(200):
            pipe.set(f"{namespace}:k{i}", i)
            pipe.get(f"{namespace}:k{i}")
        replies = pipe.execute()
        client.close()
    assert elapsed >= 0.04
    assert replies[1::2] == [str(i).encode() for i in range(200)]
    assert proxy.connections == 1


def test_the_delay_is_checked() -> None:
    with pytest.raises(ValueError, match="delay must be from 0 to 10 seconds, got -1"):
        DelayProxy(6379, delay=-1)
