"""shared_rewardnorm: running reward statistics in Redis, shared by every process of a trainer.

Quick start::

    from shared_rewardnorm import SharedRewardNormalizer

    norm = SharedRewardNormalizer("gsm8k", "redis://localhost:6379/0")  # or None: embedded
    normalized = norm.normalize([1.0, -1.0, 1.0, 1.0])
"""

from shared_rewardnorm.aio import AsyncSharedRewardNormalizer, AsyncStatsStore
from shared_rewardnorm.aio.prompts import AsyncPromptStats
from shared_rewardnorm.envinfo import DecayedStats, EnvInfo
from shared_rewardnorm.errors import (
    CorruptStatsError,
    FunctionsNotLoadedError,
    InvalidStatsError,
    NotReplicatedError,
    RewardNormError,
    StaleBatchError,
    StatsOverflowError,
    StoreConfigError,
    StoreUnavailableError,
    WrongTypeError,
)
from shared_rewardnorm.prompts import PromptInfo, PromptStats
from shared_rewardnorm.retry import RetryPolicy
from shared_rewardnorm.stats import RunningStats
from shared_rewardnorm.sync import SharedRewardNormalizer, StatsStore

__all__ = [
    "AsyncPromptStats",
    "AsyncSharedRewardNormalizer",
    "AsyncStatsStore",
    "CorruptStatsError",
    "DecayedStats",
    "EnvInfo",
    "FunctionsNotLoadedError",
    "InvalidStatsError",
    "NotReplicatedError",
    "PromptInfo",
    "PromptStats",
    "RetryPolicy",
    "RewardNormError",
    "RunningStats",
    "SharedRewardNormalizer",
    "StaleBatchError",
    "StatsOverflowError",
    "StatsStore",
    "StoreConfigError",
    "StoreUnavailableError",
    "WrongTypeError",
]

__version__ = "0.1.0"
