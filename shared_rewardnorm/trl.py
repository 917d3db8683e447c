"""``shared_rewardnorm.trl``: a TRL reward-function wrapper normalizing against shared
statistics (the ``trl`` extra). The code lives in ``shared_rewardnorm.integrations.trl``; this
is the import path users write."""

from shared_rewardnorm.integrations.trl import SharedNormRewardFunc

__all__ = ["SharedNormRewardFunc"]
