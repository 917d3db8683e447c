"""An independent model of the reference ``RewardNormalizer``'s behaviour, for parity tests.

Written from the reference's documented behaviour (not copied): per-element Welford updates,
statistics updated before the batch is normalized, population std, ``std + eps`` denominators,
zeros / 0.5 for degenerate spreads, raw-but-clipped scores during warmup, ``mode="none"``
passes through and records nothing, and its ``state_dict`` format (empty: min inf, max -inf).
"""

from __future__ import annotations

import math
from typing import Any


class OracleNormalizer:
    def __init__(self, mode: str = "zscore", clip: float | None = 5.0, warmup: int = 10, eps: float = 1e-8):
        self.mode, self.eps = mode, eps
        self.clip = clip if clip and clip > 0 else None
        self.warmup = max(0, warmup)
        self.n, self.mu, self.sq = 0, 0.0, 0.0
        self.lo, self.hi = math.inf, -math.inf

    def _add(self, x: float) -> None:
        self.n += 1
        d = x - self.mu
        self.mu += d / self.n
        self.sq += d * (x - self.mu)
        self.lo, self.hi = min(self.lo, x), max(self.hi, x)

    @property
    def std(self) -> float:
        return math.sqrt(self.sq / self.n) if self.n >= 2 else 0.0

    def _clipped(self, xs: list[float]) -> list[float]:
        if self.clip is None:
            return xs
        return [min(self.clip, max(-self.clip, x)) for x in xs]

    def normalize(self, scores: list[float]) -> list[float]:
        if not scores:
            return []
        if self.mode == "none":
            return list(scores)
        for x in scores:
            self._add(x)
        if self.n < self.warmup:
            return self._clipped(list(scores))
        if self.mode == "zscore":
            s = self.std
            out = [0.0] * len(scores) if s < self.eps else [(x - self.mu) / (s + self.eps) for x in scores]
        else:
            span = self.hi - self.lo
            out = [0.5] * len(scores) if span < self.eps else [(x - self.lo) / (span + self.eps) for x in scores]
        return self._clipped(out)

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "clip": self.clip, "warmup": self.warmup, "eps": self.eps,
                "accumulator": {"count": self.n, "mean": self.mu, "m2": self.sq, "min": self.lo, "max": self.hi}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mode, self.clip, self.warmup, self.eps = state["mode"], state["clip"], state["warmup"], state["eps"]
        acc = state["accumulator"]
        self.n, self.mu, self.sq, self.lo, self.hi = acc["count"], acc["mean"], acc["m2"], acc["min"], acc["max"]

    def metrics(self) -> dict[str, float]:
        return {"reward_norm/count": float(self.n), "reward_norm/mean": self.mu, "reward_norm/std": self.std,
                "reward_norm/min": self.lo if self.n else 0.0, "reward_norm/max": self.hi if self.n else 0.0}
