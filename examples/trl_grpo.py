"""Two reward functions of very different scales in TRL's GRPOTrainer, raw and with shared
normalization (needs the ``trl`` extra and a CPU torch; runs offline in about a minute).

    python examples/trl_grpo.py [--steps 4] [--scale-rewards group|batch|none] [--redis-url URL]

``length_chars`` counts a completion's characters (tens); ``says_yes`` is 0/1. GRPO sums the
weighted rewards and subtracts each group's mean, so each reward's part of a completion's
advantage is ``weight * (reward - its group mean)`` (the division by the group's std, when
``scale_rewards`` does it, is common to both). The script trains a random one-layer Llama for a
few steps twice, with the same seed: with the raw functions, and with each one wrapped in
``SharedNormRewardFunc`` (z-score against statistics shared through Redis). It prints which
share of the advantage's magnitude each reward drives in each run. docs/user/training.md explains
the numbers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally
sys.path.insert(0, str(Path(__file__).resolve().parent))

from offline_models import save_tiny_llama

from shared_rewardnorm import StatsStore
from shared_rewardnorm.trl import SharedNormRewardFunc

PROMPTS = ["say yes or no", "is the answer yes", "count to three", "what is one plus two",
           "say a long word", "say a short word", "is two plus two four", "say the answer"]


def length_chars(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """The completion's length in characters (a reward in the tens)."""
    return [float(len(completion)) for completion in completions]


def says_yes(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """1 if the completion says "yes", else 0."""
    return [1.0 if "yes" in completion.split() else 0.0 for completion in completions]


class Recorded:
    """Passes a reward function through and keeps what it returned (what GRPO receives)."""

    def __init__(self, func: Any) -> None:
        self.func, self.__name__, self.outputs = func, func.__name__, []

    def __call__(self, *args: Any, **kwargs: Any) -> list[float]:
        rewards = self.func(*args, **kwargs)
        self.outputs.extend(rewards)
        return rewards


def advantage_shares(per_func: dict[str, list[float]], group: int, weights: dict[str, float]) -> dict[str, float]:
    """Each reward's share of ``sum |weight * (reward - group mean)|`` over all completions."""
    totals = {}
    for name, rewards in per_func.items():
        total = 0.0
        for start in range(0, len(rewards), group):
            chunk = rewards[start:start + group]
            mean = sum(chunk) / len(chunk)
            total += sum(abs(weights[name] * (r - mean)) for r in chunk)
        totals[name] = total
    grand = sum(totals.values()) or 1.0
    return {name: total / grand for name, total in totals.items()}


def train(model_dir: str, out_dir: str, reward_funcs: list[Any], steps: int, scale_rewards: str,
          seed: int = 0, columns: dict[str, list[Any]] | None = None) -> Any:
    """A few GRPO steps on CPU; returns the trainer. ``columns``: more dataset columns (one value
    per prompt of ``PROMPTS * 4``), which TRL passes to the reward functions by name."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=8, num_generations=4,
                        max_completion_length=12, max_steps=steps, learning_rate=1e-3, logging_steps=1,
                        report_to=[], save_strategy="no", use_cpu=True, seed=seed, scale_rewards=scale_rewards,
                        disable_tqdm=True, temperature=1.0)
    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward_funcs, args=config,
                          train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4, **(columns or {})}),
                          processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.train()
    return trainer


def run(steps: int, scale_rewards: str, redis_url: str | None, workdir: str,
        namespace: str | None = None) -> dict[str, dict[str, float]]:
    """Both runs; returns each run's advantage shares (and the shared counts). With
    ``namespace`` given the caller owns its keys (a test deletes them all, batch records too);
    without, a random one is used and its statistics are reset at the end (the batch records
    expire after ``batch_record_ttl``)."""
    model_dir = save_tiny_llama(Path(workdir) / "model")
    weights = {"length_chars": 1.0, "says_yes": 1.0}
    owned = namespace is None
    namespace = namespace or f"trl-example-{uuid.uuid4().hex[:8]}"
    results: dict[str, dict[str, float]] = {}
    raw = [Recorded(length_chars), Recorded(says_yes)]
    train(model_dir, str(Path(workdir) / "raw"), raw, steps, scale_rewards)
    results["raw rewards"] = advantage_shares({r.__name__: r.outputs for r in raw}, 4, weights)
    wrapped = [SharedNormRewardFunc(f, redis=redis_url, namespace=namespace, warmup=8)
               for f in (length_chars, says_yes)]
    normalized = [Recorded(w) for w in wrapped]
    try:
        train(model_dir, str(Path(workdir) / "shared"), normalized, steps, scale_rewards)
        results["shared z-score"] = advantage_shares({r.__name__: r.outputs for r in normalized}, 4, weights)
        with StatsStore(redis_url, namespace) as store:
            for w, r in zip(wrapped, normalized):
                stats = store.get(w.env)
                results[f"{w.env} (shared statistics)"] = {"count": stats.count, "mean": stats.mean,
                                                            "std": stats.std, "completions scored": len(r.outputs)}
    finally:
        with StatsStore(redis_url, namespace) as store:
            for w in wrapped:
                if owned:
                    store.reset(w.env)
                w.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps per run (default 4)")
    parser.add_argument("--scale-rewards", choices=["group", "batch", "none"], default="group",
                        help="GRPOConfig.scale_rewards (default group, TRL's default)")
    parser.add_argument("--redis-url", default=None,
                        help="where the statistics live (default: $SHARED_REWARDNORM_URL, else embedded)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as workdir:
        results = run(args.steps, args.scale_rewards, args.redis_url, workdir)
    print(f"\nshare of |advantage| driven by each reward (scale_rewards={args.scale_rewards!r}, {args.steps} steps)")
    for run_name, numbers in results.items():
        print(f"  {run_name:34s} " + "  ".join(f"{key} {value:.3g}" for key, value in numbers.items()))


if __name__ == "__main__":
    main()
