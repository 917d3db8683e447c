"""``SharedRewardNormalizer``: the reference ``RewardNormalizer``'s API over a shared store.

Every process that builds a normalizer for the same env (and namespace, on the same Redis)
normalizes against the same statistics. ``normalize`` is one round trip: the merge script adds
the batch and returns the merged statistics, which normalize that same batch, as the reference
does in process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .core import NormalizerCore
from .stats import RunningStats
from .store import StatsStore

__all__ = ["SharedRewardNormalizer"]


class SharedRewardNormalizer(NormalizerCore):
    """Reward normalization against statistics shared by every process through Redis.

    A drop-in for the reference ``RewardNormalizer(mode, clip, warmup, eps)``, bound to one env.

    Args:
        env: the environment's name (its statistics live at ``<namespace>:{<env>}``).
        redis: a ``redis.Redis`` client, a URL, ``None`` for the embedded store, or a
            ``StatsStore`` to share one connection pool between normalizers.
        mode: ``"zscore"``, ``"minmax"`` or ``"none"`` (pass-through; records nothing).
        clip: clip normalized scores to +/-clip; a clip <= 0 or ``None`` disables clipping (the
            reference's meaning).
        warmup: samples (in the shared store, from every process) before normalization starts;
            until then raw scores are returned, clipped.
        eps: added to the denominator, must be > 0; below it, std or range count as zero.
        namespace: key prefix shared by the processes that should see the same statistics
            (ignored when ``redis`` is a ``StatsStore``).
        cluster: with a URL, connect to a Redis Cluster through that node.
        statistics: ``"total"`` normalizes against all history; ``"recent"`` against the env's
            decayed statistics (it needs a half-life, see ``StatsStore.configure``, and
            ``mode="zscore"``; warmup still counts all samples). Checkpoints do not carry it.

    The properties (``count``, ``mean``, ``std``, ``is_warmed_up``) describe the statistics
    returned by this normalizer's latest round trip and never touch the network; call
    ``refresh()`` to read the store. ``metrics_dict()`` and ``state_dict()`` read fresh.
    """

    def __init__(self, env: str, redis: Any = None, *, mode: str = "zscore", clip: float | None = 5.0,
                 warmup: int = 10, eps: float = 1e-8, namespace: str = "rewardnorm", cluster: bool = False,
                 statistics: str = "total") -> None:
        self._owns_store = not isinstance(redis, StatsStore)
        self._store = StatsStore(redis, namespace, cluster=cluster) if self._owns_store else redis
        super().__init__(env, self._store, mode, clip, warmup, eps, statistics)

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

    def normalize(self, scores: Any, update: bool = True) -> list[float]:
        """Add ``scores`` to the shared statistics and return them normalized.

        Exactly one round trip (none for an empty batch or in ``"none"`` mode, which records
        nothing, as in the reference). Bad scores raise ``TypeError``/``ValueError`` naming the
        first bad position, and nothing is stored. ``update=False`` normalizes against the
        current shared statistics without adding the batch (one read; for evaluation). While
        the env is frozen the batch is not added either, whatever ``update`` says.
        """
        return self._store.run(self._normalize_op(scores, update))

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
