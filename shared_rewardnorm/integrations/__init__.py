"""Adapters for RL frameworks, each behind an extra and imported by its public path
(``shared_rewardnorm.atropos``, ``shared_rewardnorm.trl``); ``loops`` keeps one asyncio
normalizer per event loop for the adapters driven by loops they do not own."""
