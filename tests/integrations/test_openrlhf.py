"""``shared_rewardnorm.openrlhf.SharedNormRewardFunc`` called the way OpenRLHF calls a
``reward_func``: no OpenRLHF import (it needs vLLM and a GPU); its calling code is reproduced
below from ``openrlhf/utils/agent.py`` (``SingleTurnAgentExecutor``), ``openrlhf/trainer/ray/
vllm_engine.py`` (``RolloutRayActor.generate_responses``) and ``openrlhf/trainer/ppo_utils/
samples_generator.py`` (``_process_response_into_experience``), line for line where it touches
the reward function's inputs and outputs."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import pytest

from shared_rewardnorm import SharedRewardNormalizer, StatsStore
from shared_rewardnorm.openrlhf import SharedNormRewardFunc
from tests.support.delay_proxy import DelayProxy
from tests.support.integrations import require_module

pytestmark = pytest.mark.openrlhf

WORDS = ["yes", "no", "maybe", "four", "five", "the", "answer", "is"]


# --- OpenRLHF's calling code -----------------------------------------------------------------

async def fetch_rewards_via_func(reward_func: Any, queries_list: list[str], prompts_list: list[str],
                                 labels_list: list[str]) -> list[Any]:
    """``SingleTurnAgentExecutor._fetch_rewards_via_func``: one thread per sample."""
    batch_size = 1
    num_chunks = (len(queries_list) + batch_size - 1) // batch_size
    tasks = []
    for i in range(num_chunks):
        start_idx = i * batch_size
        end_idx = min((i + 1) * batch_size, len(queries_list))
        tasks.append(asyncio.to_thread(reward_func, queries_list[start_idx:end_idx],
                                       prompts_list[start_idx:end_idx], labels_list[start_idx:end_idx]))
    return await asyncio.gather(*tasks)


async def execute(reward_func: Any, prompt: str, label: str, response: str) -> dict[str, Any]:
    """``SingleTurnAgentExecutor.execute`` after generation (the query is the decoded prompt and
    response; a reward error is logged and leaves the reward None, as there)."""
    output: dict[str, Any] = {"prompt": prompt, "label": label, "reward": None, "scores": None, "extra_logs": {}}
    query = prompt + response
    try:
        rewards_info_list = await fetch_rewards_via_func(reward_func, [query], [prompt], [label])
        rewards_info = rewards_info_list[0] if rewards_info_list else None
        if rewards_info:
            score_value = rewards_info.get("scores")
            if score_value is None:
                score_value = rewards_info.get("rewards")
            output.update(reward=rewards_info.get("rewards"), scores=score_value,
                          extra_logs=rewards_info.get("extra_logs") or {})
    except Exception as exc:  # OpenRLHF logs and goes on
        output["error"] = exc
    return output


async def rollout(reward_func: Any, batch: list[tuple[str, str, list[str]]]) -> list[dict[str, Any]]:
    """Every prompt's ``generate_responses`` (its ``n`` samples gathered) running at once, as the
    rollout actor serves them."""
    async def generate_responses(prompt: str, label: str, responses: list[str]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(execute(reward_func, prompt, label, r) for r in responses)))

    groups = await asyncio.gather(*(generate_responses(p, label, rs) for p, label, rs in batch))
    return [output for group in groups for output in group]


# --- reward functions as users write them -----------------------------------------------------

def exact_words(queries: list[str], prompts: list[str], labels: list[str], **kwargs: Any) -> dict[str, Any]:
    """Right answer: 1, minus 0.1 per word of the response; plain lists."""
    rewards = []
    for query, prompt, label in zip(queries, prompts, labels):
        words = query[len(prompt):].split()
        rewards.append((1.0 if label in words else 0.0) - 0.1 * len(words))
    return {"rewards": rewards, "extra_logs": {"words": float(len(queries[0].split()))}}


def expected(prompt: str, label: str, response: str) -> float:
    return exact_words([prompt + response], [prompt], [label])["rewards"][0]


def make_batch(prompts: int, n: int, seed: int) -> list[tuple[str, str, list[str]]]:
    rng = random.Random(seed)
    batch = []
    for i in range(prompts):
        label = rng.choice(["four", "five"])
        responses = [" " + " ".join(rng.choices(WORDS, k=rng.randrange(1, 5))) for _ in range(n - 1)]
        responses.append(responses[0])  # two samples of a prompt say the same thing: two samples
        batch.append((f"question {i}:", label, responses))
    return batch


def test_per_sample_calls_are_each_counted_once_and_normalized(url: str | None, namespace: str) -> None:
    reward_func = SharedNormRewardFunc(exact_words, redis=url, namespace=namespace, warmup=4)
    batch = make_batch(prompts=8, n=4, seed=3)
    raws = [expected(p, label, r) for p, label, rs in batch for r in rs]
    try:
        outputs = asyncio.run(rollout(reward_func, batch))
    finally:
        reward_func.close()
    assert [o.get("error") for o in outputs] == [None] * 32
    assert [o["scores"] for o in outputs] == [[raw] for raw in raws]  # filtering sees raw rewards
    assert [o["extra_logs"]["raw_reward"] for o in outputs] == [[raw] for raw in raws]
    assert all("words" in o["extra_logs"] for o in outputs)  # the function's own logs are kept
    stats = StatsStore(url, namespace).get("exact_words")
    assert stats.count == 32  # identical samples count twice; nothing else does
    assert stats.mean == pytest.approx(sum(raws) / len(raws), rel=1e-12)
    # Sequential calls afterwards: exactly the library's normalization of each reward.
    reference = SharedRewardNormalizer("exact_words", url, namespace=namespace, warmup=4)
    again = SharedNormRewardFunc(exact_words, redis=url, namespace=namespace, warmup=4)
    try:
        for prompt, label, responses in batch[:2]:
            for response in responses:
                (out,) = asyncio.run(fetch_rewards_via_func(again, [prompt + response], [prompt], [label]))
                got = out["rewards"][0]
                want = reference.normalize([expected(prompt, label, response)], update=False)[0]
                assert got == want
    finally:
        again.close()
        reference.close()
    assert StatsStore(url, namespace).get("exact_words").count == 40


@pytest.mark.own_server
def test_concurrent_per_sample_calls_share_script_calls(server: Any, inspector: Any, namespace: str) -> None:
    """With 50 ms each way to the server, the samples scored while a merge is in flight go out
    together as one merge: fewer script calls than samples, and every sample counted."""
    batch = make_batch(prompts=8, n=4, seed=4)
    with DelayProxy(server.port, delay=0.05) as proxy:
        reward_func = SharedNormRewardFunc(exact_words, redis=proxy.url, namespace=namespace, warmup=4)
        try:
            outputs = asyncio.run(rollout(reward_func, batch))
        finally:
            reward_func.close()
    assert [o.get("error") for o in outputs] == [None] * 32
    stats = inspector.info("commandstats")
    merges = sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval", "fcall"))
    assert 1 <= merges < 32 / 2, stats
    assert StatsStore(server.url, namespace).get("exact_words").count == 32


def test_close_stops_the_loop_thread_and_a_later_call_starts_it_again(namespace: str) -> None:
    reward_func = SharedNormRewardFunc(exact_words, namespace=namespace, warmup=0)
    name = "shared-rewardnorm-openrlhf-exact_words"
    reward_func(["q: yes"], ["q:"], ["yes"])
    assert [t.name for t in threading.enumerate()].count(name) == 1
    reward_func.close()
    assert name not in [t.name for t in threading.enumerate()]
    reward_func(["q: no"], ["q:"], ["yes"])
    reward_func.close()
    assert StatsStore(None, namespace).get("exact_words").count == 2


def test_bad_returns_and_settings_are_refused(namespace: str) -> None:
    with pytest.raises(TypeError, match="must return a mapping with 'rewards'"):
        SharedNormRewardFunc(lambda q, p, labels: [1.0], env="e", namespace=namespace)(["q"], ["p"], ["l"])
    with pytest.raises(ValueError, match="returned 2 rewards for 1 queries"):
        SharedNormRewardFunc(lambda q, p, labels: {"rewards": [1.0, 2.0]}, env="e", namespace=namespace)(
            ["q"], ["p"], ["l"])
    with pytest.raises(TypeError, match="redis must be a URL or None"):
        SharedNormRewardFunc(exact_words, redis=object(), namespace=namespace)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        SharedNormRewardFunc(exact_words, mode="zscroe", namespace=namespace)
    assert StatsStore(None, namespace).envs() == []


def test_torch_rewards_come_back_as_tensors_openrlhf_turns_into_experiences(namespace: str) -> None:
    """The example reward functions of OpenRLHF return tensors; ``_process_response_into_experience``
    makes ``torch.tensor([reward])`` of them and takes ``extra_logs`` values' first element."""
    torch = require_module("torch", "trl")

    def tensor_reward(queries: list[str], prompts: list[str], labels: list[str], **kwargs: Any) -> dict[str, Any]:
        rewards = torch.tensor(exact_words(queries, prompts, labels)["rewards"])
        return {"rewards": rewards, "scores": rewards.clamp(0, 1), "extra_logs": {"dummy_scores": rewards}}

    reward_func = SharedNormRewardFunc(tensor_reward, namespace=namespace, warmup=2)
    batch = make_batch(prompts=2, n=4, seed=5)
    try:
        outputs = asyncio.run(rollout(reward_func, batch))
    finally:
        reward_func.close()
    raws = [expected(p, label, r) for p, label, rs in batch for r in rs]
    for output, raw in zip(outputs, raws):
        assert output["reward"].dtype == torch.float32 and output["reward"].shape == (1,)
        info_reward = torch.tensor([output["reward"]])  # what _process_response_into_experience does
        assert info_reward.shape == (1,)
        assert output["scores"].item() == pytest.approx(min(max(raw, 0), 1))
        assert output["extra_logs"]["raw_reward"].flatten()[0].item() == pytest.approx(raw)
    assert StatsStore(None, namespace).get("tensor_reward").count == 8


