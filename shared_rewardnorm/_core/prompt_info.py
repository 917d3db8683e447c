"""One prompt's statistics as a value: what ``PromptStats.get`` returns, what snapshots hold,
and what the local view of an outage (``prompt_outage.py``) computes with."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PromptInfo"]


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """One prompt's statistics: ``visits`` (calls that held it), ``count`` (its rewards, not
    decayed), ``weight`` (the sum of their weights: ``count`` without decay), the weighted
    ``mean`` and ``m2`` (the weighted sum of squared deviations from it). A seeded prompt has
    ``visits == count == 0`` and the prior's weight and mean."""

    visits: int
    count: int
    weight: float
    mean: float
    m2: float

    @property
    def std(self) -> float:
        """The weighted standard deviation, ``sqrt(m2 / weight)`` (0 without weight)."""
        return math.sqrt(self.m2 / self.weight) if self.weight > 0 else 0.0

    def to_list(self) -> list[float | int]:
        """``[visits, count, weight, mean, m2]``, as snapshots hold it."""
        return [self.visits, self.count, self.weight, self.mean, self.m2]
