"""Prompt statistics through faults, as the env statistics: an outage never stops training
(``on_unavailable="local"``: updates are owed, each under its id, and merged exactly once when
the store answers; reads answer from the records seen), and a set that comes back empty is
noticed and healed from every client's records (first writer per prompt), never silently
re-learned; a restore or a forget is deliberate and never undone.

The breaker's clock is replaced by a hand-driven one, so no test sleeps for it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from shared_rewardnorm import AsyncPromptStats, AsyncStatsStore, PromptInfo, PromptStats, RetryPolicy, StatsStore
from shared_rewardnorm._core.prompt_outage import PromptFallback
from tests.support.drop_proxy import DropProxy
from tests.support.helpers import require_binaries
from tests.support.prompt_oracle import DefinitionOracle, assert_matches
from tests.support.redis_servers import NO_PERSISTENCE, RedisServer

QUICK = RetryPolicy(attempts=2, base=0.001, cap=0.002)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def with_clock(prompts: Any, max_owed: int = 10_000) -> Clock:
    clock = Clock()
    prompts._fallback = PromptFallback(prompts.env, max_owed, clock=clock)
    return clock


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == level]


def wipe(raw_client: Any, prompts: PromptStats) -> None:
    """What an empty restart, a flush or an eviction does to one set: every key of it gone."""
    pattern = prompts.key[: -len(":prompts")] + "*"
    for key in list(raw_client.scan_iter(pattern)):
        raw_client.delete(key)


@pytest.mark.parametrize(("options", "message"), [
    ({"on_unavailable": "ignore"}, r"on_unavailable must be one of 'raise', 'local', got 'ignore'"),
    ({"on_lost": "heal"}, r"on_lost must be one of 'reseed', 'log', got 'heal'"),
    ({"cache_size": -1}, r"cache_size must be an int >= 0, got -1"),
    ({"max_owed": 2.5}, r"max_owed must be an int >= 0, got 2.5"),
])
def test_fault_options_are_validated_before_a_store_is_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PromptStats("math", "redis://127.0.0.1:1/0", **options)
    with pytest.raises(ValueError, match=message):
        AsyncPromptStats("math", "redis://127.0.0.1:1/0", **options)


def test_a_lost_set_is_healed_and_equals_the_definition(backend: Any, namespace: str, raw_client: Any,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    prompts = PromptStats("math", StatsStore(backend, namespace))
    prompts.configure(decay=0.8)
    oracle = DefinitionOracle(0.8)
    ids = [f"p{i}" for i in range(10)]
    for step in range(4):
        chosen = ids[step:step + 7]
        rewards = [float((i + step) % 3 == 0) for i in range(len(chosen))]
        prompts.update(chosen, rewards)
        oracle.call(chosen, rewards)
    wipe(raw_client, prompts)
    with caplog.at_level(logging.INFO, logger="shared_rewardnorm"):
        advantages = prompts.advantages(["p3", "p3"], [1.0, 0.0])
    oracle.call(["p3", "p3"], [1.0, 0.0])
    assert any("the prompt set of env 'math' was lost" in m and "putting back the 10 records" in m
               for m in messages(caplog, logging.ERROR)), messages(caplog, logging.ERROR)
    assert (prompts.losses, prompts.healed) == (1, 10)
    for prompt_id, info in zip(ids, prompts.get(ids), strict=True):
        assert_matches(info, oracle.expected(prompt_id))  # visits before and after the loss, in order
    assert prompts.settings().decay == 0.8  # the decay was put back too
    # the call that noticed the loss was answered against the healed mean, not an empty prompt's
    before_loss = DefinitionOracle(0.8)
    before_loss.rewards = {"p3": oracle.rewards["p3"][:-2]}
    before_loss.visits = {"p3": oracle.visits["p3"] - 1}
    mean = before_loss.expected("p3")[3]
    assert advantages == pytest.approx([1.0 - mean, 0.0 - mean])
    assert raw_client.hget(prompts.key, "origin") == b"reseed"


def test_each_prompt_is_put_back_once_by_the_first_client(backend: Any, namespace: str, raw_client: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    a = PromptStats("math", StatsStore(backend, namespace))
    b = PromptStats("math", StatsStore(backend, namespace))
    a.update(["shared", "a-only"], [1.0, 1.0])
    b.update(["shared", "b-only"], [0.0, 0.0])  # b's record of "shared" holds both visits
    wipe(raw_client, a)
    with caplog.at_level(logging.WARNING, logger="shared_rewardnorm"):
        a.update(["new"], [1.0])  # a notices first: puts back "shared" (its view: 1 visit) and "a-only"
        b.update(["new"], [0.0])  # b finds a healing: adds only "b-only"
    shared, a_only, b_only, new = a.get(["shared", "a-only", "b-only", "new"])
    assert shared == PromptInfo(1, 1, 1.0, 1.0, 0.0)  # a's record, never b's on top of it
    assert a_only == PromptInfo(1, 1, 1.0, 1.0, 0.0) and b_only == PromptInfo(1, 1, 1.0, 0.0, 0.0)
    assert new is not None and (new.visits, new.count) == (2, 2)
    assert (a.losses, a.healed, b.losses, b.healed) == (1, 2, 0, 1)
    assert any("another client is putting it back" in m for m in messages(caplog, logging.WARNING))


def test_a_restore_or_a_forget_is_deliberate_and_never_undone(backend: Any, namespace: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    client = PromptStats("math", StatsStore(backend, namespace))
    admin = PromptStats("math", StatsStore(backend, namespace))
    client.update(["a", "b"], [1.0, 0.0])
    snapshot = admin.export()
    client.update(["a"], [1.0])
    with caplog.at_level(logging.INFO, logger="shared_rewardnorm"):
        admin.restore(snapshot)
        client.update(["b"], [1.0])
        assert client.get(["a"]) == [PromptInfo(1, 1, 1.0, 1.0, 0.0)]  # the restore stands
        admin.forget()
        client.update(["c"], [1.0])
        assert client.get(["a", "c"]) == [None, PromptInfo(1, 1, 1.0, 1.0, 0.0)]  # the forget stands
    assert not messages(caplog, logging.ERROR) and (client.losses, client.healed) == (0, 0)
    assert sum("replaced deliberately" in m for m in messages(caplog, logging.INFO)) == 2


def test_on_lost_log_reports_a_loss_without_repairing_it(backend: Any, namespace: str, raw_client: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    prompts = PromptStats("math", StatsStore(backend, namespace), on_lost="log")
    prompts.update(["a"], [1.0])
    wipe(raw_client, prompts)
    with caplog.at_level(logging.ERROR, logger="shared_rewardnorm"):
        assert prompts.get(["a"]) == [None]  # a read notices too
        prompts.update(["a"], [0.0])
    assert [m for m in messages(caplog, logging.ERROR) if "was lost" in m and 'on_lost="log"' in m]
    assert (prompts.losses, prompts.healed) == (1, 0)  # one loss, noticed once
    assert prompts.get(["a"]) == [PromptInfo(1, 1, 1.0, 0.0, 0.0)]


@pytest.mark.own_server
def test_an_outage_is_ridden_out_and_an_empty_restart_healed(tmp_path: Path, namespace: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The whole story: updates through a live server, the server dies (training goes on from
    the local view, the calls owed), it comes back empty (no persistence), and the next call
    pays what is owed, notices the loss and puts the records back: every visit counted once."""
    require_binaries("redis-server")
    server = RedisServer(tmp_path, NO_PERSISTENCE).start()  # restart() brings it back on its port
    store = StatsStore(server.url, namespace, retry=QUICK)
    prompts = PromptStats("math", store, on_unavailable="local")
    clock = with_clock(prompts)
    oracle = DefinitionOracle(1.0)

    def call(ids: list[str], rewards: list[float]) -> list[float]:
        oracle.call(ids, rewards)
        return prompts.advantages(ids, rewards)

    try:
        call(["a", "b"], [1.0, 0.0])
        call(["a"], [0.0])
        server.stop()
        with caplog.at_level(logging.INFO, logger="shared_rewardnorm"):
            assert call(["a", "c"], [1.0, 1.0]) == pytest.approx([0.5, 0.0])  # a's mean 0.5; c unknown
            assert prompts.degraded and prompts.owed == 1
            assert call(["a"], [1.0]) == pytest.approx([1.0 - 2 / 3])  # the local view counts the owed call
            assert prompts.get(["a", "c", "never"])[0] == PromptInfo(4, 4, 4.0, 0.75, 0.75)
            assert prompts.select(["a", "b", "never"], low=0.5, high=1.0) == ["a", "never"]  # b: mean 0
            assert prompts.metrics()["prompts/math/owed"] == 2.0
            server.restart()  # empty: no persistence
            clock.now += 1.5
            call(["b"], [1.0])
        assert not prompts.degraded and prompts.owed == 0
        assert (prompts.losses, prompts.healed) == (1, 2)  # the records of a and b from before the outage
        for prompt_id, info in zip("abc", prompts.get(list("abc")), strict=True):
            assert_matches(info, oracle.expected(prompt_id))
        assert len([m for m in messages(caplog, logging.WARNING) if "unavailable" in m]) == 1
        assert any("answers again" in m for m in messages(caplog, logging.INFO))
    finally:
        store.close()
        server.stop()


