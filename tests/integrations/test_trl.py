"""``SharedNormRewardFunc`` inside a real TRL ``GRPOTrainer.train()`` on a tiny random Llama, on
CPU and offline (the model and tokenizer are built in a temp dir)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.integrations import EXAMPLES, import_example, require_module

os.environ["HF_HUB_OFFLINE"] = "1"

pytestmark = [
    pytest.mark.trl,
    pytest.mark.slow,
    # transformers 5 renames gradient_checkpointing (a FutureWarning from its own Trainer, which TRL
    # calls with the old name); not ours to fix, and the suite turns warnings into errors.
    pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning"),
]

require_module("trl", "trl")

import torch  # noqa: E402

from shared_rewardnorm import StatsStore  # noqa: E402
from shared_rewardnorm.trl import SharedNormRewardFunc  # noqa: E402

example = import_example("trl_grpo")


async def async_says_yes(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    return example.says_yes(prompts, completions)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return import_example("offline_models").save_tiny_llama(tmp_path_factory.mktemp("model"))




def test_grpo_training_counts_exactly_the_completions_scored(model_dir: str, url: str | None, namespace: str,
                                                             tmp_path: Path) -> None:
    wrapped = [SharedNormRewardFunc(example.length_chars, redis=url, namespace=namespace, warmup=4),
               SharedNormRewardFunc(async_says_yes, redis=url, namespace=namespace, warmup=4)]
    recorded = [example.Recorded(w) for w in wrapped[:1]] + [wrapped[1]]
    trainer = None
    try:
        trainer = example.train(model_dir, str(tmp_path), recorded, steps=2, scale_rewards="group")
        store = StatsStore(url, namespace)
        scored = len(recorded[0].outputs)
        assert scored == 2 * 8  # 2 steps x per_device_train_batch_size completions
        assert store.get("length_chars").count == scored
        assert store.get("async_says_yes").count == scored
        assert trainer.reward_func_names == ["length_chars", "async_says_yes"]
        # log_metric reached the trainer's logs, once per step
        logged = [entry for entry in trainer.state.log_history if "reward_norm/length_chars/count" in entry]
        assert [entry["reward_norm/length_chars/count"] for entry in logged] == [8.0, 16.0]
        assert "reward_norm/async_says_yes/mean" in logged[-1]
    finally:
        store = StatsStore(url, namespace)
        for env in store.envs():
            store.reset(env)
        wrapped[0].close()
        if trainer is not None:  # the async wrapper's connections belong to TRL's event loop
            asyncio.run_coroutine_threadsafe(wrapped[1].aclose(), trainer.async_loop).result()


def test_the_examples_advantage_decomposition_is_trls(model_dir: str, tmp_path: Path) -> None:
    """The example attributes a completion's advantage to each reward as ``w * (r - group
    mean)``; check that their sum, over the group's std + 1e-4, is the advantage TRL computed."""
    funcs = [example.Recorded(example.length_chars), example.Recorded(example.says_yes)]
    trainer = example.train(model_dir, str(tmp_path), funcs, steps=1, scale_rewards="group")
    rewards = torch.tensor([a + b for a, b in zip(funcs[0].outputs, funcs[1].outputs)]).view(-1, 4)
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    expected = (centered / (rewards.std(dim=1, keepdim=True) + 1e-4)).view(-1)
    # TRL keeps the latest generation batch's advantages for its completions table.
    assert torch.allclose(torch.tensor(list(trainer._logs["advantages"])), expected, atol=1e-5)


def test_the_example_runs_as_documented() -> None:
    env_without_url = {k: v for k, v in os.environ.items() if k != "SHARED_REWARDNORM_URL"}
    result = subprocess.run([sys.executable, str(EXAMPLES / "trl_grpo.py"), "--steps", "2"], capture_output=True,
                            text=True, timeout=600, env=env_without_url)
    assert result.returncode == 0, result.stderr[-3000:]
    shares = {run: (float(a), float(b)) for run, a, b in
              re.findall(r"^  (raw rewards|shared z-score)\s+length_chars (\S+)  says_yes (\S+)$", result.stdout, re.M)}
    assert set(shares) == {"raw rewards", "shared z-score"}, result.stdout
    assert all(abs(a + b - 1) < 2e-3 for a, b in shares.values())
    # What the example is for: raw, the length reward (tens) drives nearly all of |A|; normalized,
    # both do. docs/user/training.md: 0.974 raw, 0.494 normalized over 4 steps (0.971 and 0.452 over
    # these 2 steps on this machine).
    assert shares["raw rewards"][0] > 0.9 and shares["shared z-score"][0] < 0.7, shares
    counts = re.findall(r"count (\d+) .* completions scored (\d+)$", result.stdout, re.M)
    assert counts == [("16", "16"), ("16", "16")], result.stdout
    assert "statistics live in an embedded store local to this process" in result.stderr  # no URL given
