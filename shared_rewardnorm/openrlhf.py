"""``shared_rewardnorm.openrlhf``: an OpenRLHF ``reward_func`` wrapper normalizing against shared
statistics (no extra needed). The code lives in ``shared_rewardnorm.integrations.openrlhf``; this
is the import path users write."""

from shared_rewardnorm.integrations.openrlhf import SharedNormRewardFunc

__all__ = ["SharedNormRewardFunc"]
