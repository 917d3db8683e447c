"""``SharedRewardNormalizer``: the reference ``RewardNormalizer``'s API over a shared store.

Every process that builds a normalizer for the same env (and namespace, on the same Redis)
normalizes against the same statistics. ``normalize`` is one round trip: the merge script adds
the batch and returns the merged statistics, which normalize that same batch, as the reference
does in process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .inputs import coerce_scores
from .normalization import NormalizerSettings, normalize_values
from .stats import RunningStats, summarize
from .store import StatsStore

__all__ = ["SharedRewardNormalizer", "metrics_from_stats", "checkpoint_from", "settings_from_checkpoint"]


def metrics_from_stats(stats: RunningStats, prefix: str = "reward_norm") -> dict[str, float]:
    """WandB-ready metrics with the reference's keys (``reward_norm/count|mean|std|min|max``)."""
    return {
        f"{prefix}/count": float(stats.count),
        f"{prefix}/mean": stats.mean,
        f"{prefix}/std": stats.std,
        f"{prefix}/min": stats.min,
        f"{prefix}/max": stats.max,
    }


def checkpoint_from(settings: NormalizerSettings, stats: RunningStats) -> dict[str, Any]:
    """A checkpoint in the reference's ``state_dict`` format."""
    return {
        "mode": settings.mode,
        "clip": settings.clip,
        "warmup": settings.warmup,
        "eps": settings.eps,
        "accumulator": stats.to_dict(),
    }


def settings_from_checkpoint(state: Any) -> tuple[NormalizerSettings, RunningStats]:
    """Validate a reference-format checkpoint completely before anything is applied."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping, got {type(state).__name__}")
    missing = [name for name in ("mode", "clip", "warmup", "eps", "accumulator") if name not in state]
    if missing:
        raise ValueError(f"normalizer state is missing {', '.join(missing)}")
    settings = NormalizerSettings.create(state["mode"], state["clip"], state["warmup"], state["eps"])
    return settings, RunningStats.from_dict(state["accumulator"])


class SharedRewardNormalizer:
    """Reward normalization against statistics shared by every process through Redis.

    A drop-in for the reference ``RewardNormalizer(mode, clip, warmup, eps)``, bound to one env.

    Args:
        env: the environment's name (its statistics live at ``<namespace>:{<env>}``).
        redis: a ``redis.Redis`` client, a URL, or ``None`` for the embedded store.
        mode: ``"zscore"``, ``"minmax"`` or ``"none"`` (pass-through; records nothing).
        clip: clip normalized scores to +/-clip; 0 or ``None`` disables clipping.
        warmup: samples (in the shared store, from every process) before normalization starts;
            until then raw scores are returned, clipped.
        eps: added to the denominator; below it, std or range count as zero.
        namespace: key prefix shared by the processes that should see the same statistics.

    The properties (``count``, ``mean``, ``std``, ``is_warmed_up``) describe the statistics
    returned by this normalizer's latest round trip and never touch the network; call
    ``refresh()`` to read the store. ``metrics_dict()`` and ``state_dict()`` read fresh.
    """

    VALID_MODES = frozenset({"zscore", "minmax", "none"})

    def __init__(self, env: str, redis: Any = None, *, mode: str = "zscore", clip: float | None = 5.0,
                 warmup: int = 10, eps: float = 1e-8, namespace: str = "rewardnorm") -> None:
        self._settings = NormalizerSettings.create(mode, clip, warmup, eps)
        self._store = redis if isinstance(redis, StatsStore) else StatsStore(redis, namespace)
        self._env = env
        self._key = self._store.key(env)
        self._stats = RunningStats()

    @property
    def env(self) -> str:
        """The environment this normalizer belongs to."""
        return self._env

    @property
    def store(self) -> StatsStore:
        """The store holding the shared statistics."""
        return self._store

    @property
    def stats(self) -> RunningStats:
        """The statistics seen by the latest round trip (no network)."""
        return self._stats

    @property
    def mode(self) -> str:
        """``"zscore"``, ``"minmax"`` or ``"none"``."""
        return self._settings.mode

    @property
    def clip(self) -> float | None:
        """The clip bound, or ``None`` when clipping is off."""
        return self._settings.clip

    @property
    def warmup(self) -> int:
        """Samples needed in the shared store before normalization starts."""
        return self._settings.warmup

    @property
    def eps(self) -> float:
        """The denominator's stabilizer."""
        return self._settings.eps

    @property
    def count(self) -> int:
        """Samples in the shared store as of the latest round trip."""
        return self._stats.count

    @property
    def mean(self) -> float:
        """Shared running mean as of the latest round trip."""
        return self._stats.mean

    @property
    def std(self) -> float:
        """Shared population standard deviation as of the latest round trip."""
        return self._stats.std

    @property
    def is_warmed_up(self) -> bool:
        """Whether the shared store had ``warmup`` samples at the latest round trip."""
        return self._stats.count >= self._settings.warmup

    def normalize(self, scores: Any) -> list[float]:
        """Add ``scores`` to the shared statistics and return them normalized.

        Exactly one round trip (none for an empty batch or in ``"none"`` mode, which records
        nothing, as in the reference). Bad scores raise ``TypeError``/``ValueError`` naming the
        first bad position, and nothing is stored.
        """
        values = coerce_scores(scores)
        if len(values) == 0:
            return []
        if self._settings.mode == "none":
            return normalize_values(values, self._stats, self._settings)
        self._stats = self._store._run(self._store._scripts.merge, self._key, summarize(values))
        return normalize_values(values, self._stats, self._settings)

    def refresh(self) -> RunningStats:
        """Read the shared statistics into this normalizer (one round trip) and return them."""
        self._stats = self._store._read(self._key)
        return self._stats

    def metrics_dict(self) -> dict[str, float]:
        """Fresh statistics for ``wandb.log``, with the reference's keys."""
        return metrics_from_stats(self.refresh())

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint in the reference's format (settings plus the shared accumulator)."""
        return checkpoint_from(self._settings, self.refresh())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a checkpoint (ours or the reference's): settings locally, and the accumulator
        into the shared store, replacing what every process sees. The whole state is validated
        before anything changes."""
        settings, stats = settings_from_checkpoint(state)
        self._stats = self._store._run(self._store._scripts.replace, self._key, stats)
        self._settings = settings

    def __repr__(self) -> str:
        s = self._settings
        return (f"{type(self).__name__}(env={self._env!r}, mode={s.mode!r}, clip={s.clip!r}, "
                f"warmup={s.warmup!r}, eps={s.eps!r}, store={self._store!r})")
