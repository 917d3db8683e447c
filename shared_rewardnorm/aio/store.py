"""``AsyncStatsStore``: ``StatsStore`` for asyncio programs (see ``shared_rewardnorm.aio``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any, TypeVar

from shared_rewardnorm._core.requests import ClientRequest, Done, MergeBatch, Once, Operation, Request, advance
from shared_rewardnorm._core.store_ops import (
    DEFAULT,
    DEFAULT_BATCH_RECORD_TTL,
    DEFAULT_REPLICA_TIMEOUT,
    SEND_FAILURES,
    StoreCore,
    _Default,
)
from shared_rewardnorm._redis.connection import ASYNC_POOL_SIZE, is_cluster, resolve_async_client
from shared_rewardnorm._redis.durability import check_socket_timeout, refuse_unsupported
from shared_rewardnorm._redis.scripts import register_scripts
from shared_rewardnorm._redis.sentinel import aclose_sentinels
from shared_rewardnorm.aio.coalesce import MergeCoalescer
from shared_rewardnorm.envinfo import EnvInfo
from shared_rewardnorm.errors import RewardNormError
from shared_rewardnorm.retry import DEFAULT_RETRY, RetryPolicy
from shared_rewardnorm.stats import RunningStats

__all__ = ["AsyncStatsStore"]

T = TypeVar("T")


class AsyncStatsStore(StoreCore):
    """``StatsStore`` for asyncio programs (``redis.asyncio`` clients); every method is awaited.

    Args:
        redis: a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster`` client (for
            Sentinel, ``redis.asyncio.sentinel.Sentinel(...).master_for(service)``), a URL,
            or ``None`` for the embedded store (the same embedded server the sync classes use).
        namespace: prefix of every key this store touches.
        cluster: with a URL, connect to a Redis Cluster through that node.
        retry, batch_record_ttl, functions, replicas, replica_timeout: as for ``StatsStore``.
        coalesce: merge concurrent ``update``/``merge``/``normalize`` calls into the same env as
            one summary in one script call (see ``shared_rewardnorm.aio.coalesce``): at most one
            merge per env in flight, the batches arriving meanwhile go out together when it
            returns. ``False`` sends every call's merge on its own.
    """

    def __init__(self, redis: Any = None, namespace: str = "rewardnorm", *, cluster: bool = False,
                 retry: RetryPolicy | None = DEFAULT_RETRY,
                 batch_record_ttl: int = DEFAULT_BATCH_RECORD_TTL, functions: bool | None = None,
                 replicas: int = 0, replica_timeout: float = DEFAULT_REPLICA_TIMEOUT,
                 coalesce: bool = True) -> None:
        super().__init__(namespace, retry, batch_record_ttl, replicas, replica_timeout)
        refuse_unsupported(self._wait, redis, cluster)
        if not isinstance(coalesce, bool):
            raise TypeError(f"coalesce must be True or False, got {coalesce!r}")
        #: Runs the merges when ``coalesce`` is on (``None`` otherwise): it builds requests
        #: with this store's ledger and sends them through ``_issue``, as a lone merge goes.
        self.coalescer = MergeCoalescer(self.ledger, self._issue) if coalesce else None
        self._client = resolve_async_client(redis, cluster=cluster)
        self._owns_client = self._client is not redis
        check_socket_timeout(self._wait, self._client)  # (a new asyncio client has no connection open yet)
        # Requests in flight wait here rather than fail: an asyncio cluster client raises
        # MaxConnectionsError when a node's pool is exhausted, and a retry after a backoff would
        # reorder one store's batches. Created on first use, inside the running event loop.
        self._in_flight: asyncio.Semaphore | None = None
        # redis-py's asyncio cluster client routes keyed commands sent before it has read the
        # slot map to random nodes (MOVED storms that close its connections): initialize first.
        self._cluster_ready = not is_cluster(self._client)
        self._scripts = register_scripts(self._client, functions)

    @property
    def client(self) -> Any:
        """The underlying ``redis.asyncio`` client."""
        return self._client

    async def update(self, env: str, values: Any, *, batch_id: str | int | None = None) -> RunningStats:
        """See ``StatsStore.update``."""
        return await self.run(self._update_op(env, values, batch_id))

    async def merge(self, env: str, stats: RunningStats, *, batch_id: str | int | None = None) -> RunningStats:
        """See ``StatsStore.merge``."""
        return await self.run(self._merge_op(env, stats, batch_id))

    async def get(self, env: str) -> RunningStats:
        """See ``StatsStore.get``."""
        return await self.run(self._get_op(env))

    async def set(self, env: str, stats: RunningStats) -> RunningStats:
        """See ``StatsStore.set``."""
        return await self.run(self._set_op(env, stats))

    async def reset(self, env: str) -> None:
        """See ``StatsStore.reset``."""
        await self.run(self._reset_op(env))

    async def info(self, env: str) -> EnvInfo:
        """See ``StatsStore.info``."""
        return await self.run(self._info_op(env))

    async def infos(self, envs: Iterable[str] | None = None) -> dict[str, EnvInfo]:
        """See ``StatsStore.infos``."""
        return await self.run(self._selected_infos_op(envs))

    async def configure(self, env: str, *, half_life: float | None) -> bool:
        """See ``StatsStore.configure``."""
        return await self.run(self._configure_op(env, half_life))

    async def freeze(self, env: str) -> bool:
        """See ``StatsStore.freeze``."""
        return await self.run(self._freeze_op(env, True))

    async def unfreeze(self, env: str) -> bool:
        """See ``StatsStore.unfreeze``."""
        return await self.run(self._freeze_op(env, False))

    async def get_many(self, envs: Iterable[str]) -> dict[str, RunningStats]:
        """See ``StatsStore.get_many``."""
        return await self.run(self._get_many_op(envs))

    async def envs(self) -> list[str]:
        """See ``StatsStore.envs``."""
        return await self.run(self._envs_op())

    async def all(self) -> dict[str, RunningStats]:
        """See ``StatsStore.all``."""
        return await self.run(self._all_op())

    async def aggregate(self, envs: Iterable[str] | None = None) -> RunningStats:
        """See ``StatsStore.aggregate``."""
        return await self.run(self._aggregate_op(envs))

    async def metrics(self, envs: Iterable[str] | None = None) -> dict[str, float]:
        """See ``StatsStore.metrics`` (``degraded`` per env, and the local views of the
        ``on_unavailable="local"`` normalizers of this store while it is unreachable)."""
        return await self.run(self._metrics_op(envs))

    async def survey(self, envs: Iterable[str] | None = None) -> tuple[dict[str, EnvInfo],
                                                                         dict[str, RewardNormError]]:
        """See ``StatsStore.survey``."""
        return await self.run(self._survey_op(envs))

    async def export(self) -> dict[str, Any]:
        """See ``StatsStore.export``."""
        return await self.run(self._export_op())

    async def restore(self, snapshot: Any) -> dict[str, RunningStats]:
        """See ``StatsStore.restore``."""
        return await self.run(self._restore_op(snapshot))

    async def load_functions(self) -> str:
        """See ``StatsStore.load_functions``."""
        return await self.run(self._load_functions_op())

    async def aclose(self) -> None:
        """Close the connections of a client this store created (from a URL or the embedded
        store); a client passed in is the caller's to close."""
        if self._owns_client:
            await self._client.aclose()
            await aclose_sentinels(self._client)

    async def __aenter__(self) -> AsyncStatsStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run(self, operation: Operation[T]) -> T:
        """Drive an operation of the core (a generator of requests, see ``shared_rewardnorm._core``): await each
        request it yields, hand back the reply (or throw in the error), return the operation's
        result. The public seam for new operations; every method of this class is one call of it."""
        reply: Any = None
        error: BaseException | None = None
        while True:
            step = advance(operation, reply, error)
            if isinstance(step, Done):
                return step.value
            error = None
            try:
                reply = await self._send(step)
            except BaseException as exc:  # a cancelled or interrupted call too: the operation judges it
                error = exc

    async def _send(self, request: Request) -> Any:
        if isinstance(request, Once):  # one try, and alone
            inner = request.request
            return await self._issue(self.merge_request(inner) if isinstance(inner, MergeBatch) else inner, None)
        if not isinstance(request, MergeBatch):
            return await self._issue(request)
        if self.coalescer is not None:
            return await self.coalescer.merge(request)
        return await self._issue(self.merge_request(request))

    async def _issue(self, request: ClientRequest, retry: RetryPolicy | _Default | None = DEFAULT) -> Any:
        """Send one request, retrying transient failures as the retry policy (by default the
        store's) says."""
        if self._in_flight is None:
            self._in_flight = asyncio.Semaphore(ASYNC_POOL_SIZE)
        async with self._in_flight:
            if not self._cluster_ready:
                await self._client.initialize()
                self._cluster_ready = True
            return await self._issue_now(request, retry)

    async def _issue_now(self, request: ClientRequest, retry: RetryPolicy | _Default | None) -> Any:
        attempt = 0
        started = time.monotonic()
        while True:
            try:
                return await request.issue(self._client, self._scripts)
            except SEND_FAILURES as exc:
                pause = self._pause_before_resending(request, exc, attempt, time.monotonic() - started, retry)
            attempt += 1
            await asyncio.sleep(pause)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client={self._client!r}, namespace={self._namespace!r})"
