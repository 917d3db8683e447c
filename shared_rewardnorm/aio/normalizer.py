"""``AsyncSharedRewardNormalizer``: ``SharedRewardNormalizer`` for asyncio programs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared_rewardnorm._core.normalizer_ops import NormalizerCore
from shared_rewardnorm.aio.store import AsyncStatsStore
from shared_rewardnorm.stats import RunningStats

__all__ = ["AsyncSharedRewardNormalizer"]


class AsyncSharedRewardNormalizer(NormalizerCore):
    """``SharedRewardNormalizer`` for asyncio programs: the same arguments, awaited methods
    (``await norm.normalize(scores)``); the properties read the last statistics seen.

    ``redis`` may also be an ``AsyncStatsStore``, to share one client between normalizers.
    """

    def __init__(self, env: str, redis: Any = None, *, mode: str = "zscore", clip: float | None = 5.0,
                 warmup: int = 10, eps: float = 1e-8, namespace: str = "rewardnorm", cluster: bool = False,
                 statistics: str = "total", on_unavailable: str = "raise", on_lost: str = "reseed") -> None:
        self._owns_store = not isinstance(redis, AsyncStatsStore)
        self._store = AsyncStatsStore(redis, namespace, cluster=cluster) if self._owns_store else redis
        super().__init__(env, self._store, mode, clip, warmup, eps, statistics, on_unavailable, on_lost)

    async def aclose(self) -> None:
        """Close the store this normalizer created; a store passed in is the caller's to close."""
        if self._owns_store:
            await self._store.aclose()

    async def __aenter__(self) -> AsyncSharedRewardNormalizer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def store(self) -> AsyncStatsStore:
        """The store holding the shared statistics."""
        return self._store

    async def normalize(self, scores: Any, update: bool = True, *, batch_id: str | int | None = None) -> list[float]:
        """See ``SharedRewardNormalizer.normalize``. Concurrent calls into the same env through
        one store share a merge (the store's ``coalesce``); each is normalized with the
        statistics its merge returned."""
        return await self._store.run(self._normalize_op(scores, update, batch_id))

    async def refresh(self) -> RunningStats:
        """See ``SharedRewardNormalizer.refresh``."""
        return await self._store.run(self._refresh_op())

    async def metrics_dict(self) -> dict[str, float]:
        """See ``SharedRewardNormalizer.metrics_dict``."""
        return await self._store.run(self._metrics_op())

    async def state_dict(self) -> dict[str, Any]:
        """See ``SharedRewardNormalizer.state_dict``."""
        return await self._store.run(self._state_dict_op())

    async def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """See ``SharedRewardNormalizer.load_state_dict``."""
        await self._store.run(self._load_state_dict_op(state))
