"""``SharedNormRewardFunc(prompt_ids=...)`` inside a real TRL ``GRPOTrainer.train()`` on a tiny
random Llama, on CPU and offline: TRL's prompts and dataset columns reach the wrapper as it
expects, and every scored completion's raw reward is recorded once under its prompt."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.integrations import import_example, require_module

os.environ["HF_HUB_OFFLINE"] = "1"

pytestmark = [
    pytest.mark.trl,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning"),  # as in test_trl.py
]

require_module("trl", "trl")

from shared_rewardnorm import PromptStats, StatsStore  # noqa: E402
from shared_rewardnorm.integrations.prompt_ids import hash_id  # noqa: E402
from shared_rewardnorm.trl import SharedNormRewardFunc  # noqa: E402

example = import_example("trl_grpo")
GENERATIONS = 4  # the example's num_generations


async def async_says_yes(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    return example.says_yes(prompts, completions)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return import_example("offline_models").save_tiny_llama(tmp_path_factory.mktemp("model"))


def totals(url: str | None, namespace: str, env: str, ids: list[str]) -> dict[str, Any]:
    with PromptStats(env, url, namespace=namespace) as prompts:
        return {prompt_id: info for prompt_id, info in zip(ids, prompts.get(ids), strict=True) if info is not None}


def test_grpo_training_records_every_reward_under_its_prompt(model_dir: str, url: str | None, namespace: str,
                                                             tmp_path: Path) -> None:
    raw = example.Recorded(example.length_chars)
    wrapped = [SharedNormRewardFunc(raw, redis=url, namespace=namespace, prompt_ids="idx"),
               SharedNormRewardFunc(async_says_yes, redis=url, namespace=namespace, prompt_ids="hash")]
    indices = list(range(len(example.PROMPTS) * 4))
    trainer = None
    try:
        trainer = example.train(model_dir, str(tmp_path), wrapped, steps=2, scale_rewards="group",
                                columns={"idx": indices})
        scored = len(raw.outputs)
        assert scored == 2 * 8
        by_index = totals(url, namespace, "length_chars", [str(i) for i in indices])
        by_text = totals(url, namespace, "async_says_yes", [hash_id(p) for p in dict.fromkeys(example.PROMPTS)])
        for recorded in (by_index, by_text):
            assert sum(info.count for info in recorded.values()) == scored
            assert all(info.count % GENERATIONS == 0 for info in recorded.values())
        # Each index's completions are one group of one call: one visit of num_generations rewards.
        assert all((info.visits, info.count) == (1, GENERATIONS) for info in by_index.values())
        # The raw rewards, not the normalized ones: their sum is what the function returned.
        assert math.fsum(info.weight * info.mean for info in by_index.values()) == pytest.approx(
            math.fsum(raw.outputs), rel=1e-12)
        assert StatsStore(url, namespace).get("length_chars").count == scored
    finally:
        wrapped[0].close()
        if trainer is not None:  # the async wrapper's connections belong to TRL's event loop
            asyncio.run_coroutine_threadsafe(wrapped[1].aclose(), trainer.async_loop).result()
