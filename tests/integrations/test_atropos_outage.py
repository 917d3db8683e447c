"""The Atropos mixin through a store restart, against the real installed ``atroposlib``: an env
keeps sending groups through ``BaseEnv.handle_env`` while its private ``redis-server`` is killed
and restarted empty. With the mixin's default (``reward_norm_on_unavailable="local"``) no
exception reaches the env, every group goes out with finite scores, the normalizer reports
``degraded`` during the outage and recovers, and afterwards the store holds what the operations
guide says: the env re-seeded from the normalizer's last view plus every group sent since."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared_rewardnorm import RunningStats
from shared_rewardnorm._core.outage import LocalFallback
from tests.support.helpers import require_binaries
from tests.support.integrations import import_example, require_module
from tests.support.redis_servers import NO_PERSISTENCE, RedisServer

pytestmark = [pytest.mark.atropos, pytest.mark.own_server]

require_module("atroposlib", "atropos")

from tests.integrations.test_atropos import GROUP, drive, make_env  # noqa: E402

offline_models = import_example("offline_models")


class Clock:
    """The breaker's clock, moved by hand: the test never sleeps for the reconnect interval."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def groups(start: int, n: int) -> list[dict[str, Any]]:
    """``n`` items of distinct, non-constant scores (none collapses after normalization)."""
    return [{"scores": [0.1 * (start + i), 1.0 + 0.3 * (start + i), 0.5, -0.2 * (start + i) - 0.1]}
            for i in range(n)]


async def handle(env: Any, item: dict[str, Any]) -> None:
    """One item through ``BaseEnv.handle_env``, as ``serve`` runs it."""
    key = str(uuid.uuid4())
    env.running_items[key] = {"item": item}
    await env.handle_env(key)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return offline_models.save_word_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_an_env_keeps_sending_groups_through_an_empty_store_restart(tokenizer_dir: str, namespace: str,
                                                                     tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    require_binaries("redis-server")
    server = RedisServer(tmp_path, NO_PERSISTENCE).start()
    env = make_env(tokenizer_dir, namespace, server.url, reward_normalization="zscore",
                   reward_normalization_warmup=4)
    assert env.config.reward_norm_on_unavailable == "local"  # the mixin's default
    before, during, after = groups(0, 3), groups(3, 6), groups(9, 3)
    observed: dict[str, Any] = {}

    async def work() -> None:
        await handle(env, before[0])
        norm = env.reward_normalizer
        clock = Clock()
        assert norm.on_unavailable == "local"
        norm._fallback = LocalFallback(norm.env, clock)  # (no state yet: the store answered every call)
        for item in before[1:]:
            await handle(env, item)
        observed["view before"] = norm.count

        server.kill()
        await handle(env, during[0])  # meets the outage: waits out the store's retry policy once
        assert norm.degraded
        await asyncio.gather(*(handle(env, item) for item in during[1:4]))  # as serve runs them: concurrently
        for item in during[4:]:
            await handle(env, item)
        observed["degraded metrics"] = await norm.metrics_dict()
        observed["degraded store metrics"] = await norm.store.metrics()
        observed["owed"] = norm.owed

        server.restart()  # empty: no persistence
        clock.now += 1.5  # the breaker's interval has passed: the next group probes the store
        for item in after:
            await handle(env, item)
        observed["metrics"] = await norm.metrics_dict()
        observed["store metrics"] = await norm.store.metrics()
        observed["stored"] = (await norm.store.info(norm.env)).stats
        observed["losses"], observed["reseeds"] = norm.losses, norm.reseeds

    try:
        with caplog.at_level(logging.WARNING):
            drive([env], work())
    finally:
        server.stop()

    # No exception reached the env (BaseEnv.handle_env would log it and send nothing).
    assert not [r.getMessage() for r in caplog.records if "Error in" in r.getMessage()]
    items = before + during + after
    assert len(env.sent) == len(items)  # every group went out
    scores = [score for sent in env.sent for score in sent["scores"]]
    assert len(scores) == GROUP * len(items) and all(math.isfinite(score) for score in scores)

    assert observed["view before"] == GROUP * len(before)
    degraded = observed["degraded metrics"]
    assert degraded["reward_norm/degraded"] == 1.0
    assert degraded["reward_norm/count"] == GROUP * (len(before) + len(during))  # the local count kept growing
    assert observed["owed"].count == GROUP * len(during)
    store_degraded = observed["degraded store metrics"]
    assert store_degraded["reward_norm/groups_env/degraded"] == 1.0  # answered locally, not raised
    assert store_degraded["reward_norm/groups_env/count"] == GROUP * (len(before) + len(during))

    assert observed["metrics"]["reward_norm/degraded"] == 0.0
    assert observed["store metrics"]["reward_norm/groups_env/degraded"] == 0.0
    assert observed["losses"] == 1 and observed["reseeds"] == 1
    # Re-seeded from the last view (every group before the kill) plus every group sent since.
    everything = RunningStats.from_values([score for item in items for score in item["scores"]])
    stored = observed["stored"]
    assert stored.count == everything.count
    assert stored.mean == pytest.approx(everything.mean) and stored.m2 == pytest.approx(everything.m2)
    assert (stored.min, stored.max) == (everything.min, everything.max)
    assert any("lost its statistics" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
