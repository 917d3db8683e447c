"""``SharedNormRewardFunc(prompt_ids=...)``: per-prompt statistics recorded from TRL's calling
convention (played here, as in test_trl_wrapper.py), on the embedded store and the shared Redis."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import numpy as np
import pytest

from shared_rewardnorm import PromptStats, StatsStore
from shared_rewardnorm.aio.prompts import AsyncPromptStats
from shared_rewardnorm.errors import StoreUnavailableError
from shared_rewardnorm.integrations.prompt_ids import hash_id
from shared_rewardnorm.sync import SharedRewardNormalizer
from shared_rewardnorm.trl import SharedNormRewardFunc
from tests.support.redis_servers import free_port


def pass_fail(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
    """1.0 when the completion holds "42", 0.0 otherwise, None for an empty one (no reward)."""
    return [None if not c else (1.0 if "42" in c else 0.0) for c in completions]


async def async_pass_fail(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float | None]:
    await asyncio.sleep(0)
    return pass_fail(prompts, completions)


def reference(rewards_by_prompt: dict[str, list[float]]) -> dict[str, tuple[int, float, float]]:
    """(count, mean, std) of each prompt's rewards, computed directly (no decay)."""
    out = {}
    for prompt, values in rewards_by_prompt.items():
        mean = math.fsum(values) / len(values)
        out[prompt] = (len(values), mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values)))
    return out


def assert_recorded(backend: Any, namespace: str, env: str, expected: dict[str, tuple[int, int, float, float]]
                    ) -> None:
    """Each id's (visits, count, mean, std) as stored, read by a PromptStats of its own."""
    with PromptStats(env, backend, namespace=namespace) as prompts:
        infos = prompts.get(list(expected))
    for (prompt_id, (visits, count, mean, std)), info in zip(expected.items(), infos, strict=True):
        assert info is not None, prompt_id
        assert (info.visits, info.count) == (visits, count), prompt_id
        assert info.mean == pytest.approx(mean, rel=1e-12, abs=1e-12)
        assert info.std == pytest.approx(std, rel=1e-9, abs=1e-12)


def test_hash_records_each_counted_reward_under_its_prompts_hash(backend: Any, namespace: str) -> None:
    wrapped = SharedNormRewardFunc(pass_fail, redis=backend, namespace=namespace, warmup=0, prompt_ids="hash")
    prompts = ["What is 6*7?"] * 2 + [[{"role": "user", "content": "Say 42"}]] * 2
    wrapped(prompts=prompts, completions=["42", "41", "42", ""])   # the empty one has no reward
    wrapped(prompts=prompts, completions=["x", "y", "the 42", "42"])
    a, b = hash_id(prompts[0]), hash_id(prompts[2])
    ref = reference({a: [1.0, 0.0, 0.0, 0.0], b: [1.0, 1.0, 1.0]})
    assert_recorded(backend, namespace, "pass_fail", {a: (2, *ref[a]), b: (2, *ref[b])})
    # The per-env statistics are unchanged by the option: 7 rewards counted once each.
    assert StatsStore(backend, namespace).get("pass_fail").count == 7
    wrapped.close()


def test_a_column_of_dataset_indices_names_the_prompts(backend: Any, namespace: str) -> None:
    wrapped = SharedNormRewardFunc(pass_fail, env="math", redis=backend, namespace=namespace, prompt_ids="idx")
    wrapped(prompts=["p"] * 4, completions=["42", "0", "42", "42"], idx=[7, 7, np.int64(12), np.int64(12)])
    wrapped(prompts=["p"] * 2, completions=["0", "0"], idx=["7", "7"])  # a str column: the same ids
    assert_recorded(backend, namespace, "math", {"7": (2, 4, 0.25, math.sqrt(0.1875)), "12": (1, 2, 1.0, 0.0)})
    wrapped.close()


def test_the_async_wrapper_records_in_each_event_loop(url: str | None, namespace: str) -> None:
    wrapped = SharedNormRewardFunc(async_pass_fail, redis=url, namespace=namespace, prompt_ids="id")

    async def step(completions: list[str], ids: list[str]) -> None:
        await wrapped(prompts=["p"] * len(ids), completions=completions, id=ids)
        assert isinstance(wrapped.prompt_stats, AsyncPromptStats)
        await wrapped.aclose()

    asyncio.run(step(["42", "no"], ["q1", "q2"]))
    asyncio.run(step(["42", "42"], ["q1", "q2"]))  # a new loop: a new client, the same statistics
    assert_recorded(url, namespace, "async_pass_fail", {"q1": (2, 2, 1.0, 0.0), "q2": (2, 2, 0.5, 0.5)})


