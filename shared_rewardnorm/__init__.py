"""shared_rewardnorm: running reward statistics in Redis, shared by every process of a trainer.

Quick start::

    from shared_rewardnorm import SharedRewardNormalizer

    norm = SharedRewardNormalizer("gsm8k", "redis://localhost:6379/0")  # or None: embedded
    normalized = norm.normalize([1.0, -1.0, 1.0, 1.0])
"""

from .aio import AsyncSharedRewardNormalizer, AsyncStatsStore
from .envinfo import DecayedStats, EnvInfo
from .errors import (
    CorruptStatsError,
    FunctionsNotLoadedError,
    InvalidStatsError,
    NotReplicatedError,
    RewardNormError,
    StaleBatchError,
    StatsOverflowError,
    WrongTypeError,
)
from .normalizer import SharedRewardNormalizer
from .retry import RetryPolicy
from .stats import RunningStats
from .store import StatsStore

__all__ = [
    "RunningStats",
    "DecayedStats",
    "EnvInfo",
    "StatsStore",
    "SharedRewardNormalizer",
    "AsyncStatsStore",
    "AsyncSharedRewardNormalizer",
    "RewardNormError",
    "InvalidStatsError",
    "CorruptStatsError",
    "WrongTypeError",
    "StatsOverflowError",
    "StaleBatchError",
    "FunctionsNotLoadedError",
    "NotReplicatedError",
    "RetryPolicy",
]

__version__ = "0.1.0"
