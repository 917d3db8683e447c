"""The formats the library writes and reads besides the hash itself: JSON snapshots
(``export``/``restore``, ``shared-rewardnorm export``), the reference's checkpoint format
(``state_dict``/``load_state_dict``) and WandB metric names. Pure functions, no I/O; each
format is written and parsed here and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from shared_rewardnorm._core.inputs import validate_env
from shared_rewardnorm._core.normalization import NormalizerSettings
from shared_rewardnorm.envinfo import EnvInfo
from shared_rewardnorm.stats import RunningStats

__all__ = [
    "READABLE_SNAPSHOT_VERSIONS",
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_VERSION",
    "checkpoint_from",
    "metrics_from_info",
    "metrics_from_stats",
    "parse_checkpoint",
    "parse_snapshot",
    "snapshot_of",
]

#: Identifies our JSON snapshots (``export()``, ``shared-rewardnorm export``), and their version.
#: Version 2 carries each env's decayed statistics, configuration and activity; version 1
#: (totals only) is still read.
SNAPSHOT_FORMAT = "shared_rewardnorm.snapshot"
SNAPSHOT_VERSION = 2
READABLE_SNAPSHOT_VERSIONS = (1, 2)


def parse_snapshot(snapshot: Any) -> dict[str, EnvInfo | RunningStats]:
    """Validate a snapshot completely (format, version, every env name and every field) and
    return its envs: ``EnvInfo`` from version 2, ``RunningStats`` (totals only) from version 1.
    Raises ``ValueError``/``TypeError`` naming the first problem."""
    if not isinstance(snapshot, Mapping):
        raise TypeError(f"snapshot must be a JSON object, got {type(snapshot).__name__}")
    if snapshot.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"not a shared_rewardnorm snapshot: format is {snapshot.get('format')!r}, "
                         f"expected {SNAPSHOT_FORMAT!r}")
    version = snapshot.get("version")
    if version not in READABLE_SNAPSHOT_VERSIONS or isinstance(version, bool):
        raise ValueError(f"unsupported snapshot version {version!r}; this library reads versions "
                         f"{', '.join(map(str, READABLE_SNAPSHOT_VERSIONS))}")
    envs = snapshot.get("envs")
    if not isinstance(envs, Mapping):
        raise ValueError("snapshot has no 'envs' object")
    parsed: dict[str, EnvInfo | RunningStats] = {}
    for env, state in envs.items():
        validate_env(env)
        try:
            parsed[env] = RunningStats.from_dict(state) if version == 1 else EnvInfo.from_dict(state)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"snapshot env {env!r}: {exc}") from None
    return parsed


def snapshot_of(namespace: str, found: Mapping[str, EnvInfo]) -> dict[str, Any]:
    """A JSON-safe, versioned snapshot of the given envs (statistics, decayed statistics,
    configuration and activity)."""
    return {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "namespace": namespace,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "envs": {env: info.to_dict() for env, info in sorted(found.items())},
    }


def metrics_from_stats(stats: RunningStats, prefix: str = "reward_norm") -> dict[str, float]:
    """WandB-ready metrics with the reference's keys (``reward_norm/count|mean|std|min|max``)."""
    return {
        f"{prefix}/count": float(stats.count),
        f"{prefix}/mean": stats.mean,
        f"{prefix}/std": stats.std,
        f"{prefix}/min": stats.min,
        f"{prefix}/max": stats.max,
    }


def metrics_from_info(info: EnvInfo, prefix: str = "reward_norm") -> dict[str, float]:
    """``metrics_from_stats`` plus ``<prefix>/recent_mean`` and ``<prefix>/recent_std`` (the
    decayed statistics) for an env with a half-life."""
    metrics = metrics_from_stats(info.stats, prefix)
    if info.decayed is not None:
        metrics[f"{prefix}/recent_mean"] = info.decayed.mean
        metrics[f"{prefix}/recent_std"] = info.decayed.std
    return metrics


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
