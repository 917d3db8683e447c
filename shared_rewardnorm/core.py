"""The shared core of the sync and asyncio clients: every operation, without I/O.

``StoreCore`` and ``NormalizerCore`` hold the state and validation, and express each public
method as an operation (a generator of ``requests``). ``StatsStore`` / ``SharedRewardNormalizer``
run those operations with blocking calls and ``AsyncStatsStore`` /
``AsyncSharedRewardNormalizer`` await them; that loop is all the I/O classes add.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .inputs import coerce_scores, stats_key, validate_env, validate_namespace
from .normalization import NormalizerSettings, normalize_values
from .protocol import decode_reply, decode_stored, encode_stats
from .requests import Operation, ReadStats, RunScript
from .stats import RunningStats, summarize

__all__ = ["StoreCore", "NormalizerCore", "metrics_from_stats", "checkpoint_from", "parse_checkpoint"]


def _read(key: str) -> Operation[RunningStats]:
    reply = yield ReadStats(key)
    return decode_stored(key, reply)


def _merge(key: str, stats: RunningStats) -> Operation[RunningStats]:
    if stats.count == 0:
        return (yield from _read(key))
    reply = yield RunScript("merge", key, encode_stats(stats))
    return decode_reply(reply)


def _replace(key: str, stats: RunningStats) -> Operation[RunningStats]:
    reply = yield RunScript("replace", key, encode_stats(stats))
    return decode_reply(reply)


def _require_stats(stats: Any) -> RunningStats:
    if not isinstance(stats, RunningStats):
        raise TypeError(f"stats must be RunningStats, got {type(stats).__name__}")
    return stats


class StoreCore:
    """Namespace, key naming and the store's operations; subclasses add the I/O."""

    def __init__(self, namespace: str) -> None:
        self._namespace = validate_namespace(namespace)

    @property
    def namespace(self) -> str:
        """The key prefix of this store."""
        return self._namespace

    def key(self, env: str) -> str:
        """The Redis key of ``env``'s stats hash, ``<namespace>:{<env>}`` (validates the name)."""
        return stats_key(self._namespace, validate_env(env))

    def _update_op(self, env: str, values: Any) -> Operation[RunningStats]:
        key = self.key(env)
        return _merge(key, RunningStats.from_values(values))

    def _merge_op(self, env: str, stats: RunningStats) -> Operation[RunningStats]:
        key = self.key(env)
        return _merge(key, _require_stats(stats))

    def _get_op(self, env: str) -> Operation[RunningStats]:
        return _read(self.key(env))

    def _set_op(self, env: str, stats: RunningStats) -> Operation[RunningStats]:
        key = self.key(env)
        return _replace(key, _require_stats(stats))

    def _reset_op(self, env: str) -> Operation[RunningStats]:
        return _replace(self.key(env), RunningStats())


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


def parse_checkpoint(state: Any) -> tuple[NormalizerSettings, RunningStats]:
    """Validate a reference-format checkpoint completely, before anything is applied."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping, got {type(state).__name__}")
    missing = [name for name in ("mode", "clip", "warmup", "eps", "accumulator") if name not in state]
    if missing:
        raise ValueError(f"normalizer state is missing {', '.join(missing)}")
    settings = NormalizerSettings.create(state["mode"], state["clip"], state["warmup"], state["eps"])
    return settings, RunningStats.from_dict(state["accumulator"])


class NormalizerCore:
    """Settings, the latest statistics seen, the properties, and the normalizer's operations.

    The properties describe the statistics of this normalizer's latest round trip and never
    touch the network.
    """

    VALID_MODES = frozenset({"zscore", "minmax", "none"})

    def __init__(self, env: str, store: StoreCore, mode: Any, clip: Any, warmup: Any, eps: Any) -> None:
        self._settings = NormalizerSettings.create(mode, clip, warmup, eps)
        self._key = store.key(env)
        self._env = env
        self._stats = RunningStats()

    @property
    def env(self) -> str:
        """The environment this normalizer belongs to."""
        return self._env

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

    def _normalize_op(self, scores: Any) -> Operation[list[float]]:
        values = coerce_scores(scores)
        if len(values) == 0:
            return []
        if self._settings.mode != "none":  # "none" records nothing, as in the reference
            self._stats = yield from _merge(self._key, summarize(values))
        return normalize_values(values, self._stats, self._settings)

    def _refresh_op(self) -> Operation[RunningStats]:
        self._stats = yield from _read(self._key)
        return self._stats

    def _metrics_op(self) -> Operation[dict[str, float]]:
        return metrics_from_stats((yield from self._refresh_op()))

    def _state_dict_op(self) -> Operation[dict[str, Any]]:
        return checkpoint_from(self._settings, (yield from self._refresh_op()))

    def _load_state_dict_op(self, state: Any) -> Operation[None]:
        settings, stats = parse_checkpoint(state)
        self._stats = yield from _replace(self._key, stats)
        self._settings = settings

    def __repr__(self) -> str:
        s = self._settings
        return (f"{type(self).__name__}(env={self._env!r}, mode={s.mode!r}, clip={s.clip!r}, "
                f"warmup={s.warmup!r}, eps={s.eps!r})")
