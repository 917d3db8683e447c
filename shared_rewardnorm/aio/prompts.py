"""``AsyncPromptStats``: ``PromptStats`` for asyncio (see ``shared_rewardnorm.prompts``).

The same operations (``shared_rewardnorm._core.prompt_ops``), awaited on an
``AsyncStatsStore``. Prompt updates are not coalesced: each call is its own script call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from shared_rewardnorm._core.prompt_ops import READ_CHUNK, PromptCore, PromptInfo, PromptSettings
from shared_rewardnorm._core.prompt_outage import DEFAULT_CACHE_SIZE, DEFAULT_MAX_OWED
from shared_rewardnorm.aio.store import AsyncStatsStore

__all__ = ["AsyncPromptStats"]


class AsyncPromptStats(PromptCore):
    """See ``PromptStats`` (the same arguments); ``redis`` takes what ``AsyncStatsStore`` takes, or
    an ``AsyncStatsStore``."""

    def __init__(self, env: str, redis: Any = None, *, namespace: str = "rewardnorm", cluster: bool = False,
                 on_unavailable: str = "raise", on_lost: str = "reseed", cache_size: int = DEFAULT_CACHE_SIZE,
                 max_owed: int = DEFAULT_MAX_OWED) -> None:
        self.validate_options(on_unavailable, on_lost, cache_size, max_owed)
        self._owns_store = not isinstance(redis, AsyncStatsStore)
        self._store = AsyncStatsStore(redis, namespace, cluster=cluster) if self._owns_store else redis
        super().__init__(env, self._store, on_unavailable, on_lost, cache_size, max_owed)

    @property
    def store(self) -> AsyncStatsStore:
        """The store that runs this set's operations."""
        return self._store

    async def aclose(self) -> None:
        """Close the store this object created (a store passed in is the caller's)."""
        if self._owns_store:
            await self._store.aclose()

    async def __aenter__(self) -> AsyncPromptStats:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def configure(self, *, decay: float | None = None, buckets: int | None = None) -> bool:
        """See ``PromptStats.configure``."""
        return (await self._store.run(self._configure_op(decay, buckets)))[1]

    async def settings(self) -> PromptSettings:
        """See ``PromptStats.settings``."""
        return await self._store.run(self._settings_op())

    async def update(self, prompt_ids: Any, rewards: Any, *, batch_id: str | int | None = None) -> None:
        """See ``PromptStats.update``."""
        await self._store.run(self._update_op(prompt_ids, rewards, batch_id))

    async def advantages(self, prompt_ids: Any, rewards: Any, *, batch_id: str | int | None = None) -> list[float]:
        """See ``PromptStats.advantages``."""
        return await self._store.run(self._advantages_op(prompt_ids, rewards, batch_id))

    async def get(self, prompt_ids: Any) -> list[PromptInfo | None]:
        """See ``PromptStats.get``."""
        return await self._store.run(self._get_op(prompt_ids))

    async def select(self, prompt_ids: Any, *, low: float, high: float) -> list[str]:
        """See ``PromptStats.select``."""
        return await self._store.run(self._select_op(prompt_ids, low, high))

    async def weights(self, prompt_ids: Any, *, eps: float = 0.05, low: float = 0.0,
                      high: float = 1.0) -> list[float]:
        """See ``PromptStats.weights``."""
        return await self._store.run(self._weights_op(prompt_ids, eps, low, high))

    async def seed(self, prompt_ids: Any, means: Any, weights: Any, *, replace: bool = False,
                   batch_id: str | int | None = None) -> int:
        """See ``PromptStats.seed``."""
        return await self._store.run(self._seed_op(prompt_ids, means, weights, replace, batch_id))

    async def forget(self, prompt_ids: Any = None) -> int:
        """See ``PromptStats.forget``."""
        return await self._store.run(self._forget_op(prompt_ids))

    async def items(self, chunk: int = READ_CHUNK) -> AsyncIterator[tuple[str, PromptInfo]]:
        """See ``PromptStats.items``."""
        settings = await self.settings()
        for first in range(0, settings.buckets, chunk):
            for item in await self._store.run(self._read_buckets_op(first, first + chunk, settings)):
                yield item

    async def export(self) -> dict[str, Any]:
        """See ``PromptStats.export``."""
        settings = await self.settings()
        return self.snapshot(settings, [item async for item in self.items()])

    async def restore(self, snapshot: Any) -> int:
        """See ``PromptStats.restore``."""
        return await self._store.run(self._restore_op(snapshot))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(env={self.env!r}, store={self._store!r})"
