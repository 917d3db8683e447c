"""The normalization math: settings, and turning raw scores into normalized ones.

Pure functions shared by the sync and asyncio normalizers. The behaviour is the reference
``RewardNormalizer``'s, quirks included (see docs/reference/api.md): statistics include the batch being
normalized; population std with ``std + eps`` in the denominator; zeros when std < eps and 0.5
when the min-max range < eps; during warmup raw scores are returned, still clipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared_rewardnorm._core.inputs import Scores
from shared_rewardnorm.envinfo import DecayedStats
from shared_rewardnorm.stats import RunningStats

__all__ = ["MODES", "STATISTICS", "NormalizerSettings", "normalize_values"]

MODES = ("zscore", "minmax", "none")
#: Which statistics a z-score uses: all history, or the decayed ("recent") ones.
STATISTICS = ("total", "recent")


@dataclass(frozen=True)
class NormalizerSettings:
    """Validated normalizer settings, with the reference's conventions applied where they are not
    silent changes: a clip of 0 or ``None`` disables clipping (stored as ``None``); a negative
    clip or warmup is a ``ValueError`` (the reference quietly turned them into "no clipping" and
    0); eps must be > 0 (it keeps the denominator away from zero). ``statistics`` is ours alone: the
    reference's checkpoints do not carry it."""

    mode: str = "zscore"
    clip: float | None = 5.0
    warmup: int = 10
    eps: float = 1e-8
    statistics: str = "total"

    @classmethod
    def create(cls, mode: Any = "zscore", clip: Any = 5.0, warmup: Any = 10, eps: Any = 1e-8,
               statistics: Any = "total") -> NormalizerSettings:
        """Validate raw settings (from a constructor or a checkpoint) into settings."""
        if mode not in MODES:
            raise ValueError(f"invalid normalization mode {mode!r}; must be one of {', '.join(MODES)}")
        if statistics not in STATISTICS:
            raise ValueError(f"invalid statistics {statistics!r}; must be one of {', '.join(STATISTICS)}")
        if statistics == "recent" and mode == "minmax":
            raise ValueError('statistics="recent" needs mode="zscore": the decayed statistics keep no min or max')
        if clip is not None:
            # clip != clip: NaN, for a Python or a numpy number alike (math.isnan refuses some numpy kinds)
            if isinstance(clip, bool) or not isinstance(clip, (int, float, np.number)) or clip != clip:  # noqa: PLR0124
                raise TypeError(f"clip must be a number or None, got {clip!r}")
            if clip < 0:  # (the reference turned clipping off: a sign typo must not do that silently)
                raise ValueError(f"clip must be >= 0 (0 or None disables clipping), got {clip!r}")
            clip = float(clip) if clip > 0 else None
        if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)):
            raise TypeError(f"warmup must be an int, got {warmup!r}")
        if warmup < 0:  # (the reference read it as 0)
            raise ValueError(f"warmup must be >= 0 (samples before normalization starts), got {warmup!r}")
        # eps > 0: with eps 0 a batch of equal scores divides by zero, after it was merged.
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.number)) or not 0 < eps < float("inf"):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        return cls(mode=mode, clip=clip, warmup=int(warmup), eps=float(eps), statistics=statistics)


def normalize_values(values: Scores, stats: RunningStats, settings: NormalizerSettings,
                     decayed: DecayedStats | None = None) -> list[float]:
    """Normalize validated scores with ``stats`` (which already include them; with
    ``statistics="recent"`` the z-score's mean and std come from ``decayed`` instead, while
    warmup still counts all samples; past warmup a decayed weight of 0 is a ``ValueError``:
    there is no recent mean or std, and raw scores must not pass as normalized ones).

    Large batches are computed with numpy; the arithmetic is the same IEEE operations in the
    same order as the pure-Python path, so both give identical results.
    """
    count = len(values)
    if settings.mode == "none":
        return [float(value) for value in values]
    warm = stats.count >= settings.warmup
    center: RunningStats | DecayedStats = stats
    if settings.statistics == "recent":
        if decayed is None:
            raise ValueError('statistics="recent" needs decayed statistics: configure a half-life for the env')
        if warm and decayed.weight == 0:
            raise ValueError('statistics="recent" past warmup with decayed weight 0: no recent statistics to '
                             'normalize with (merge a batch first, or use statistics="total")')
        center = decayed
    if not warm:
        offset, scale, constant = 0.0, 1.0, None
    elif settings.mode == "zscore":
        std = center.std
        offset, scale, constant = center.mean, std + settings.eps, (0.0 if std < settings.eps else None)
    else:
        spread = stats.max - stats.min
        offset, scale, constant = stats.min, spread + settings.eps, (0.5 if spread < settings.eps else None)
    clip = settings.clip
    if constant is not None:
        if clip is not None:
            constant = max(-clip, min(clip, constant))
        return [constant] * count
    if isinstance(values, np.ndarray):
        result = (values - offset) / scale if warm else values.copy()
        if clip is not None:
            np.clip(result, -clip, clip, out=result)
        normalized: list[float] = result.tolist()  # numpy types tolist() as Any; float64 gives floats
        return normalized
    if clip is None:
        return [(value - offset) / scale for value in values] if warm else list(values)
    low = -clip
    if not warm:
        return [low if value < low else clip if value > clip else value for value in values]
    # One pass: normalize and clip each score (the same operations as two passes).
    return [low if (scaled := (value - offset) / scale) < low else clip if scaled > clip else scaled
            for value in values]
