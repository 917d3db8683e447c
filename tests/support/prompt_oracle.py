"""The definition of the per-prompt statistics, computed per sample (independently of the
library's merges), and the comparison the prompt tests use."""

from __future__ import annotations

import math

import pytest

from shared_rewardnorm import PromptInfo

#: Rewards sit near this offset, where a naive sum of squares would lose every digit.
OFFSET = 1e6


class DefinitionOracle:
    """The definition, per sample: every reward remembered with the visit it came in; after k
    visits of a prompt, a reward of visit j weighs decay ** (k - j)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.rewards: dict[str, list[tuple[int, float]]] = {}
        self.visits: dict[str, int] = {}

    def call(self, ids: list[str], rewards: list[float]) -> None:
        for prompt_id in dict.fromkeys(ids):
            self.visits[prompt_id] = self.visits.get(prompt_id, 0) + 1
        for prompt_id, reward in zip(ids, rewards, strict=True):
            self.rewards.setdefault(prompt_id, []).append((self.visits[prompt_id], reward))

    def expected(self, prompt_id: str) -> tuple[int, int, float, float, float]:
        k = self.visits[prompt_id]
        samples = self.rewards[prompt_id]
        weights = [self.decay ** (k - j) for j, _ in samples]
        weight = math.fsum(weights)
        centred = math.fsum(w * (r - OFFSET) for w, (_, r) in zip(weights, samples, strict=True)) / weight
        mean = OFFSET + centred
        m2 = math.fsum(w * ((r - OFFSET) - centred) ** 2 for w, (_, r) in zip(weights, samples, strict=True))
        return k, len(samples), weight, mean, m2


def assert_matches(info: PromptInfo | None, expected: tuple[int, int, float, float, float]) -> None:
    visits, count, weight, mean, m2 = expected
    assert info is not None
    assert (info.visits, info.count) == (visits, count)
    assert info.weight == pytest.approx(weight, rel=1e-9)
    std = math.sqrt(m2 / weight)
    # The mean's error relative to the rewards' scale (their spread, or 1: rewards are of order
    # 1 around the offset), not to the mean itself: near 1e6 that would allow an error of 1e-3.
    # (One ulp of 1e6 is 1.2e-10, so the bound is about 8 ulps.)
    assert abs(info.mean - mean) <= 1e-9 * max(std, 1.0), (info.mean - mean, info, expected)
    assert info.m2 == pytest.approx(m2, rel=1e-9, abs=1e-12 * weight)
