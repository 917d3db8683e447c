"""What shared reward normalization changes in the advantages, measured (numpy only; no trainer).

    python examples/advantage_algebra.py [--seed 0] [--redis-url URL] [--namespace NAME]

Rewards of two made-up envs go through ``SharedRewardNormalizer`` (z-score, statistics shared
through the store), and the advantages that common RL estimators compute from the raw and from
the normalized rewards are compared. The estimators are written as TRL 1.16 computes them:
GRPO's group mean and unbiased group std with ``+ 1e-4`` (``scale_rewards="group"``), the batch
std (``"batch"``), no scaling (``"none"``, Dr. GRPO), and RLOO's leave-one-out baseline. Each
line of output is a number docs/user/training.md quotes.
"""

from __future__ import annotations

import argparse
import uuid

import numpy as np

from shared_rewardnorm import SharedRewardNormalizer, StatsStore

G = 8  # completions per group (TRL's num_generations)
EPS = 1e-4  # TRL's denominator stabilizer


def group_std(r: np.ndarray) -> np.ndarray:
    return r.std(axis=1, ddof=1, keepdims=True)


def grpo_group(r: np.ndarray) -> np.ndarray:
    return (r - r.mean(axis=1, keepdims=True)) / (group_std(r) + EPS)


def grpo_none(r: np.ndarray) -> np.ndarray:
    return r - r.mean(axis=1, keepdims=True)


def grpo_batch(r: np.ndarray) -> np.ndarray:
    return (r - r.mean(axis=1, keepdims=True)) / (r.std(ddof=1) + EPS)


def rloo(r: np.ndarray) -> np.ndarray:
    return r - (r.sum(axis=1, keepdims=True) - r) / (r.shape[1] - 1)


def sample(rng: np.random.Generator, env: str, groups: int) -> np.ndarray:
    """``length``: characters, mean 50, std 15 (a per-group offset, as prompts differ);
    ``correct``: 0/1 with a per-group success rate."""
    if env == "length":
        return rng.normal(50, 12, (groups, 1)) + rng.normal(0, 9, (groups, G))
    return (rng.random((groups, G)) < rng.uniform(0.05, 0.6, (groups, 1))).astype(float)


def normalized(norm: SharedRewardNormalizer, raw: np.ndarray) -> np.ndarray:
    """Each group through the shared normalizer, one call per group (as the adapters do)."""
    return np.array([norm.normalize(group.tolist()) for group in raw])


def share(parts: dict[str, np.ndarray]) -> dict[str, float]:
    total = sum(float(np.abs(p).sum()) for p in parts.values())
    return {name: float(np.abs(p).sum()) / total for name, p in parts.items()}


def measure(seed: int, redis_url: str | None, namespace: str | None = None) -> dict[str, float]:
    """Every figure docs/user/training.md quotes. With ``namespace`` given the caller owns its keys
    (a test deletes them all, batch records included); without, a random one is used and its
    statistics are reset at the end (the batch records expire after ``batch_record_ttl``)."""
    rng = np.random.default_rng(seed)
    owned = namespace is None
    namespace = namespace or f"algebra-{uuid.uuid4().hex[:8]}"
    results: dict[str, float] = {}
    norms = {env: SharedRewardNormalizer(env, redis_url, namespace=namespace, warmup=0, clip=None)
             for env in ("length", "correct")}
    clipped = SharedRewardNormalizer("length-clip1", redis_url, namespace=namespace, warmup=0, clip=1.0)
    try:
        for env, norm in norms.items():  # warm the statistics up: 50 groups per env
            normalized(norm, sample(rng, env, 50))
        normalized(clipped, sample(rng, "length", 50))
        raw = {env: sample(rng, env, 200) for env in norms}
        z = {env: normalized(norm, raw[env]) for env, norm in norms.items()}
        length_std = norms["length"].std

        # 1. One env, per-group standardization: the affine map cancels (up to the 1e-4).
        results["group: max |A_norm - A_raw|, length env"] = float(
            np.abs(grpo_group(z["length"]) - grpo_group(raw["length"])).max())
        results["group: max |A_norm - A_raw|, 0/1 env"] = float(
            np.abs(grpo_group(z["correct"]) - grpo_group(raw["correct"])).max())
        # 2. The same with clip=1: clipping is not affine, so it does not cancel.
        c = normalized(clipped, raw["length"])
        clip_change = np.abs(grpo_group(c) - grpo_group(raw["length"]))
        results["group, clip=1: max |A_norm - A_raw|"] = float(clip_change.max())
        results["group, clip=1: mean |A_norm - A_raw|"] = float(clip_change.mean())
        # 3. No scaling (Dr. GRPO) and RLOO: advantages shrink by the env's running std.
        a_raw, a_norm = grpo_none(raw["length"]).ravel(), grpo_none(z["length"]).ravel()
        big = np.abs(a_raw) > 1  # away from 0/0
        results["none: A_norm / A_raw (median), length env"] = float(np.median(a_norm[big] / a_raw[big]))
        results["1 / shared std of the length env"] = 1.0 / length_std
        results["rloo: mean |A|, raw length env"] = float(np.abs(rloo(raw["length"])).mean())
        results["rloo: mean |A|, normalized length env"] = float(np.abs(rloo(z["length"])).mean())
        # 4. Two reward functions summed (TRL's sum_then_normalize): each one's share of |A|.
        for label, rewards in (("raw", raw), ("normalized", z)):
            centered = {env: r - r.mean(axis=1, keepdims=True) for env, r in rewards.items()}
            for env, value in share(centered).items():
                results[f"two rewards summed, {label}: share of |A| from {env}"] = value
        # 5. One batch mixing both envs' groups. Per-group std cancels the scales; a batch std or
        #    RLOO does not: each env's share of the batch's |A|.
        for name, estimator in (("group", grpo_group), ("batch", grpo_batch), ("rloo", rloo)):
            for label, rewards in (("raw", raw), ("normalized", z)):
                batch = np.concatenate([rewards["length"], rewards["correct"]])
                adv = estimator(batch)
                parts = {"length": adv[: len(rewards["length"])], "correct": adv[len(rewards["length"]):]}
                results[f"mixed batch, {name}, {label}: share of |A| from length"] = share(parts)["length"]
    finally:
        for norm in (*norms.values(), clipped):
            norm.close()
        if owned:
            with StatsStore(redis_url, namespace) as store:
                for env in store.envs():
                    store.reset(env)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--redis-url", default=None, help="default: $SHARED_REWARDNORM_URL, else embedded")
    parser.add_argument("--namespace", default=None,
                        help="keys to use (left in place for you to delete); default: a random one, reset at the end")
    args = parser.parse_args()
    for name, value in measure(args.seed, args.redis_url, args.namespace).items():
        print(f"{name:62s} {value:.3g}")


if __name__ == "__main__":
    main()
