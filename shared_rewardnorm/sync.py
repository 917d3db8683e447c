"""The blocking shell: ``StatsStore`` and ``SharedRewardNormalizer``.

Each env's statistics are one hash at ``<namespace>:{<env>}`` (readable with ``redis-cli
HGETALL``). Updates go through the ``merge`` script, which validates, merges and returns the
merged statistics in one atomic round trip; nothing here does read-modify-write on the client.
The operations themselves live in ``shared_rewardnorm._core`` (generators of requests); this
module only sends their requests and waits for the replies, as ``shared_rewardnorm.aio`` awaits
them. ``SharedRewardNormalizer`` is the reference ``RewardNormalizer``'s API over a shared store:
every process that builds one for the same env (and namespace, on the same Redis) normalizes
against the same statistics, in one round trip per ``normalize``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from shared_rewardnorm._core.normalizer_ops import NormalizerCore
from shared_rewardnorm._core.requests import ClientRequest, Done, MergeBatch, Once, Operation, Request, advance
from shared_rewardnorm._core.store_ops import (
    DEFAULT,
    DEFAULT_BATCH_RECORD_TTL,
    DEFAULT_REPLICA_TIMEOUT,
    SEND_FAILURES,
    StoreCore,
    _Default,
)
from shared_rewardnorm._redis.connection import close_client, resolve_client
from shared_rewardnorm._redis.durability import check_socket_timeout, refuse_unsupported
from shared_rewardnorm._redis.scripts import register_scripts
from shared_rewardnorm.envinfo import EnvInfo
from shared_rewardnorm.errors import RewardNormError
from shared_rewardnorm.retry import DEFAULT_RETRY, RetryPolicy
from shared_rewardnorm.stats import RunningStats

__all__ = ["SharedRewardNormalizer", "StatsStore"]

T = TypeVar("T")


class StatsStore(StoreCore):
    """Shared running statistics per environment.

    Args:
        redis: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` client (for Sentinel, the
            primary's client from ``Sentinel(...).master_for(service)``), a ``redis://`` /
            ``rediss://`` / ``unix://`` / ``redis+sentinel://`` URL, or ``None`` for the
            embedded in-process store (shared by every store in the process).
        namespace: prefix of every key this store touches (``<namespace>:{<env>}``).
        cluster: with a URL, connect to a Redis Cluster through that node.
        retry: how to retry transient failures (connection errors, timeouts, a server loading
            its data); ``None`` never retries. Retrying never merges a batch twice.
        batch_record_ttl: seconds a client's record of merged batches lives per env.
        functions: ``True`` calls the Function library only (FCALL), ``False`` the scripts only
            (EVALSHA), ``None`` tries the Functions and falls back to the scripts.
        replicas: after every merge, wait (``WAIT``, in the same round trip) until this many
            replicas hold it, so a failover cannot lose it; 0 (the default) does not wait. A merge
            that fewer replicas acknowledged raises ``NotReplicatedError`` (it is stored once:
            calling again with the same ``batch_id`` waits again and counts it once). Not on a
            cluster or the embedded store.
        replica_timeout: seconds a merge waits for its replicas; a client's ``socket_timeout``
            must be longer (else ``ValueError``: it would time out and retry first).

    Errors: bad arguments raise ``TypeError``/``ValueError`` before anything is sent; a
    malformed stored hash raises ``CorruptStatsError`` and a key of another type
    ``WrongTypeError``, and in both cases nothing is overwritten.
    """

    def __init__(self, redis: Any = None, namespace: str = "rewardnorm", *, cluster: bool = False,
                 retry: RetryPolicy | None = DEFAULT_RETRY,
                 batch_record_ttl: int = DEFAULT_BATCH_RECORD_TTL, functions: bool | None = None,
                 replicas: int = 0, replica_timeout: float = DEFAULT_REPLICA_TIMEOUT) -> None:
        super().__init__(namespace, retry, batch_record_ttl, replicas, replica_timeout)
        refuse_unsupported(self._wait, redis, cluster)
        self._client = resolve_client(redis, cluster=cluster)
        self._owns_client = self._client is not redis
        try:
            check_socket_timeout(self._wait, self._client)
        except ValueError:
            if self._owns_client:
                close_client(self._client)
            raise
        self._scripts = register_scripts(self._client, functions)

    @property
    def client(self) -> Any:
        """The underlying redis-py client."""
        return self._client

    def close(self) -> None:
        """Close the connections of a client this store created (from a URL or the embedded
        store); a client passed in is the caller's to close."""
        if self._owns_client:
            close_client(self._client)

    def __enter__(self) -> StatsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, env: str, values: Any, *, batch_id: str | int | None = None) -> RunningStats:
        """Merge ``values`` into ``env``'s statistics and return the statistics right after.

        One atomic round trip; the payload is a five-number summary whatever the batch size.
        An empty batch changes nothing and returns the current statistics. ``batch_id`` names
        the batch so that calling again with the same name (after an error, whose outcome is
        unknown) counts it once; without one every call is a new batch (see ``_core/ledger.py``).
        """
        return self.run(self._update_op(env, values, batch_id))

    def merge(self, env: str, stats: RunningStats, *, batch_id: str | int | None = None) -> RunningStats:
        """Merge a precomputed summary (e.g. ``RunningStats.from_values``) into ``env``'s
        statistics and return the result, atomically; ``batch_id`` as for ``update``."""
        return self.run(self._merge_op(env, stats, batch_id))

    def get(self, env: str) -> RunningStats:
        """``env``'s statistics (empty if it has none)."""
        return self.run(self._get_op(env))

    def set(self, env: str, stats: RunningStats) -> RunningStats:
        """Replace ``env``'s statistics atomically. The configuration (half-life, frozen flag)
        stays; the decayed statistics restart empty and the merge count from 0."""
        return self.run(self._set_op(env, stats))

    def reset(self, env: str) -> None:
        """Forget ``env``'s statistics (totals, decayed statistics, merges, last update). Its
        configuration stays: a half-life and the frozen flag are kept."""
        self.run(self._reset_op(env))

    def info(self, env: str) -> EnvInfo:
        """Everything stored about ``env`` in one read: totals, decayed statistics (``None``
        without a half-life), half-life, frozen flag, merges and the time of the last one."""
        return self.run(self._info_op(env))

    def infos(self, envs: Iterable[str] | None = None) -> dict[str, EnvInfo]:
        """``info`` of several envs in one round trip per server, or (``None``) of every env in
        the namespace that ``envs`` lists: with statistics, a half-life or the frozen flag."""
        return self.run(self._selected_infos_op(envs))

    def configure(self, env: str, *, half_life: float | None) -> bool:
        """Set ``env``'s half-life in samples (``None``: keep no decayed statistics), for every
        writer at once. Setting or changing it starts the decayed statistics afresh (they then
        follow the definition for the batches merged from now on); setting the same value
        again changes nothing. Returns whether anything changed."""
        return self.run(self._configure_op(env, half_life))

    def freeze(self, env: str) -> bool:
        """Freeze ``env``: until ``unfreeze``, every merge from every process adds nothing
        (batches sent meanwhile are never counted, not even when retried later) while reads and
        normalization keep working. Returns whether the flag changed."""
        return self.run(self._freeze_op(env, True))

    def unfreeze(self, env: str) -> bool:
        """Let merges into ``env`` count again. Returns whether the flag changed."""
        return self.run(self._freeze_op(env, False))

    def get_many(self, envs: Iterable[str]) -> dict[str, RunningStats]:
        """Statistics of several envs in one round trip per server (empty for absent envs)."""
        return self.run(self._get_many_op(envs))

    def envs(self) -> list[str]:
        """Names of the envs in this namespace (SCAN on every master), sorted: those with
        statistics, a half-life or the frozen flag."""
        return self.run(self._envs_op())

    def all(self) -> dict[str, RunningStats]:
        """Statistics of every env in this namespace."""
        return self.run(self._all_op())

    def aggregate(self, envs: Iterable[str] | None = None) -> RunningStats:
        """The exact merge of several envs' statistics (all of them by default): a
        trainer-wide view."""
        return self.run(self._aggregate_op(envs))

    def metrics(self, envs: Iterable[str] | None = None) -> dict[str, float]:
        """``reward_norm/<env>/<stat>`` for every env (or the given ones), for ``wandb.log``.

        Every env normalized through this store (by a normalizer given it as ``redis=``, or
        owning it) also gets ``reward_norm/<env>/degraded``: 1.0 while one of them answers
        locally (``on_unavailable="local"``, the store unreachable), else 0.0. While such a
        normalizer is degraded, each read gets a single try. If the store cannot be reached and
        a normalizer of it runs with ``on_unavailable="local"``, the metrics come from their
        local views instead of raising: for each env they serve, the newest shared statistics
        they saw with the samples they normalized since, and ``degraded`` 1.0; envs none of them
        serves are left out. Otherwise ``StoreUnavailableError``.
        """
        return self.run(self._metrics_op(envs))

    def survey(self, envs: Iterable[str] | None = None) -> tuple[dict[str, EnvInfo],
                                                                 dict[str, RewardNormError]]:
        """Every env's statistics (or the given envs', empty for absent ones) that can be read,
        and for each env that cannot (a corrupt hash, a key of another type), its error: one
        broken env hides no healthy one, as it does for ``all()``. For monitoring tools."""
        return self.run(self._survey_op(envs))

    def export(self) -> dict[str, Any]:
        """A JSON-safe, versioned snapshot of every env in this namespace."""
        return self.run(self._export_op())

    def restore(self, snapshot: Any) -> dict[str, RunningStats]:
        """Write a snapshot's envs (replacing their statistics; other envs are untouched).
        The whole snapshot is validated before anything is written. A version-2 snapshot sets
        everything it holds (decayed statistics, half-life, frozen flag, activity); a version-1
        snapshot replaces the totals as ``set`` does, keeping each env's configuration."""
        return self.run(self._restore_op(snapshot))

    def load_functions(self) -> str:
        """Load the Function library (``FUNCTION LOAD REPLACE``; on every primary of a cluster)
        and return its name. An administrator's step: afterwards trainers can use
        ``functions=True`` and need no right to load Lua. Needs a server with Functions (7.0+)."""
        return self.run(self._load_functions_op())

    def run(self, operation: Operation[T]) -> T:
        """Drive an operation of the core (a generator of requests, see ``shared_rewardnorm._core``): send each
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
                reply = self._send(step)
            except BaseException as exc:  # a cancelled or interrupted call too: the operation judges it
                error = exc

    def _send(self, request: Request) -> Any:
        if isinstance(request, Once):  # one try
            inner = request.request
            return self._issue(self.merge_request(inner) if isinstance(inner, MergeBatch) else inner, None)
        return self._issue(self.merge_request(request) if isinstance(request, MergeBatch) else request)

    def _issue(self, request: ClientRequest, retry: RetryPolicy | _Default | None = DEFAULT) -> Any:
        """Send one request, sending it again after failures the retry policy allows."""
        attempt = 0
        started = time.monotonic()
        while True:
            try:
                return request.issue(self._client, self._scripts)
            except SEND_FAILURES as exc:
                pause = self._pause_before_resending(request, exc, attempt, time.monotonic() - started, retry)
            attempt += 1
            time.sleep(pause)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client={self._client!r}, namespace={self._namespace!r})"


class SharedRewardNormalizer(NormalizerCore):
    """Reward normalization against statistics shared by every process through Redis.

    A drop-in for the reference ``RewardNormalizer(mode, clip, warmup, eps)``, bound to one env.

    Args:
        env: the environment's name (its statistics live at ``<namespace>:{<env>}``).
        redis: a ``redis.Redis`` client, a URL, ``None`` for the embedded store, or a
            ``StatsStore`` to share one connection pool between normalizers.
        mode: ``"zscore"``, ``"minmax"`` or ``"none"`` (pass-through; records nothing).
        clip: clip normalized scores to +/-clip; 0 or ``None`` disables clipping; negative is
            a ``ValueError``.
        warmup: samples (in the shared store, from every process) before normalization starts
            (>= 0); until then raw scores are returned, clipped.
        eps: added to the denominator, must be > 0; below it, std or range count as zero.
        namespace: key prefix shared by the processes that should see the same statistics
            (ignored when ``redis`` is a ``StatsStore``).
        cluster: with a URL, connect to a Redis Cluster through that node.
        statistics: ``"total"`` normalizes against all history; ``"recent"`` against the env's
            decayed statistics (it needs a half-life, see ``StatsStore.configure``, and
            ``mode="zscore"``; warmup still counts all samples; ``mean``, ``std`` and
            ``metrics_dict()`` then report the decayed statistics, ``total_mean`` and
            ``total_std`` the totals). Checkpoints do not carry it.
        on_unavailable: what ``normalize`` does when the store cannot be reached once the
            store's retry policy is spent: ``"raise"`` raises ``StoreUnavailableError``;
            ``"local"`` normalizes against the last shared statistics seen merged with the
            batches normalized since (``degraded`` is then True and ``metrics_dict()`` reports
            ``reward_norm/degraded`` 1.0), tries the store again at most once a second (the
            calls in between answer at once, without I/O), and when it answers merges those
            batches into it exactly once. ``refresh()`` and ``metrics_dict()`` answer locally
            too; ``state_dict()`` and ``load_state_dict()`` always need the store. See
            docs/operations/persistence-and-failover.md.
        on_lost: what to do when a reply shows that the env's statistics this normalizer knew
            are gone (the server came back empty, a failover to a replica without them, a
            FLUSHDB, eviction): ``"reseed"`` (the default) logs an ERROR and puts its last view
            back, merged with what the env holds now, atomically and only if no other client
            or deliberate ``reset``/``restore`` changed it first; ``"log"`` only logs it. A
            deliberate replacement is never treated as a loss.

    The properties (``count``, ``mean``, ``std``, ``is_warmed_up``) describe the statistics
    returned by this normalizer's latest round trip and never touch the network; call
    ``refresh()`` to read the store. ``metrics_dict()`` and ``state_dict()`` read fresh.
    """

    def __init__(self, env: str, redis: Any = None, *, mode: str = "zscore", clip: float | None = 5.0,
                 warmup: int = 10, eps: float = 1e-8, namespace: str = "rewardnorm", cluster: bool = False,
                 statistics: str = "total", on_unavailable: str = "raise", on_lost: str = "reseed") -> None:
        self._owns_store = not isinstance(redis, StatsStore)
        self._store = StatsStore(redis, namespace, cluster=cluster) if self._owns_store else redis
        super().__init__(env, self._store, mode, clip, warmup, eps, statistics, on_unavailable, on_lost)

    def close(self) -> None:
        """Close the store this normalizer created (from ``redis=`` as a URL, a client or None);
        a store passed in is the caller's to close."""
        if self._owns_store:
            self._store.close()

    def __enter__(self) -> SharedRewardNormalizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> StatsStore:
        """The store holding the shared statistics."""
        return self._store

    def normalize(self, scores: Any, update: bool = True, *, batch_id: str | int | None = None) -> list[float]:
        """Add ``scores`` to the shared statistics and return them normalized.

        Exactly one round trip (none for an empty batch or in ``"none"`` mode, which records
        nothing, as in the reference). Bad scores raise ``TypeError``/``ValueError`` naming the
        first bad position, and nothing is stored. ``update=False`` normalizes against the
        current shared statistics without adding the batch (one read; for evaluation). While
        the env is frozen the batch is not added either, whatever ``update`` says.

        ``batch_id`` names the batch: after an error (the outcome unknown), calling again with
        the same name and scores counts them once. Without one, every call is a new batch.
        """
        return self._store.run(self._normalize_op(scores, update, batch_id))

    def refresh(self) -> RunningStats:
        """Read the shared statistics into this normalizer (one round trip) and return them."""
        return self._store.run(self._refresh_op())

    def metrics_dict(self) -> dict[str, float]:
        """Fresh statistics for ``wandb.log``, with the reference's keys."""
        return self._store.run(self._metrics_op())

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint in the reference's format (settings plus the shared accumulator)."""
        return self._store.run(self._state_dict_op())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint (ours or the reference's): settings locally, and the accumulator
        into the shared store, replacing what every process sees. The whole state is validated
        before anything changes."""
        self._store.run(self._load_state_dict_op(state))
