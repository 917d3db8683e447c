"""The normalizer's operations: settings, the latest statistics seen, and ``normalize``.

``NormalizerCore`` is shared by ``SharedRewardNormalizer`` (sync) and
``AsyncSharedRewardNormalizer``; each public method is an operation (a generator of requests)
that the shell's store runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shared_rewardnorm._core.formats import checkpoint_from, metrics_from_info, parse_checkpoint
from shared_rewardnorm._core.identity import ON_LOST, Verdict, judge
from shared_rewardnorm._core.inputs import coerce_scores, validate_batch_id
from shared_rewardnorm._core.normalization import MODES, NormalizerSettings, normalize_values
from shared_rewardnorm._core.outage import LocalFallback, validate_on_unavailable
from shared_rewardnorm._core.requests import Operation
from shared_rewardnorm._core.store_ops import StoreCore, read_env, replace_stats, reseed_env, yes_or_no
from shared_rewardnorm.envinfo import EnvInfo
from shared_rewardnorm.errors import StoreUnavailableError
from shared_rewardnorm.stats import RunningStats, summarize

__all__ = ["NormalizerCore"]

logger = logging.getLogger("shared_rewardnorm")


class NormalizerCore:
    """Settings, the latest statistics seen, the properties, and the normalizer's operations.

    The properties describe the statistics of this normalizer's latest round trip and never
    touch the network.
    """

    #: The reference's name for the accepted modes.
    VALID_MODES = frozenset(MODES)

    def __init__(self, env: str, store: StoreCore, mode: Any, clip: Any, warmup: Any, eps: Any,
                 statistics: Any = "total", on_unavailable: Any = "raise", on_lost: Any = "reseed",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = NormalizerSettings.create(mode, clip, warmup, eps, statistics)
        validate_on_unavailable(on_unavailable)
        if on_lost not in ON_LOST:
            raise ValueError(f"on_lost must be one of {', '.join(map(repr, ON_LOST))}, got {on_lost!r}")
        self._on_lost = on_lost
        #: Losses of the env's statistics this normalizer noticed, and re-seeds it performed.
        self.losses = 0
        self.reseeds = 0
        #: Epochs this normalizer saw replaced (a reply carrying one was overtaken).
        self._retired: set[int] = set()
        #: With on_unavailable="local": the owed batches and the circuit breaker; else None.
        self._fallback = LocalFallback(env, clock) if on_unavailable == "local" else None
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

    def _view(self) -> EnvInfo:
        """The env as this normalizer sees it: the latest round trip's, with the batches owed to
        an unreachable store merged in (``on_unavailable="local"``)."""
        if self._fallback is not None and self._fallback.owes:
            return self._fallback.view(self._info)
        return self._info

    @property
    def stats(self) -> RunningStats:
        """The totals seen by the latest round trip (no network); while degraded
        (``on_unavailable="local"``), with the samples normalized locally since."""
        return self._view().stats

    @property
    def info(self) -> EnvInfo:
        """Everything the latest round trip returned about the env (decayed statistics, frozen
        flag, half-life, activity; while degraded, with the local samples); no network."""
        return self._view()

    @property
    def owed(self) -> RunningStats:
        """The samples normalized locally that the store has not acknowledged yet (with
        ``on_unavailable="local"``, while it was unreachable; merged when it answers again)."""
        return RunningStats() if self._fallback is None else self._fallback.pending()

    @property
    def on_unavailable(self) -> str:
        """``"raise"`` (an unreachable store raises ``StoreUnavailableError``) or ``"local"``
        (normalize locally until it answers again)."""
        return "raise" if self._fallback is None else "local"

    @property
    def degraded(self) -> bool:
        """Whether this normalizer is answering locally because its store is unreachable
        (always ``False`` with ``on_unavailable="raise"``)."""
        return self._fallback is not None and self._fallback.degraded

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
        """Samples in the shared store as of the latest round trip (all of them, also with
        ``statistics="recent"``: warmup counts these)."""
        return self._view().stats.count

    @property
    def mean(self) -> float:
        """The mean this normalizer normalizes with, as of the latest round trip: the shared
        running mean, or with ``statistics="recent"`` the decayed one (``total_mean`` is the
        running mean in either case)."""
        view = self._view()
        return view.decayed.mean if self._recent(view) and view.decayed is not None else view.stats.mean

    @property
    def std(self) -> float:
        """The population standard deviation this normalizer normalizes with: the shared one,
        or with ``statistics="recent"`` the decayed one (``total_std``: the shared one always)."""
        view = self._view()
        return view.decayed.std if self._recent(view) and view.decayed is not None else view.stats.std

    @property
    def total_mean(self) -> float:
        """The running mean of all history, whatever ``statistics`` says."""
        return self._view().stats.mean

    @property
    def total_std(self) -> float:
        """The population standard deviation of all history, whatever ``statistics`` says."""
        return self._view().stats.std

    @property
    def is_warmed_up(self) -> bool:
        """Whether the shared store had ``warmup`` samples at the latest round trip."""
        return self._view().stats.count >= self._settings.warmup

    def _recent(self, info: EnvInfo) -> bool:
        return self._settings.statistics == "recent" and info.decayed is not None

    def _seen(self, info: EnvInfo) -> EnvInfo:
        if info.epoch != self._info.epoch and self._info.epoch is not None:
            self._retired.add(self._info.epoch)
        self._info = info
        self._stats = info.stats
        return info

    def _observed(self, found: EnvInfo, once: bool = False) -> Operation[EnvInfo]:
        """Adopt a reply as the view after comparing its identity with the last view's (see
        ``_core/identity.py``): a loss is logged as an ERROR and, with ``on_lost="reseed"``,
        repaired from the last view; a deliberate replacement or another client's repair is
        adopted; a reply overtaken by a later one is not adopted. ``once``: a repair's request
        gets a single try (the store is being probed)."""
        known = self._info
        verdict = judge(known, found, self._retired)
        if verdict is Verdict.SAME:
            return self._seen(found)
        if verdict is Verdict.STALE:
            return found
        if verdict is Verdict.REPLACED:
            logger.info("shared_rewardnorm: env %r was replaced deliberately (set, reset, restore or a checkpoint "
                        "load): count %d before, %d now", self._env, known.stats.count, found.stats.count)
        elif verdict is Verdict.RESEEDED:
            logger.warning("shared_rewardnorm: env %r was lost and another client has re-seeded it from its last "
                           "view: this normalizer knew count %d, found %d", self._env, known.stats.count,
                           found.stats.count)
        else:
            self.losses += 1
            found_as = "no statistics" if found.stats.count == 0 and found.epoch is None else \
                f"count {found.stats.count} created by a merge since"
            logger.error("shared_rewardnorm: env %r lost its statistics (the server came back empty, failed over to "
                         "a replica without them, was flushed or evicted them): this normalizer knew count %d, "
                         "found %s; %s", self._env, known.stats.count, found_as,
                         "re-seeding it from this normalizer's last view" if self._on_lost == "reseed"
                         else 'on_lost="log": not repairing it')
            if self._on_lost == "reseed":
                found, won = yield from reseed_env(self._key, found.epoch, known, once)
                if won:
                    self.reseeds += 1
                    logger.error("shared_rewardnorm: env %r re-seeded: count %d now", self._env, found.stats.count)
                else:
                    logger.warning("shared_rewardnorm: env %r was changed by another client first (count %d now); "
                                   "not re-seeding it", self._env, found.stats.count)
        return self._seen(found)

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
            known = yield from self._read_op()
            if known is not None:  # (None: unreachable with on_unavailable="local"; nothing to check against)
                self._require_decay(known, counted=False)
        summary = summarize(values) if update else RunningStats()
        if self._fallback is None:
            if update:
                info = yield from self._observed((yield from self._store_core.merge_at(self._key, summary, batch_id)))
            else:
                info = yield from self._refresh_info_op()
        else:
            info = yield from self._resilient_op(summary, batch_id)
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
        return (yield from self._observed((yield from read_env(self._key))))

    def _read_op(self) -> Operation[EnvInfo | None]:
        """Read the env; with ``on_unavailable="local"``, ``None`` if the store is unreachable."""
        if self._fallback is None:
            return (yield from self._refresh_info_op())
        if not self._fallback.claim():
            return None
        try:
            once = self._fallback.probing
            return (yield from self._observed((yield from read_env(self._key, once)), once))
        except StoreUnavailableError as exc:
            self._fallback.failed(exc, self._info)
            return None

    def _resilient_op(self, summary: RunningStats, batch_id: str | None) -> Operation[EnvInfo]:
        """``on_unavailable="local"``: merge ``summary`` (empty: only read) after paying what is
        owed, or, with the store unreachable, owe it and answer with the local view (see
        ``_core/outage.py``)."""
        fallback = self._fallback
        assert fallback is not None
        if not fallback.claim():
            fallback.owe(summary, batch_id)
            return fallback.view(self._info)
        once = fallback.probing
        name = batch_id
        sent = False
        try:
            while (owed := fallback.next_owed()) is not None:
                yield from self._observed((yield from self._store_core.merge_at(self._key, owed.stats, owed.batch_id,
                                                                                once)), once)
                fallback.paid(owed)
            if summary.count and name is None:
                name = fallback.batch_id()
            sent = True
            info = yield from self._observed((yield from self._store_core.merge_at(self._key, summary, name, once)),
                                             once)
        except StoreUnavailableError as exc:
            fallback.failed(exc, self._info)
            fallback.owe(summary, name, sent=sent)
            return fallback.view(self._info)
        fallback.recovered()
        return info

    def _refresh_op(self) -> Operation[RunningStats]:
        if self._fallback is None:
            return (yield from self._refresh_info_op()).stats
        return (yield from self._resilient_op(RunningStats(), None)).stats

    def _metrics_op(self) -> Operation[dict[str, float]]:
        if self._fallback is None:
            return self._metrics_of((yield from self._refresh_info_op()))
        metrics = self._metrics_of((yield from self._resilient_op(RunningStats(), None)))
        metrics["reward_norm/degraded"] = 1.0 if self._fallback.degraded else 0.0
        return metrics

    def _metrics_of(self, info: EnvInfo) -> dict[str, float]:
        """The reference's metric keys for ``info``; with ``statistics="recent"``, ``mean`` and
        ``std`` are the decayed ones it normalizes with, and the totals' are ``total_mean`` and
        ``total_std``. ``losses`` and ``reseeds`` (of the env's statistics, noticed and repaired
        by this normalizer) appear with ``on_unavailable="local"``, and otherwise once there
        has been a loss (the reference's keys stay as they are)."""
        metrics = metrics_from_info(info)
        if self._fallback is not None or self.losses:
            metrics["reward_norm/losses"] = float(self.losses)
            metrics["reward_norm/reseeds"] = float(self.reseeds)
        if self._recent(info) and info.decayed is not None:
            metrics["reward_norm/total_mean"] = info.stats.mean
            metrics["reward_norm/total_std"] = info.stats.std
            metrics["reward_norm/mean"] = info.decayed.mean
            metrics["reward_norm/std"] = info.decayed.std
        return metrics

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