def test_a_store_outage_never_fails_a_reward_call(namespace: str) -> None:
    """on_unavailable="local" by default: with nothing listening, calls still return rewards
    (raw in warmup, then normalized against the samples the wrapper has seen) and never raise;
    a bad choice is refused before anything is sent."""
    from tests.support.redis_servers import free_port

    reward_func = SharedNormRewardFunc(exact_words, redis=f"redis://127.0.0.1:{free_port()}/0", namespace=namespace,
                                       warmup=3)
    try:
        outputs = [reward_func([f"q: {words}"], ["q:"], ["four"]) for words in ("four", "four five", "five")]
        rewards = [float(output["rewards"][0]) for output in outputs]
        assert rewards[:2] == pytest.approx([0.9, 0.8])  # warming up: raw
        seen = [0.9, 0.8, -0.1]  # the third is normalized against the three the wrapper saw
        mean = sum(seen) / 3
        std = (sum((v - mean) ** 2 for v in seen) / 3) ** 0.5
        assert rewards[2] == pytest.approx((-0.1 - mean) / (std + 1e-8))
    finally:
        reward_func.close()
    with pytest.raises(ValueError, match=r"on_unavailable must be one of 'raise', 'local', got 'skip'"):
        SharedNormRewardFunc(exact_words, on_unavailable="skip", namespace=namespace)
