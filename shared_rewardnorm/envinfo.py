"""``EnvInfo``: everything an env's hash says, not just its totals.

The totals (``RunningStats``), the decayed statistics (``DecayedStats``, with a half-life), the
configuration (half-life, frozen flag) and the activity (merges, time of the last one). This is
what ``StatsStore.info`` returns, what every script replies, and what a version-2 snapshot
holds per env.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared_rewardnorm._core.schema import ACTIVITY_FIELDS, CONFIG_FIELDS, STAT_FIELDS
from shared_rewardnorm.errors import InvalidStatsError
from shared_rewardnorm.stats import MAX_COUNT, RunningStats

__all__ = ["DECAYED_KEYS", "SNAPSHOT_KEYS", "DecayedStats", "EnvInfo"]

#: The keys of a snapshot's ``decayed`` object, one per ``DECAY_FIELDS`` entry (the hash's
#: ``wmean``/``wm2`` are ``mean``/``m2`` inside the object).
DECAYED_KEYS = ("weight", "mean", "m2")
#: The keys of a version-2 snapshot entry, every one required: the totals, then ``decayed``
#: (the ``DECAY_FIELDS`` as one object, or null), the configuration and the activity.
SNAPSHOT_KEYS = (*STAT_FIELDS, "decayed", *CONFIG_FIELDS, *ACTIVITY_FIELDS)


def _finite(name: str, value: Any, minimum: float | None = None) -> float:
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float)):
        raise InvalidStatsError(f"{name} must be a real number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result) or (minimum is not None and result < minimum):
        raise InvalidStatsError(f"{name} must be finite{'' if minimum is None else f' and >= {minimum:g}'}, "
                                f"got {result!r}")
    return result


def _count(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise InvalidStatsError(f"{name} must be an integer in [0, 2**53 - 1], got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class DecayedStats:
    """Exponentially decayed statistics: total ``weight``, weighted ``mean`` and ``m2`` (the
    weighted sum of squared deviations). After batches B1..Bk a sample of Bj weighs
    ``2 ** (-a / half_life)``, ``a`` being the samples merged after Bj. ``weight`` 0 means no
    batch has been merged since the half-life was set."""

    weight: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    @property
    def variance(self) -> float:
        """Weighted population variance (m2 / weight); 0 with no weight."""
        return self.m2 / self.weight if self.weight > 0 else 0.0

    @property
    def std(self) -> float:
        """Weighted population standard deviation."""
        return math.sqrt(self.variance)

    def to_dict(self) -> dict[str, float]:
        """``weight``, ``mean`` and ``m2`` (``DECAYED_KEYS``): a snapshot's ``decayed`` object."""
        return {name: getattr(self, name) for name in DECAYED_KEYS}

    @classmethod
    def from_dict(cls, state: Any) -> DecayedStats:
        """Validate a ``to_dict`` mapping (weight and m2 >= 0, all finite)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"decayed must be a mapping or None, got {type(state).__name__}")
        missing = [name for name in DECAYED_KEYS if name not in state]
        if missing:
            raise InvalidStatsError(f"decayed is missing {', '.join(missing)}")
        return cls(_finite("decayed weight", state["weight"], 0.0), _finite("decayed mean", state["mean"]),
                   _finite("decayed m2", state["m2"], 0.0))


@dataclass(frozen=True, slots=True)
class EnvInfo:
    """One env as stored: totals, decayed statistics, configuration and activity.

    ``decayed`` and ``half_life`` are ``None`` for an env without a half-life. ``merges`` counts
    the batches merged since the statistics were last replaced (``set``, ``reset``,
    ``load_state_dict``, a version-1 ``restore``); ``updated_at`` is the server's time of the
    last merge in milliseconds since the epoch (``None``: none since).
    """

    stats: RunningStats = RunningStats()
    decayed: DecayedStats | None = None
    half_life: float | None = None
    frozen: bool = False
    merges: int = 0
    updated_at: int | None = None
    #: The statistics' identity: the server time in microseconds when they were created (by a
    #: first merge, a deliberate replace, or a client's re-seed after a loss), ``None`` for an
    #: env without one (never merged into, or lost).
    epoch: int | None = None
    #: How they were created: ``"merge"``, ``"replace"`` (``set``, ``reset``, ``restore``, a
    #: checkpoint load: deliberate) or ``"reseed"``; ``None`` without an epoch.
    origin: str | None = None

    @property
    def is_empty(self) -> bool:
        """No statistics and no configuration (the hash is absent, or holds only the identity a
        ``reset`` leaves)."""
        return self.stats.is_empty and self.half_life is None and not self.frozen and self.merges == 0

    def identity_age(self, now: float | None = None) -> float | None:
        """Seconds since the statistics were created (by ``now``, default this machine's
        clock), or ``None`` without an identity."""
        if self.epoch is None:
            return None
        return (time.time() if now is None else now) - self.epoch / 1e6

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the last merge (by ``now``, default this machine's clock), or ``None``."""
        if self.updated_at is None:
            return None
        return (time.time() if now is None else now) - self.updated_at / 1000.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe form of a version-2 snapshot entry: the reference's accumulator fields
        plus ``decayed``, ``half_life``, ``frozen``, ``merges`` and ``updated_at``. An env with
        configuration but no statistics writes zeros, not the reference's ``min=inf``: strict
        JSON has no infinity."""
        totals = self.stats.to_dict() if self.stats.count else dict.fromkeys(STAT_FIELDS, 0.0) | {"count": 0}
        entry = {**totals, "decayed": None if self.decayed is None else self.decayed.to_dict()}
        entry.update((name, getattr(self, name)) for name in CONFIG_FIELDS + ACTIVITY_FIELDS)
        return entry

    @classmethod
    def from_dict(cls, state: Any) -> EnvInfo:
        """Validate a ``to_dict`` mapping completely; raises ``ValueError``/``TypeError``
        naming the first problem. Every key of ``SNAPSHOT_KEYS`` is required (``null`` where
        ``to_dict`` writes it): a missing one is an error, never a default, so a restore cannot
        quietly drop a half-life or a frozen flag."""
        stats = RunningStats.from_dict(state)
        missing = [name for name in SNAPSHOT_KEYS if name not in state]
        if missing:
            raise InvalidStatsError(f"missing {', '.join(missing)} (a version-2 entry has every one of "
                                    f"{', '.join(SNAPSHOT_KEYS)})")
        half_life = state["half_life"]
        if half_life is not None:
            half_life = _finite("half_life", half_life, 0.0)
            if half_life == 0:
                raise InvalidStatsError("half_life must be > 0 (or null for none)")
        decayed = state["decayed"]
        if (decayed is None) != (half_life is None):
            raise InvalidStatsError("decayed and half_life must both be set or both be null")
        frozen = state["frozen"]
        if not isinstance(frozen, bool):
            raise InvalidStatsError(f"frozen must be true or false, got {frozen!r}")
        updated_at = state["updated_at"]
        return cls(stats=stats, decayed=None if decayed is None else DecayedStats.from_dict(decayed),
                   half_life=half_life, frozen=frozen, merges=_count("merges", state["merges"]),
                   updated_at=None if updated_at is None else _count("updated_at", updated_at))
