"""``shared_rewardnorm.atropos``: shared reward normalization for Atropos's ``BaseEnv`` (the
``atropos`` extra). The code lives in ``shared_rewardnorm.integrations.atropos``; this is the
import path users write."""

from shared_rewardnorm.integrations.atropos import SharedRewardNormConfig, SharedRewardNormMixin

__all__ = ["SharedRewardNormConfig", "SharedRewardNormMixin"]