def test_one_update_per_call_with_the_calls_batch_id(backend: Any, namespace: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    normalize_ids: list[Any] = []
    update_ids: list[Any] = []
    real_normalize, real_update = SharedRewardNormalizer.normalize, PromptStats.update

    def normalize(self: Any, scores: Any, **kwargs: Any) -> Any:
        normalize_ids.append(kwargs.get("batch_id"))
        return real_normalize(self, scores, **kwargs)

    def update(self: Any, ids: Any, rewards: Any, **kwargs: Any) -> None:
        update_ids.append(kwargs.get("batch_id"))
        real_update(self, ids, rewards, **kwargs)

    monkeypatch.setattr(SharedRewardNormalizer, "normalize", normalize)
    monkeypatch.setattr(PromptStats, "update", update)
    wrapped = SharedNormRewardFunc(pass_fail, redis=backend, namespace=namespace, prompt_ids="id")
    for _ in range(2):  # the same call twice is two batches (two visits)
        wrapped(prompts=["p"] * 3, completions=["42", "0", "42"], id=["a", "a", "b"])
    assert update_ids == normalize_ids and len(set(update_ids)) == 2 and None not in update_ids
    # Sent again with its batch id (a retry whose first try had landed), a call counts once.
    prompts = wrapped.prompt_stats
    assert isinstance(prompts, PromptStats)
    real_update(prompts, ["a", "a", "b"], [1.0, 0.0, 1.0], batch_id=update_ids[-1])
    assert_recorded(backend, namespace, "pass_fail", {"a": (2, 4, 0.5, 0.5), "b": (2, 2, 1.0, 0.0)})
    wrapped.close()


def test_settings_are_checked_when_wrapping_and_ids_before_sending(backend: Any, namespace: str) -> None:
    for bad in ("", 3, b"id"):
        with pytest.raises(TypeError, match="prompt_ids must be None, 'hash' or the name of a dataset column"):
            SharedNormRewardFunc(pass_fail, redis=backend, namespace=namespace, prompt_ids=bad)  # type: ignore[arg-type]
    wrapped = SharedNormRewardFunc(pass_fail, redis=backend, namespace=namespace, prompt_ids="id")
    with pytest.raises(TypeError, match=r"got no 'id' argument .*'other'"):
        wrapped(prompts=["p"], completions=["42"], other=[1])
    with pytest.raises(TypeError, match=r"column 'id'\[0\] is a float \(1.5\)"):
        wrapped(prompts=["p"], completions=["42"], id=[1.5])
    with pytest.raises(ValueError, match=r"column 'id'\[1\] is empty"):
        wrapped(prompts=["p", "p"], completions=["42", "0"], id=["a", ""])
    # None of the refused calls reached the store: neither statistics counted anything.
    assert StatsStore(backend, namespace).get("pass_fail").count == 0
    with PromptStats("pass_fail", backend, namespace=namespace) as prompts:
        assert prompts.get(["a"]) == [None]
    wrapped.close()


def test_a_prompt_store_outage_never_fails_a_call_and_keeps_the_groups(namespace: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    wrapped = SharedNormRewardFunc(pass_fail, redis=dead, namespace=namespace, warmup=0, prompt_ids="hash")
    with caplog.at_level(logging.WARNING, logger="shared_rewardnorm"):
        for _ in range(3):
            out = wrapped(prompts=["p", "p"], completions=["42", "0"])
            assert len(out) == 2 and all(math.isfinite(value) for value in out)
    # on_unavailable="local" (the wrapper's default) reaches the prompt statistics too: the
    # groups are kept for the store, not skipped, and the outage is logged once
    prompts = wrapped.prompt_stats
    assert prompts is not None and prompts.on_unavailable == "local" and prompts.degraded and prompts.owed == 3
    outages = [r.getMessage() for r in caplog.records if "prompt statistics answer from the records" in r.getMessage()]
    assert len(outages) == 1, outages
    assert not [r for r in caplog.records if r.name == "shared_rewardnorm.trl"]  # nothing skipped
    wrapped.close()


def test_recording_resumes_when_the_store_answers(backend: Any, namespace: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    real_update = PromptStats.update
    down = {"now": True}

    def update(self: Any, *args: Any, **kwargs: Any) -> None:
        if down["now"]:
            raise StoreUnavailableError("the store is down (simulated)")
        real_update(self, *args, **kwargs)

    monkeypatch.setattr(PromptStats, "update", update)
    wrapped = SharedNormRewardFunc(pass_fail, redis=backend, namespace=namespace, prompt_ids="id")
    clock = {"t": 0.0}
    wrapped._gate._clock = lambda: clock["t"]
    with caplog.at_level(logging.INFO, logger="shared_rewardnorm.trl"):
        wrapped(prompts=["p"], completions=["42"], id=["a"])   # fails: logged
        down["now"] = False
        wrapped(prompts=["p"], completions=["42"], id=["a"])   # within the pause: skipped, not tried
        clock["t"] = 31.0
        wrapped(prompts=["p"], completions=["0"], id=["a"])    # tried again: recorded
    assert_recorded(backend, namespace, "pass_fail", {"a": (1, 1, 0.0, 0.0)})
    messages = [r.getMessage() for r in caplog.records if r.name == "shared_rewardnorm.trl"]
    assert len(messages) == 2 and "2 prompt call(s) were skipped" in messages[1]
    wrapped.close()


def test_a_pickled_copy_keeps_recording_under_the_same_ids(url: str | None, namespace: str) -> None:
    import pickle

    wrapped = SharedNormRewardFunc(pass_fail, redis=url, namespace=namespace, prompt_ids="id")
    wrapped(prompts=["p"], completions=["42"], id=["a"])
    copy = pickle.loads(pickle.dumps(wrapped))
    assert "prompt_ids='id'" in repr(copy)
    copy(prompts=["p"], completions=["0"], id=["a"])
    assert_recorded(url, namespace, "pass_fail", {"a": (2, 2, 0.5, 0.5)})
    wrapped.close()
    copy.close()
