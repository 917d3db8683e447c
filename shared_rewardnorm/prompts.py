"""``PromptStats``: statistics per prompt, shared by every process of a trainer.

Per-env normalization cancels under a group-mean baseline (GRPO); what group-free methods (SPO,
REINFORCE with a per-prompt baseline) and difficulty filters keep across steps is statistics per
prompt. ``PromptStats`` keeps them in Redis, beside the env's statistics and in its hash slot, so
every worker sees what every other learned, each call is one atomic round trip (on a cluster
too) and a retried call counts once. ``shared_rewardnorm._core.prompt_ops`` holds the
operations; this is the blocking shell, ``shared_rewardnorm.aio.prompts`` the asyncio one.

Definition: a *visit* of prompt p is one call that holds p. After visits V1..Vk of p (in the
server's order), each reward of Vj has weight ``decay ** (k - j)``; a prompt keeps ``visits``,
``count`` (rewards), ``weight`` (their summed weights), the weighted ``mean`` and ``m2`` (``std``
= sqrt(m2 / weight)). For 0/1 rewards with a seeded prior this is SPO's tracker:
``weight * mean`` is alpha and ``weight * (1 - mean)`` beta.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shared_rewardnorm._core.prompt_ops import READ_CHUNK, PromptCore, PromptInfo, PromptSettings
from shared_rewardnorm._core.prompt_outage import DEFAULT_CACHE_SIZE, DEFAULT_MAX_OWED
from shared_rewardnorm.sync import StatsStore

__all__ = ["PromptInfo", "PromptSettings", "PromptStats"]


class PromptStats(PromptCore):
    """One env's per-prompt statistics (see the module docstring).

    Args:
        env: the env whose prompts these are (its prompts live at ``<namespace>:{<env>}:p:*``).
        redis: what the normalizers take: a client, a URL, ``None`` (``$SHARED_REWARDNORM_URL``
            or the embedded store) or a ``StatsStore`` (which brings its namespace, retries and
            batch ledger).
        namespace: the key prefix (ignored when ``redis`` is a ``StatsStore``).
        cluster: with a URL, connect to a Redis Cluster through that node.
        on_unavailable: what a call does once the store's retry policy is spent: ``"raise"``
            raises ``StoreUnavailableError``; ``"local"`` keeps training going: ``update`` and
            ``advantages`` are kept (at most ``max_owed`` calls) and sent exactly once when the
            store answers, and the reads answer from the records this client has seen (a
            prompt it never saw is unknown). One call per second tries the store meanwhile.
        on_lost: what to do when a reply shows the set this client knew was lost (the server
            came back empty, a failover to a replica without it, a flush, eviction):
            ``"reseed"`` logs an ERROR and puts back the records this client remembers, merged
            before what the prompts gathered since (the first client to put a prompt back
            wins); ``"log"`` only logs it. A restore or a forget is deliberate, never a loss.
        cache_size: how many prompts' records this client remembers, most recently seen first
            (for ``on_unavailable="local"`` and ``on_lost="reseed"``; 0: none).
        max_owed: the most update calls kept through an outage; beyond it the oldest is
            dropped and counted (``dropped``).

    Prompt ids are non-empty strings of at most 256 characters (a dataset index as ``str``, or
    a hash of the prompt text); ids of at most 64 bytes keep the compact storage.
    """

    def __init__(self, env: str, redis: Any = None, *, namespace: str = "rewardnorm", cluster: bool = False,
                 on_unavailable: str = "raise", on_lost: str = "reseed", cache_size: int = DEFAULT_CACHE_SIZE,
                 max_owed: int = DEFAULT_MAX_OWED) -> None:
        self.validate_options(on_unavailable, on_lost, cache_size, max_owed)
        self._owns_store = not isinstance(redis, StatsStore)
        self._store = StatsStore(redis, namespace, cluster=cluster) if self._owns_store else redis
        super().__init__(env, self._store, on_unavailable, on_lost, cache_size, max_owed)

    @property
    def store(self) -> StatsStore:
        """The store that runs this set's operations."""
        return self._store

    def close(self) -> None:
        """Close the store this object created (a store passed in is the caller's)."""
        if self._owns_store:
            self._store.close()

    def __enter__(self) -> PromptStats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def configure(self, *, decay: float | None = None, buckets: int | None = None) -> bool:
        """Set the per-visit decay ``rho`` (0 < rho <= 1; 1, the default, keeps no decay) for every
        writer at once; a new decay applies from each prompt's next visit on. ``buckets`` (only
        while the set holds no prompts; default 16384, for up to about 1.3M prompts in compact
        buckets) sets how many hashes hold the prompts. Returns whether anything changed."""
        return self._store.run(self._configure_op(decay, buckets))[1]

    def settings(self) -> PromptSettings:
        """The set's decay and bucket count, read from the store."""
        return self._store.run(self._settings_op())

    def update(self, prompt_ids: Any, rewards: Any, *, batch_id: str | int | None = None) -> None:
        """Merge rewards into their prompts' statistics: ``rewards[i]`` belongs to
        ``prompt_ids[i]``; ids may repeat and come in any order (one call is one visit of each
        distinct prompt). One atomic round trip; ``batch_id`` makes a retry after an error count
        once (the store's own retries always do). Bad input raises ``TypeError``/``ValueError``
        naming the first problem, and nothing is stored."""
        self._store.run(self._update_op(prompt_ids, rewards, batch_id))

    def advantages(self, prompt_ids: Any, rewards: Any, *, batch_id: str | int | None = None) -> list[float]:
        """``update``, returning each reward minus its prompt's mean from before this call (for a
        prompt never seen, minus the mean of its rewards in this call), in the same round trip.
        A resend under the same ``batch_id`` (counted once) is answered against the current means."""
        return self._store.run(self._advantages_op(prompt_ids, rewards, batch_id))

    def get(self, prompt_ids: Any) -> list[PromptInfo | None]:
        """Each prompt's statistics (``None`` for one never seen), in one round trip."""
        return self._store.run(self._get_op(prompt_ids))

    def select(self, prompt_ids: Any, *, low: float, high: float) -> list[str]:
        """The distinct ids, in first-seen order, whose mean lies strictly between ``low`` and
        ``high``, and those never seen (unknown difficulty is kept): filter a candidate batch
        before paying for its rollouts."""
        return self._store.run(self._select_op(prompt_ids, low, high))

    def weights(self, prompt_ids: Any, *, eps: float = 0.05, low: float = 0.0, high: float = 1.0) -> list[float]:
        """Sampling priorities: SPO's ``sqrt(p * (1 - p)) + eps`` with ``p`` the prompt's mean
        mapped from ``[low, high]`` (the reward range; default pass/fail rewards in [0, 1]) to
        [0, 1] and clipped; a prompt never seen gets the largest, ``0.5 + eps``."""
        return self._store.run(self._weights_op(prompt_ids, eps, low, high))

    def seed(self, prompt_ids: Any, means: Any, weights: Any, *, replace: bool = False,
             batch_id: str | int | None = None) -> int:
        """Initialise prompts from prior estimates (offline pass rates): visits and count 0, the
        given mean and weight (pseudo-samples), no spread. Refused (``ValueError``, nothing
        written) when a prompt already has statistics, unless ``replace=True``. Returns the
        number of prompts written."""
        return self._store.run(self._seed_op(prompt_ids, means, weights, replace, batch_id))

    def forget(self, prompt_ids: Any = None) -> int:
        """Delete the given prompts' statistics, or (``None``) the whole set with its settings
        (in calls of at most 1024 buckets each, not one atomic step). Returns how many prompts
        (ids) or keys (whole set) were deleted."""
        return self._store.run(self._forget_op(prompt_ids))

    def items(self, chunk: int = READ_CHUNK) -> Iterator[tuple[str, PromptInfo]]:
        """Every prompt of the set, ``chunk`` buckets per round trip (each bucket one HGETALL, so
        the server is never busy with more than one bucket at a time: at most about 128 prompts
        at the default bucket count and up to ~1.3M prompts). Not a snapshot: prompts written
        during the walk may or may not be seen."""
        settings = self.settings()
        for first in range(0, settings.buckets, chunk):
            yield from self._store.run(self._read_buckets_op(first, first + chunk, settings))

    def export(self) -> dict[str, Any]:
        """A JSON-safe snapshot of the set (settings and every prompt's exact statistics)."""
        return self.snapshot(self.settings(), self.items())

    def restore(self, snapshot: Any) -> int:
        """Write a snapshot's prompts (replacing those with the same ids; others stay) and its
        decay; the whole snapshot is validated first. Returns the number of prompts written."""
        return self._store.run(self._restore_op(snapshot))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(env={self.env!r}, store={self._store!r})"
