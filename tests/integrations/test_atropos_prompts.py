"""The Atropos mixin's per-prompt statistics (``reward_norm_prompt_stats``) against the real
installed ``atroposlib``, offline: groups go through ``BaseEnv.handle_env`` as ``serve`` runs
them (the helpers of test_atropos.py), and what the store holds per prompt is read back with a
``PromptStats`` of its own."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest

from tests.support.integrations import import_example, require_module
from tests.support.redis_servers import free_port

pytestmark = pytest.mark.atropos

require_module("atroposlib", "atropos")

from shared_rewardnorm import PromptStats, StatsStore  # noqa: E402
from shared_rewardnorm.aio import AsyncSharedRewardNormalizer  # noqa: E402
from shared_rewardnorm.aio.prompts import AsyncPromptStats  # noqa: E402
from shared_rewardnorm.errors import StoreUnavailableError  # noqa: E402
from shared_rewardnorm.integrations.prompt_ids import hash_id  # noqa: E402
from tests.integrations.test_atropos import GroupsEnv, drive, make_env, run_items  # noqa: E402

offline_models = import_example("offline_models")


class PromptEnv(GroupsEnv):
    """Items name their prompt (``"prompt"``); an item without one gets the mixin's default id.
    ``get_next_item`` draws from ``queue``, skipping prompts outside (0, 1) as the docs show."""

    queue: list[dict[str, Any]]

    def prompt_id_of(self, item: Any) -> str | None:
        if isinstance(item, dict) and "prompt" in item:
            return str(item["prompt"])
        return super().prompt_id_of(item)

    async def get_next_item(self) -> Any:
        while self.queue:
            item = self.queue.pop(0)
            if await self.keep_prompt(self.prompt_id_of(item)):
                return item
        return None


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return offline_models.save_word_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def prompt_env(tokenizer_dir: str, namespace: str, url: str | None = None, **settings: Any) -> Any:
    env = make_env(tokenizer_dir, namespace, url, cls=PromptEnv, **settings)
    env.queue = []
    return env


def recorded(url: str | None, namespace: str, ids: list[str]) -> list[Any]:
    with PromptStats("groups_env", url, namespace=namespace) as prompts:
        return prompts.get(ids)


UNNAMED = {"scores": [0.5, 0.25, 0.0, 1.0]}  # recorded under hash_id(repr(item))
ITEMS = [
    {"prompt": "a", "scores": [1.0, 0.0, 1.0, 1.0]},
    {"prompt": "a", "scores": [0.0, 0.0, 0.0, 0.0]},               # all equal: not sent, but recorded
    {"prompt": "b", "scores": [1.0, 1.0, 1.0, 1.0]},
    {"prompt": "c", "scores": [0.0, 1.0, 0.0], "size": 3},         # dropped by BaseEnv: not recorded
    {"prompt": "d", "scores": [0.5, 0.25, 0.0, 1.0], "length": 80},  # too long: dropped, not recorded
    UNNAMED,
]


@pytest.mark.parametrize("mode", ["none", "zscore"])
def test_each_counted_group_is_recorded_raw_under_its_items_prompt_id(tokenizer_dir: str, namespace: str,
                                                                       url: str | None, mode: str) -> None:
    env = prompt_env(tokenizer_dir, namespace, url, reward_normalization=mode, reward_normalization_warmup=0,
                     reward_norm_prompt_stats=True)
    drive([env], run_items(env, [dict(item) for item in ITEMS]))
    a, b, c, d, unnamed = recorded(url, namespace, ["a", "b", "c", "d", hash_id(UNNAMED)])
    assert c is None and d is None
    assert (a.visits, a.count, a.mean) == (2, 8, 3 / 8)  # raw scores, whatever the normalization
    assert a.std == pytest.approx(math.sqrt(3 / 8 * 5 / 8), rel=1e-12)
    assert (b.visits, b.count, b.mean, b.std) == (1, 4, 1.0, 0.0)
    assert (unnamed.visits, unnamed.count, unnamed.mean) == (1, 4, 0.4375)
    assert len(env.sent) == 2  # the mixed "a" group and the unnamed one
    if mode == "zscore":  # the normalizer counted the same groups, and sent normalized scores
        assert StatsStore(url, namespace).get("groups_env").count == 16
        assert env.sent[0]["scores"] != ITEMS[0]["scores"]


def test_replicas_skip_prompts_every_replica_found_solved_or_hopeless(tokenizer_dir: str, namespace: str,
                                                                      url: str | None) -> None:
    writer, reader = (prompt_env(tokenizer_dir, namespace, url, reward_norm_prompt_stats=True) for _ in range(2))
    reader.queue = [{"prompt": name, "scores": [1.0, 0.0, 0.0, 0.0]} for name in ("easy", "hard", "mid", "new")]
    picked: list[Any] = []

    async def work() -> None:
        await run_items(writer, [{"prompt": "easy", "scores": [1.0] * 4}, {"prompt": "hard", "scores": [0.0] * 4},
                                 {"prompt": "mid", "scores": [1.0, 0.0, 1.0, 0.0]}])
        picked.append(await reader.select_prompts(["easy", "hard", "mid", "new", "mid"]))
        picked.append(await reader.select_prompts(["mid", "new"], low=0.0, high=0.5))  # strictly inside
        picked.append([await reader.keep_prompt(name) for name in ("easy", "hard", "mid", "new")])
        picked.append([(await reader.get_next_item())["prompt"], (await reader.get_next_item())["prompt"],
                       await reader.get_next_item()])

    drive([writer, reader], work())
    assert picked == [["mid", "new"], ["new"], [False, False, True, True], ["mid", "new", None]]


def test_the_prompt_update_carries_the_groups_batch_id(tokenizer_dir: str, namespace: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[Any]] = {"normalize": [], "update": []}
    real_normalize, real_update = AsyncSharedRewardNormalizer.normalize, AsyncPromptStats.update

    async def normalize(self: Any, scores: Any, **kwargs: Any) -> Any:
        seen["normalize"].append(kwargs.get("batch_id"))
        return await real_normalize(self, scores, **kwargs)

    async def update(self: Any, ids: Any, rewards: Any, **kwargs: Any) -> None:
        seen["update"].append((ids, list(rewards), kwargs.get("batch_id")))
        await real_update(self, ids, rewards, **kwargs)

    monkeypatch.setattr(AsyncSharedRewardNormalizer, "normalize", normalize)
    monkeypatch.setattr(AsyncPromptStats, "update", update)
    env = prompt_env(tokenizer_dir, namespace, reward_normalization="zscore", reward_norm_prompt_stats=True)
    group = {"prompt": "q", "scores": [0.2, 0.9, 0.4, 0.3]}
    shared: list[Any] = []

    async def work() -> None:
        await run_items(env, [dict(group), dict(group)])  # two identical groups: two batches
        shared.append(env.prompt_stats.store is env.reward_normalizer.store)
        # A resend of the second group's update with its batch id (a retry that had landed) counts once.
        await real_update(env.prompt_stats, ["q"] * 4, group["scores"], batch_id=seen["update"][-1][2])

    drive([env], work())
    assert shared == [True]
    assert [batch_id for *_, batch_id in seen["update"]] == seen["normalize"]
    assert len(set(seen["normalize"])) == 2 and None not in seen["normalize"]
    assert [ids for ids, *_ in seen["update"]] == [["q"] * 4] * 2
    info, = recorded(None, namespace, ["q"])
    assert (info.visits, info.count) == (2, 8)


def test_off_by_default_records_no_prompt_and_keeps_every_prompt(tokenizer_dir: str, namespace: str,
                                                                  url: str | None) -> None:
    env = prompt_env(tokenizer_dir, namespace, url, reward_normalization="zscore")
    assert env.config.reward_norm_prompt_stats is False
    kept: list[Any] = []

    async def work() -> None:
        await run_items(env, [dict(item) for item in ITEMS])
        kept.append(env.prompt_stats)
        kept.append(await env.select_prompts(["a", "b", "a"]))

    drive([env], work())
    assert kept == [None, ["a", "b"]]
    assert recorded(url, namespace, ["a", "b", hash_id(UNNAMED)]) == [None, None, None]
    assert StatsStore(url, namespace).get("groups_env").count == 16  # the normalizer still counted


def test_a_prompt_store_outage_never_stops_the_env_and_is_logged_once(tokenizer_dir: str, namespace: str,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    async def down(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailableError("the store is down (simulated)")

    monkeypatch.setattr(AsyncPromptStats, "update", down)
    monkeypatch.setattr(AsyncPromptStats, "select", down)
    env = prompt_env(tokenizer_dir, namespace, reward_normalization="zscore", reward_normalization_warmup=0,
                     reward_norm_prompt_stats=True)
    clock = {"t": 0.0}
    env._reward_norm_gate._clock = lambda: clock["t"]
    kept: list[Any] = []

    async def work() -> None:
        await run_items(env, [{"prompt": f"p{i}", "scores": [0.1 * i, 1.0, 0.5, -0.2]} for i in range(3)])
        kept.append(await env.keep_prompt("p0"))  # unknown during the outage: kept
        clock["t"] = 31.0
        kept.append(await env.select_prompts(["p1", "p2"]))  # tried again, failed again: all kept

    with caplog.at_level(logging.WARNING, logger="shared_rewardnorm.atropos"):
        drive([env], work())
    assert len(env.sent) == 3 and all(math.isfinite(s) for group in env.sent for s in group["scores"])
    assert kept == [True, ["p1", "p2"]]
    warnings = [r.getMessage() for r in caplog.records if r.name == "shared_rewardnorm.atropos"]
    assert len(warnings) == 1 and "prompt statistics are skipped" in warnings[0]


def test_an_unreachable_store_sends_raw_groups_when_only_prompts_are_recorded(
        tokenizer_dir: str, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = prompt_env(tokenizer_dir, namespace, dead, reward_norm_prompt_stats=True)
    items = [{"prompt": f"p{i}", "scores": [0.1 * i, 1.0, 0.5, -0.2]} for i in range(3)]
    seen: list[tuple[bool, int]] = []

    async def work() -> None:
        await run_items(env, [dict(item) for item in items])
        prompts = env.prompt_stats  # (inside the loop: the env closes its stores when driven to the end)
        assert prompts is not None
        seen.append((prompts.degraded, prompts.owed))

    with caplog.at_level(logging.WARNING, logger="shared_rewardnorm"):
        drive([env], work())
    assert [group["scores"] for group in env.sent] == [item["scores"] for item in items]
    # reward_norm_on_unavailable="local" (the default) reaches the prompt statistics: the groups
    # are kept for the store (sent exactly once when it answers), and the outage is logged once
    assert seen == [(True, 3)]
    outages = [r.getMessage() for r in caplog.records if "prompt statistics answer from the records" in r.getMessage()]
    assert len(outages) == 1, outages
    assert not [r for r in caplog.records if r.name == "shared_rewardnorm.atropos"]  # nothing skipped



def test_a_bad_prompt_id_fails_the_group_before_anything_is_counted(tokenizer_dir: str, namespace: str) -> None:
    env = prompt_env(tokenizer_dir, namespace, reward_normalization="zscore", reward_norm_prompt_stats=True)
    raised: list[BaseException] = []

    async def work() -> None:
        try:
            await env.handle_send_to_api({"tokens": [[5] * 3] * 4, "masks": [[5] * 3] * 4,
                                          "scores": [0.0, 1.0, 0.5, 0.2]}, {"prompt": ""})
        except ValueError as exc:
            raised.append(exc)

    drive([env], work())
    assert len(raised) == 1 and "PromptEnv.prompt_id_of(item)[0] is empty" in str(raised[0])
    assert env.sent == [] and StatsStore(None, namespace).get("groups_env").count == 0
