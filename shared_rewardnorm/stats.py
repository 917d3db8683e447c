"""``RunningStats``: an immutable summary of a set of values (count, mean, m2, min, max).

This is what a Redis hash stores, what the merge script returns, and what the reference's
``WelfordAccumulator.state_dict()`` holds, so checkpoints convert losslessly. Summaries of
batches are computed in two passes (``math.fsum``, or numpy's pairwise sums with a correction
pass for large batches) and combined with Chan et al.'s pairwise formula, which stays accurate
where per-element Welford updates drift (large offsets, many values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared_rewardnorm._core.inputs import Scores, coerce_scores
from shared_rewardnorm._core.schema import STAT_FIELDS
from shared_rewardnorm.errors import InvalidStatsError

__all__ = ["RunningStats", "summarize"]

#: Counts must stay below 2^53 so every count is exact as a double (the Lua number type).
MAX_COUNT = 2**53 - 1
#: How far (relative to the largest magnitude among min and max) a checkpoint's mean may lie
#: outside [min, max]: far above the rounding of any sequence of merges, far below a real error.
MEAN_SLACK = 1e-9


@dataclass(frozen=True, slots=True)
class RunningStats:
    """Count, mean, m2 (sum of squared deviations from the mean), min and max of some values.

    ``RunningStats()`` is the empty summary: every field is zero, which is what the reference's
    empty accumulator reports for mean, min and max. Construction validates the fields (finite
    floats, integer count in [0, 2^53), m2 >= 0, min <= max), so an instance is always safe to
    store.
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = 0.0
    max: float = 0.0

    def __post_init__(self) -> None:
        count = self.count
        if type(count) is not int:
            if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
                raise InvalidStatsError(f"count must be an int, got {type(count).__name__}")
            object.__setattr__(self, "count", int(count))
        if not 0 <= self.count <= MAX_COUNT:
            raise InvalidStatsError(f"count must be in [0, 2**53 - 1], got {self.count}")
        for name in STAT_FIELDS[1:]:
            value = getattr(self, name)
            if type(value) is not float:
                if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, np.number)):
                    raise InvalidStatsError(f"{name} must be a real number, got {type(value).__name__}")
                value = float(value)
                object.__setattr__(self, name, value)
            if not math.isfinite(value):
                raise InvalidStatsError(f"{name} must be finite, got {value!r}")
        if self.m2 < 0:
            raise InvalidStatsError(f"m2 must be >= 0, got {self.m2!r}")
        if self.min > self.max:
            raise InvalidStatsError(f"min {self.min!r} is greater than max {self.max!r}")
        if self.count == 0 and (self.mean, self.m2, self.min, self.max) != (0.0, 0.0, 0.0, 0.0):
            raise InvalidStatsError("empty stats (count 0) must have mean, m2, min and max all 0")

    @classmethod
    def trusted(cls, count: int, mean: float, m2: float, min: float, max: float) -> RunningStats:
        """Build from fields already known valid (a script's reply, a fresh summary) without
        validating them again: this is on the hot path of every ``normalize``."""
        stats = object.__new__(cls)
        object.__setattr__(stats, "count", count)
        object.__setattr__(stats, "mean", mean)
        object.__setattr__(stats, "m2", m2)
        object.__setattr__(stats, "min", min)
        object.__setattr__(stats, "max", max)
        return stats

    @property
    def variance(self) -> float:
        """Population variance (m2 / count); 0 for fewer than two values, as in the reference."""
        return self.m2 / self.count if self.count >= 2 else 0.0

    @property
    def std(self) -> float:
        """Population standard deviation."""
        return math.sqrt(self.variance)

    @property
    def is_empty(self) -> bool:
        """True when no value has been counted."""
        return self.count == 0

    @classmethod
    def from_values(cls, values: Any) -> RunningStats:
        """Summarize values (any flat iterable of finite real numbers, or a 1-d numpy array).

        Raises ``TypeError``/``ValueError`` naming the first bad position.
        """
        return summarize(coerce_scores(values))

    def merge(self, other: RunningStats) -> RunningStats:
        """The summary of both sets of values (Chan et al.'s pairwise update; the same formula
        the merge script runs on Redis)."""
        if not isinstance(other, RunningStats):
            raise TypeError(f"can only merge RunningStats, got {type(other).__name__}")
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        return RunningStats(
            count=count,
            mean=self.mean + delta * (other.count / count),
            m2=self.m2 + other.m2 + delta * delta * (self.count * other.count / count),
            min=min(self.min, other.min),
            max=max(self.max, other.max),
        )

    @classmethod
    def combine(cls, parts: Iterable[RunningStats]) -> RunningStats:
        """The merge of several summaries, in the order given (merging is exact in real
        arithmetic; a fixed order makes the floating-point result repeatable)."""
        total = cls()
        for part in parts:
            total = total.merge(part)
        return total

    def to_dict(self) -> dict[str, Any]:
        """The reference accumulator's checkpoint dict (``count``, ``mean``, ``m2``, ``min``,
        ``max``).

        Empty stats give ``min=inf`` and ``max=-inf`` exactly as the reference writes them, so
        the reference can load our checkpoints and keep tracking min and max correctly.
        """
        if self.count == 0:
            return {"count": 0, "mean": 0.0, "m2": 0.0, "min": math.inf, "max": -math.inf}
        return {name: getattr(self, name) for name in STAT_FIELDS}

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> RunningStats:
        """Read a checkpoint dict written by ``to_dict`` or by the reference's accumulator.

        A count of 0 gives the empty stats whatever the other fields hold (the reference writes
        ``min=inf, max=-inf`` then). Integral float counts (``5.0``, from JSON round trips) are
        accepted. Raises ``InvalidStatsError`` (a ``ValueError``) naming a missing or bad field,
        or a mean outside [min, max] (beyond rounding).
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"stats state must be a mapping, got {type(state).__name__}")
        missing = [name for name in STAT_FIELDS if name not in state]
        if missing:
            raise InvalidStatsError(f"stats state is missing {', '.join(missing)}")
        count = state["count"]
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        if type(count) is int and count == 0:
            return cls()
        stats = cls(count=count, mean=state["mean"], m2=state["m2"], min=state["min"], max=state["max"])
        # A mean outside [min, max] is no set of values' summary (a hand-edited or mixed-up
        # file); merges round, so allow a few parts in a billion of the values' magnitude.
        slack = MEAN_SLACK * max(abs(stats.min), abs(stats.max))
        if not stats.min - slack <= stats.mean <= stats.max + slack:
            raise InvalidStatsError(f"mean {stats.mean!r} lies outside [min, max] = [{stats.min!r}, {stats.max!r}]")
        return stats


def summarize(values: Scores) -> RunningStats:
    """Summarize already-validated finite floats (see ``inputs.coerce_scores``) in two passes.

    Short batches come as lists and use ``math.fsum`` (correctly rounded sums). Long ones come
    as numpy arrays: a pairwise mean, then the corrected two-pass formula (the mean's residual
    is folded back in), as accurate and several times faster than looping in Python.
    """
    count = len(values)
    if count == 0:
        return RunningStats()
    try:
        if not isinstance(values, np.ndarray):
            mean = math.fsum(values) / count
            m2 = math.fsum([(value - mean) * (value - mean) for value in values])
            low, high = min(values), max(values)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                array = values
                mean = float(array.mean())
                deviations = array - mean
                residual = float(deviations.sum()) / count
                m2 = float(np.dot(deviations, deviations)) - count * residual * residual
                mean += residual
                low, high = float(array.min()), float(array.max())
    except OverflowError:
        mean = math.inf
        m2 = math.inf
    if not (math.isfinite(mean) and math.isfinite(m2)):
        raise ValueError("scores are too large in magnitude to summarize as floats "
                         "(their squared deviations overflow)")
    return RunningStats.trusted(count, mean, max(m2, 0.0), low, high)
