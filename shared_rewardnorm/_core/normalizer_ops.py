"""The normalizer's operations: settings, the latest statistics seen, and ``normalize``.

``NormalizerCore`` is shared by ``SharedRewardNormalizer`` (sync) and
``AsyncSharedRewardNormalizer``; each public method is an operation (a generator of requests)
that the shell's store runs.
"""

from __future__ import annotations

from typing import Any

from shared_rewardnorm._core.formats import checkpoint_from, metrics_from_info, parse_checkpoint
from shared_rewardnorm._core.inputs import coerce_scores, validate_batch_id
from shared_rewardnorm._core.normalization import MODES, NormalizerSettings, normalize_values
from shared_rewardnorm._core.requests import Operation
from shared_rewardnorm._core.store_ops import StoreCore, read_env, replace_stats, yes_or_no
from shared_rewardnorm.envinfo import EnvInfo
from shared_rewardnorm.stats import RunningStats, summarize

__all__ = ["NormalizerCore"]


class NormalizerCore:
    """Settings, the latest statistics seen, the properties, and the normalizer's operations.

    The properties describe the statistics of this normalizer's latest round trip and never
    touch the network.
    """

    #: The reference's name for the accepted modes.
    VALID_MODES = frozenset(MODES)

    def __init__(self, env: str, store: StoreCore, mode: Any, clip: Any, warmup: Any, eps: Any,
                 statistics: Any = "total") -> None:
        self._settings = NormalizerSettings.create(mode, clip, warmup, eps, statistics)
        self._store_core = store
        self._key = store.key(env)
        self._env = env
        self._info = EnvInfo()
        self._stats = self._info.stats
        # statistics="recent": whether a read has shown the env to have a half-life yet.
        self._decay_seen = False

    @property
    def env(self) -> str:
        """The environment this normalizer belongs to."""
        return self._env

    @property
    def stats(self) -> RunningStats:
        """The statistics seen by the latest round trip (no network)."""
        return self._stats

    @property
    def info(self) -> EnvInfo:
        """Everything the latest round trip returned about the env (decayed statistics, frozen
        flag, half-life, activity); no network."""
        return self._info

    @property
    def statistics(self) -> str:
        """``"total"`` (all history) or ``"recent"`` (the decayed statistics)."""
        return self._settings.statistics

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

    def _seen(self, info: EnvInfo) -> EnvInfo:
        self._info = info
        self._stats = info.stats
        return info

    def _require_decay(self, info: EnvInfo, counted: bool) -> None:
        if info.decayed is None:
            raise ValueError(f'statistics="recent" but env {self._env!r} has no half-life (set one with '
                             f'StatsStore.configure or `shared-rewardnorm configure`)'
                             + ("; this batch was counted in the totals" if counted else ""))
        self._decay_seen = True

    def _normalize_op(self, scores: Any, update: bool = True, batch_id: Any = None) -> Operation[list[float]]:
        yes_or_no("update", update)
        if batch_id is not None and not update:
            raise ValueError("batch_id names a batch to merge; normalize(update=False) merges nothing")
        validate_batch_id(batch_id)
        values = coerce_scores(scores)
        if len(values) == 0:
            return []
        if self._settings.mode == "none":  # records nothing, as in the reference
            return normalize_values(values, self._stats, self._settings)
        recent = self._settings.statistics == "recent"
        if recent and update and not self._decay_seen:  # refuse before the first merge, not after it
            self._require_decay((yield from self._refresh_info_op()), counted=False)
        if update:
            info = self._seen((yield from self._store_core.merge_at(self._key, summarize(values), batch_id)))
        else:
            info = yield from self._refresh_info_op()
        if recent:
            self._require_decay(info, counted=update)
            self._require_recent_weight(info, counted=update and not info.frozen)
        return normalize_values(values, info.stats, self._settings, info.decayed)

    def _require_recent_weight(self, info: EnvInfo, counted: bool) -> None:
        """Past warmup, ``statistics="recent"`` needs decayed statistics with some weight. Weight 0
        (nothing merged since the half-life was set or changed, or since the statistics were
        replaced) has no mean or std to normalize with; passing raw scores on past warmup would
        go unnoticed by the trainer, so it is an error saying how to get out of it."""
        if info.decayed is None or info.decayed.weight > 0 or info.stats.count < self._settings.warmup:
            return
        reason = ("it is frozen, so no batch can add any" if info.frozen
                  else "normalize(update=False) adds none; normalize with update=True to add a batch")
        raise ValueError(f'statistics="recent" but env {self._env!r} has no recent statistics yet (decayed weight 0: '
                         f'nothing merged since its half-life was set or changed, or its statistics replaced) and '
                         f'{reason}; or use statistics="total"'
                         + ("; this batch was counted in the totals" if counted else ""))

    def _refresh_info_op(self) -> Operation[EnvInfo]:
        return self._seen((yield from read_env(self._key)))

    def _refresh_op(self) -> Operation[RunningStats]:
        return (yield from self._refresh_info_op()).stats

    def _metrics_op(self) -> Operation[dict[str, float]]:
        return metrics_from_info((yield from self._refresh_info_op()))

    def _state_dict_op(self) -> Operation[dict[str, Any]]:
        return checkpoint_from(self._settings, (yield from self._refresh_op()))

    def _load_state_dict_op(self, state: Any) -> Operation[None]:
        settings, stats = parse_checkpoint(state)
        # The reference's checkpoints know nothing of statistics="recent": keep this one's.
        settings = NormalizerSettings.create(settings.mode, settings.clip, settings.warmup, settings.eps,
                                             self._settings.statistics)
        self._seen((yield from replace_stats(self._key, stats)))
        self._settings = settings

    def __repr__(self) -> str:
        s = self._settings
        return (f"{type(self).__name__}(env={self._env!r}, mode={s.mode!r}, clip={s.clip!r}, "
                f"warmup={s.warmup!r}, eps={s.eps!r}, statistics={s.statistics!r})")