@pytest.mark.own_server
def test_an_update_whose_reply_was_lost_is_resent_under_its_id(server: RedisServer, namespace: str) -> None:
    with DropProxy(server.port, drop_rate=0.0, trigger=b"EVALSHA") as proxy:
        store = StatsStore(proxy.url, namespace, retry=QUICK, functions=False)
        prompts = PromptStats("math", store, on_unavailable="local")
        clock = with_clock(prompts)
        prompts.update(["a"], [1.0])  # the server caches the script
        proxy.drop_rate = 1.0
        prompts.update(["a"], [0.0])  # lands, but its reply is lost
        assert prompts.degraded and prompts.owed == 1
        assert PromptStats("math", StatsStore(server.url, namespace)).get(["a"])[0].visits == 2  # it did land
        proxy.drop_rate = 0.0
        clock.now += 1.5
        prompts.update(["a"], [1.0])
        assert not prompts.degraded and prompts.owed == 0
        assert prompts.get(["a"]) == [PromptInfo(3, 3, 3.0, 2 / 3, pytest.approx(2 / 3))]
        store.close()


def test_at_most_max_owed_calls_are_kept(namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    store = StatsStore("redis://127.0.0.1:1/0", namespace, retry=QUICK)  # nothing listens there
    prompts = PromptStats("math", store, on_unavailable="local")
    with_clock(prompts, max_owed=3)
    with caplog.at_level(logging.ERROR, logger="shared_rewardnorm"):
        for step in range(5):
            prompts.update(["a"], [float(step)])
    assert (prompts.owed, prompts.dropped) == (3, 2)
    assert len([m for m in messages(caplog, logging.ERROR) if "dropping the oldest" in m]) == 1
    assert prompts.get(["a"])[0] == PromptInfo(5, 5, 5.0, 2.0, 10.0)  # the local view keeps every call
    store.close()


@pytest.mark.own_server
def test_asyncio_rides_out_an_outage_too(tmp_path: Path, namespace: str) -> None:
    require_binaries("redis-server")
    server = RedisServer(tmp_path, NO_PERSISTENCE)  # not started: refuses connections

    async def run() -> tuple[list[float], PromptInfo | None, int]:
        store = AsyncStatsStore(server.url, namespace, retry=QUICK)
        prompts = AsyncPromptStats("math", store, on_unavailable="local")
        clock = with_clock(prompts)
        first = await prompts.advantages(["a", "a"], [1.0, 0.0])  # unknown: its own mean
        await prompts.update(["a"], [1.0])
        server.start()
        clock.now += 1.5
        await prompts.update(["a"], [0.0])
        info = (await prompts.get(["a"]))[0]
        owed = prompts.owed
        await store.aclose()
        return first, info, owed

    try:
        first, info, owed = asyncio.run(run())
    finally:
        server.stop()
    assert first == [0.5, -0.5] and owed == 0
    assert info is not None and (info.visits, info.count) == (3, 4) and info.mean == pytest.approx(0.5)
