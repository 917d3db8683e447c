"""An Atropos environment with shared reward normalization (needs the ``atropos`` extra).

A toy arithmetic env: the policy answers "what is two plus three", and a reply scores 1 if it
says the right number word, minus 0.05 per word (so scores are not just 0/1). The three lines
that matter are the mixin before ``BaseEnv``, ``env_config_cls`` and ``name``; the rest is an
ordinary ``BaseEnv``.

    # the env's own Atropos CLI, against a real inference server and rollout API:
    python examples/atropos_env.py serve --env.reward_normalization zscore \\
        --env.reward_norm_redis_url redis://redis-host:6379/0 --openai.base_url http://... \\
        --env.rollout_server_url http://api-host:8000

    # the whole pipeline on this machine (API server, two envs, a trainer): atropos_pipeline.py

    # offline: two replicas of the env, a seeded random "policy" instead of a server, one store
    python examples/atropos_env.py demo [--redis-url redis://127.0.0.1:6379/0]

The offline demo prints each group's raw and normalized scores and the shared count, which
grows with the groups of both replicas: they normalize against one set of statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from atroposlib.envs.base import APIServerConfig, BaseEnv, ScoredDataGroup

sys.path.insert(0, str(Path(__file__).resolve().parent))

from offline_models import WORDS, save_word_tokenizer

from shared_rewardnorm.atropos import SharedRewardNormConfig, SharedRewardNormMixin

NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
QUESTIONS = [(f"what is {NUMBERS[a]} plus {NUMBERS[b]}", NUMBERS[a + b + 1])
             for a in range(4) for b in range(4)]


def offline_tokenizer() -> str:
    """A word-level tokenizer saved in a temp dir (no hub download). Replicas started together
    each call this: the first to finish saving moves its copy into place, the others use it."""
    target = Path(tempfile.gettempdir()) / "shared-rewardnorm-word-tokenizer"
    if not (target / "tokenizer.json").exists():
        fresh = save_word_tokenizer(tempfile.mkdtemp(prefix="shared-rewardnorm-word-tokenizer-"))
        try:
            os.rename(fresh, target)
        except OSError:  # another replica's copy is there already
            shutil.rmtree(fresh, ignore_errors=True)
    return str(target)


def score(reply: str, answer: str) -> float:
    words = reply.split()
    return (1.0 if answer in words else 0.0) - 0.05 * len(words)


class ToyArithmeticEnv(SharedRewardNormMixin, BaseEnv):
    """Answers scored for correctness and brevity, normalized against shared statistics."""

    name = "toy_arithmetic"  # the statistics key, the same for every replica
    env_config_cls = SharedRewardNormConfig

    @classmethod
    def config_init(cls) -> tuple[SharedRewardNormConfig, list[APIServerConfig]]:
        config = SharedRewardNormConfig(tokenizer_name=offline_tokenizer(), group_size=4, use_wandb=False,
                                        max_token_length=64, reward_normalization="zscore",
                                        reward_normalization_warmup=8)
        return config, [APIServerConfig(model_name="toy", base_url="http://localhost:9001/v1", api_key="x")]

    async def setup(self) -> None:
        self.iteration = 0

    async def get_next_item(self) -> tuple[str, str]:
        item = QUESTIONS[self.iteration % len(QUESTIONS)]
        self.iteration += 1
        return item

    async def collect_trajectories(self, item: tuple[str, str]) -> tuple[ScoredDataGroup, list[Any]]:
        question, answer = item
        prompt = self.tokenizer.encode(question)
        group = ScoredDataGroup(tokens=[], masks=[], scores=[], group_overrides={})
        for reply in await self.sample_replies(question):
            reply_tokens = self.tokenizer.encode(reply)
            group["tokens"].append(prompt + reply_tokens)
            group["masks"].append([-100] * len(prompt) + reply_tokens)
            group["scores"].append(score(reply, answer))
        return group, []

    async def sample_replies(self, question: str) -> list[str]:
        """The policy's ``group_size`` replies, from the inference server."""
        completion = await self.server.chat_completion(messages=[{"role": "user", "content": question}],
                                                       n=self.config.group_size, max_tokens=16)
        return [choice.message.content for choice in completion.choices]

    async def evaluate(self, *args: Any, **kwargs: Any) -> None:
        return None


class OfflineToyArithmeticEnv(ToyArithmeticEnv):
    """The same env with a seeded random "policy" standing in for the inference server (Atropos
    0.4.0's fake server, ``testing=True``, lacks attributes its ``ServerManager`` reads)."""

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rng = random.Random(seed)

    async def sample_replies(self, question: str) -> list[str]:
        answer = dict(QUESTIONS)[question]
        return [" ".join([answer if self.rng.random() < 0.5 else self.rng.choice(WORDS),
                          *self.rng.choices(WORDS, k=self.rng.randrange(0, 6))])
                for _ in range(self.config.group_size)]


async def demo(redis_url: str | None, steps: int, namespace: str | None = None) -> None:
    """Two replicas of the env take turns; each group goes through ``handle_send_to_api`` as in
    ``process`` mode (written out, not posted to a rollout API). With ``namespace`` given the
    caller owns its keys; without, a random one is used and its statistics are reset at the end
    (the batch records expire after ``batch_record_ttl``)."""
    owned = namespace is None
    config, servers = ToyArithmeticEnv.config_init()
    config = config.model_copy(update={"reward_norm_redis_url": redis_url,
                                       "reward_norm_namespace": namespace or f"atropos-demo-{uuid.uuid4().hex[:8]}"})
    replicas = [OfflineToyArithmeticEnv(config, servers, testing=True, seed=seed) for seed in range(2)]
    for env in replicas:
        env.max_token_len = config.max_token_length  # the trainer sets this when the env registers
        await env.setup()
    try:
        for step in range(steps):
            env = replicas[step % 2]
            group, _ = await env.collect_trajectories(await env.get_next_item())
            raw = list(group["scores"])
            await env.handle_send_to_api(group, do_send_to_api=False)
            norm = env.reward_normalizer
            print(f"replica {step % 2}  raw {' '.join(f'{x:+.2f}' for x in raw)}  ->  "
                  f"normalized {' '.join(f'{x:+.2f}' for x in group['scores'])}  "
                  f"(shared count {norm.count}, mean {norm.mean:+.3f}, std {norm.std:.3f})")
    finally:
        if owned:
            await replicas[0].reward_normalizer.store.reset(replicas[0].reward_norm_env)
        for env in replicas:
            await env.close_reward_normalizer()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "demo":
        parser = argparse.ArgumentParser(prog="atropos_env.py demo")
        parser.add_argument("--redis-url", default=None, help="default: $SHARED_REWARDNORM_URL, else embedded")
        parser.add_argument("--steps", type=int, default=8)
        args = parser.parse_args(sys.argv[2:])
        asyncio.run(demo(args.redis_url, args.steps))
    else:
        ToyArithmeticEnv.cli()


if __name__ == "__main__":
    main()
