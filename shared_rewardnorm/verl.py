"""``shared_rewardnorm.verl``: a verl reward manager normalizing against shared statistics (the
``verl`` extra). The code lives in ``shared_rewardnorm.integrations.verl``; this is the import
path users write, and the module verl loads with
``reward.reward_manager.module.path=pkg://shared_rewardnorm.verl``."""

from shared_rewardnorm.integrations.verl import REGISTERED_NAME, SharedNormRewardManager, VerlOptions

__all__ = ["REGISTERED_NAME", "SharedNormRewardManager", "VerlOptions"]
