"""The asyncio shell: ``AsyncStatsStore`` and ``AsyncSharedRewardNormalizer``.

Same constructor arguments and method names as the sync classes (``shared_rewardnorm.sync``),
awaited. They run the same operations from ``shared_rewardnorm._core``; only the loop that
awaits each request differs. ``coalesce`` combines concurrent merges into one env.
"""

from shared_rewardnorm.aio.normalizer import AsyncSharedRewardNormalizer
from shared_rewardnorm.aio.store import AsyncStatsStore

__all__ = ["AsyncSharedRewardNormalizer", "AsyncStatsStore"]
