"""The shared core of the sync and asyncio clients: every operation, without I/O.

``StoreCore`` and ``NormalizerCore`` hold the state and validation, and express each public
method as an operation (a generator of ``requests``). ``StatsStore`` / ``SharedRewardNormalizer``
run those operations with blocking calls and ``AsyncStatsStore`` /
``AsyncSharedRewardNormalizer`` await them; that loop is all the I/O classes add.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from redis.exceptions import ResponseError

from .durability import replica_wait
from .envinfo import EnvInfo
from .errors import NotReplicatedError, RewardNormError
from .inputs import coerce_scores, glob_escape, stats_key, validate_env, validate_namespace
from .normalization import MODES, NormalizerSettings, normalize_values
from .protocol import (
    DUPLICATE,
    FROZEN,
    as_text,
    batch_record_key,
    decode_reply,
    decode_stored,
    encode_sequence,
    encode_state,
    encode_stats,
)
from .requests import LoadFunctions, MergeBatch, Operation, ReadMany, ReadStats, Request, RunScript, ScanKeys
from .retry import DEFAULT_RETRY, TRANSIENT_ERRORS, RetryPolicy, worth_retrying
from .scripts import ClientScripts
from .stats import RunningStats, summarize

__all__ = [
    "StoreCore",
    "NormalizerCore",
    "metrics_from_stats",
    "metrics_from_info",
    "checkpoint_from",
    "parse_checkpoint",
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_VERSION",
    "parse_snapshot",
    "snapshot_of",
]

#: Identifies our JSON snapshots (``export()``, ``shared-rewardnorm export``), and their version.
#: Version 2 carries each env's decayed statistics, configuration and activity; version 1
#: (totals only) is still read.
SNAPSHOT_FORMAT = "shared_rewardnorm.snapshot"
SNAPSHOT_VERSION = 2
READABLE_SNAPSHOT_VERSIONS = (1, 2)


def _read_env(key: str) -> Operation[EnvInfo]:
    reply = yield ReadStats(key)
    return decode_stored(key, reply)


def _read(key: str) -> Operation[RunningStats]:
    return (yield from _read_env(key)).stats


def _read_many(keys: tuple[str, ...]) -> Operation[list[Any]]:
    """HGETALL several keys in one pipeline; the raw replies, after raising the first error among
    them (a key of another type becomes ``WrongTypeError``)."""
    replies = yield ReadMany(keys)
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, ResponseError):
            raise ReadStats(key).translate(reply) from reply
        if isinstance(reply, Exception):
            raise reply
    return replies


def _replace(key: str, stats: RunningStats, state: EnvInfo | None = None) -> Operation[EnvInfo]:
    """Replace the totals; with ``state`` (a version-2 snapshot's env) everything else too,
    otherwise the configuration stays and the decayed statistics and activity restart. Returns
    the env as the replace left it."""
    args = (encode_stats(stats),) if state is None else (encode_stats(stats), encode_state(state))
    reply = yield RunScript("replace", (key,), args)
    return decode_reply(reply)[0]


def _yes_or_no(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _require_stats(stats: Any) -> RunningStats:
    if not isinstance(stats, RunningStats):
        raise TypeError(f"stats must be RunningStats, got {type(stats).__name__}")
    return stats


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


#: What sending a request can fail with that ``StoreCore._pause_before_resending`` judges.
SEND_FAILURES = (ResponseError, *TRANSIENT_ERRORS)

#: Seconds a client's batch record for an env lives after its last merge: a retry must come
#: within this time to be recognized (retries come within seconds; a day is generous).
DEFAULT_BATCH_RECORD_TTL = 86_400
#: Seconds a merge waits for its replicas with ``replicas=`` (a healthy replica on the same
#: network acknowledges within milliseconds).
DEFAULT_REPLICA_TIMEOUT = 1.0
#: Ten years: far beyond any use, and within what Redis accepts for SET ... EX. merge.lua refuses
#: a longer one itself (its MAX_RECORD_TTL, the same number: tests/test_store.py checks it).
MAX_BATCH_RECORD_TTL = 10 * 365 * 86_400


class StoreCore:
    """Namespace, key naming, batch identities, retry settings and the store's operations;
    subclasses add the I/O.

    Every merge carries a batch identity: this store's client id (random, renewed in a forked
    child so two processes never share one) and a sequence number per env. The merge script
    records it, so a batch sent again after a lost reply is never counted twice, whoever sends
    it again: the store's retries, redis-py's own, or the caller's. For the caller's, a merge
    whose reply never came is remembered per env, and the next merge of the same summary into
    that env is taken as its retry and keeps its identity.
    """

    #: Set by the sync and asyncio subclasses: their redis-py client and how it runs scripts.
    _client: Any
    _scripts: ClientScripts
    #: Whether merges go to the driver as ``MergeBatch`` requests (an asyncio store that
    #: coalesces them) rather than as the merge script's call.
    _coalesces = False

    def __init__(self, namespace: str, retry: RetryPolicy | None = DEFAULT_RETRY,
                 batch_record_ttl: int = DEFAULT_BATCH_RECORD_TTL, replicas: int = 0,
                 replica_timeout: float = DEFAULT_REPLICA_TIMEOUT) -> None:
        self._namespace = validate_namespace(namespace)
        #: ``WAIT`` after every merge (``replicas=``), or None; subclasses call
        #: ``refuse_unsupported`` once they have their client.
        self._wait = replica_wait(replicas, replica_timeout)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {type(retry).__name__}")
        self._retry = retry
        if (isinstance(batch_record_ttl, bool) or not isinstance(batch_record_ttl, int)
                or not 1 <= batch_record_ttl <= MAX_BATCH_RECORD_TTL):
            raise ValueError(f"batch_record_ttl must be an int from 1 to {MAX_BATCH_RECORD_TTL} (seconds), "
                             f"got {batch_record_ttl!r}")
        self._record_ttl = str(batch_record_ttl)
        self._new_identity()
        #: Requests sent again after a transient failure (for monitoring and benchmarks).
        self.retries = 0
        #: Merges the script recognized as already merged (a retry whose first try had landed).
        self.duplicates = 0

    def _pause_before_resending(self, request: Request, error: BaseException, attempt: int) -> float:
        """After sending ``request`` failed with ``error`` (on try ``attempt``, from 0): the seconds
        to wait before sending it again (0: at once, after NOSCRIPT or a fallback from FCALL to
        EVALSHA), or raise what the caller should see. The sync and asyncio stores share this
        decision; they differ only in how they wait."""
        if isinstance(error, ResponseError) and not isinstance(error, TRANSIENT_ERRORS):
            if self._scripts.fall_back(error):
                return 0.0
            raise request.translate(error) from error
        delay = self._retry.delay(attempt) if self._retry is not None and worth_retrying(error) else None
        if delay is None:
            raise error
        self.retries += 1
        return delay

    def _new_identity(self) -> None:
        self._pid = os.getpid()
        self._client_id = secrets.token_hex(8)
        self._sequences: dict[str, Iterator[int]] = {}
        # Per key, the merge whose reply never came: if the caller sends the same summary again
        # (its own retry loop), that is the same batch and keeps its identity.
        self._unacknowledged: dict[str, RunScript] = {}

    @property
    def client_id(self) -> str:
        """This store's batch identity prefix (in this process)."""
        if os.getpid() != self._pid:
            self._new_identity()
        return self._client_id

    def _merge_at(self, key: str, stats: RunningStats) -> Operation[EnvInfo]:
        """Merge a summary into the env at ``key`` exactly once (nothing while it is frozen) and
        return the env as the merge left it; empty summaries only read."""
        if stats.count == 0:
            return (yield from _read_env(key))
        if self._coalesces:  # the store's coalescer sends it, maybe with others (see coalesce.py)
            return (yield MergeBatch(key, stats))
        encoded = encode_stats(stats)
        request = self._unacknowledged.pop(key, None)  # pop: only one caller may reuse it
        if request is None or request.args[0] != encoded:
            request = self._merge_request(key, encoded)
        try:
            return (yield from self._send_merge(request))
        except NotReplicatedError:
            self._unacknowledged[key] = request  # merged once: the caller's retry re-waits, counted once
            raise
        except (RewardNormError, ResponseError):
            raise  # the server refused the merge: nothing was written
        except BaseException:  # GeneratorExit too: an abandoned operation never saw its reply
            # Its fate is unknown (the retries ran out, a timeout cancelled the call, ...): if
            # the caller sends the same summary again, that is this batch again. Only a failed
            # merge is remembered, never one in flight, so a concurrent merge of an identical
            # summary is always a batch of its own.
            self._unacknowledged[key] = request
            raise

    def _merge_request(self, key: str, encoded: str) -> RunScript:
        """The merge of a new batch (an encoded summary) into ``key``, with a batch identity of
        its own: this client's next sequence number for the key (and ``WAIT`` after it with
        ``replicas=``)."""
        client_id = self.client_id  # first: a forked child renews its identity and sequences
        sequence = self._sequences.get(key)
        if sequence is None:
            sequence = self._sequences.setdefault(key, itertools.count(1))
        return RunScript("merge", (key, batch_record_key(key, client_id)),
                         (encoded, encode_sequence(next(sequence)), self._record_ttl),
                         None if self._wait is None else self._wait.args)

    def _send_merge(self, request: RunScript) -> Operation[EnvInfo]:
        """Send a merge request (a new one, or one sent before: its identity makes that safe)
        and return the env as its reply shows it. With ``replicas=``, raise
        ``NotReplicatedError`` after the merge is known stored once, if too few replicas
        acknowledged it (sending the same request again is then the way to retry)."""
        reply = yield request
        if self._wait is not None:
            reply, acknowledged = reply
        info, outcome = decode_reply(reply)
        if outcome == DUPLICATE:
            self.duplicates += 1
        if self._wait is not None:
            self._wait.check(request.keys[0], acknowledged, frozen=outcome == FROZEN)
        return info

    @property
    def namespace(self) -> str:
        """The key prefix of this store."""
        return self._namespace

    def key(self, env: str) -> str:
        """The Redis key of ``env``'s stats hash, ``<namespace>:{<env>}`` (validates the name)."""
        return stats_key(self._namespace, validate_env(env))

    def _update_op(self, env: str, values: Any) -> Operation[RunningStats]:
        key = self.key(env)
        return (yield from self._merge_at(key, RunningStats.from_values(values))).stats

    def _merge_op(self, env: str, stats: RunningStats) -> Operation[RunningStats]:
        key = self.key(env)
        return (yield from self._merge_at(key, _require_stats(stats))).stats

    def _info_op(self, env: str) -> Operation[EnvInfo]:
        return _read_env(self.key(env))

    def _configure_op(self, env: str, half_life: Any) -> Operation[bool]:
        key = self.key(env)
        if half_life is not None:
            if (isinstance(half_life, bool) or not isinstance(half_life, (int, float))
                    or not 0 < half_life < math.inf):
                raise ValueError(f"half_life must be a positive finite number of samples or None, got {half_life!r}")
        argument = "none" if half_life is None else "%.17g" % half_life
        reply = yield RunScript("configure", (key,), (argument,))
        return as_text(reply) == "1"

    def _freeze_op(self, env: str, frozen: bool) -> Operation[bool]:
        key = self.key(env)
        reply = yield RunScript("freeze", (key,), ("1" if frozen else "0",))
        return as_text(reply) == "1"

    def _get_op(self, env: str) -> Operation[RunningStats]:
        return _read(self.key(env))

    def _set_op(self, env: str, stats: RunningStats) -> Operation[RunningStats]:
        key = self.key(env)
        return (yield from _replace(key, _require_stats(stats))).stats

    def _reset_op(self, env: str) -> Operation[RunningStats]:
        return (yield from _replace(self.key(env), RunningStats())).stats

    def _infos_op(self, envs: Iterable[str]) -> Operation[dict[str, EnvInfo]]:
        names = _env_names(envs)
        keys = tuple(self.key(env) for env in names)
        if not keys:
            return {}
        replies = yield from _read_many(keys)
        return {env: decode_stored(key, reply) for env, key, reply in zip(names, keys, replies, strict=True)}

    def _get_many_op(self, envs: Iterable[str]) -> Operation[dict[str, RunningStats]]:
        return {env: info.stats for env, info in (yield from self._infos_op(envs)).items()}

    def _envs_op(self) -> Operation[list[str]]:
        prefix = f"{self._namespace}:{{"
        keys = yield ScanKeys(glob_escape(prefix) + "*}")
        names = set()
        for key in map(as_text, keys):
            env = key[len(prefix):-1]
            if key.startswith(prefix) and key.endswith("}") and "{" not in env and "}" not in env and env:
                names.add(env)
        return sorted(names)

    def _all_infos_op(self) -> Operation[dict[str, EnvInfo]]:
        envs = yield from self._envs_op()
        found = yield from self._infos_op(envs)
        # An env deleted between the SCAN and the read has nothing to report.
        return {env: info for env, info in found.items() if not info.is_empty}

    def _all_op(self) -> Operation[dict[str, RunningStats]]:
        found = yield from self._all_infos_op()
        return {env: info.stats for env, info in found.items() if not info.stats.is_empty}

    def _selected_infos_op(self, envs: Iterable[str] | None) -> Operation[dict[str, EnvInfo]]:
        """The named envs, or (``None``) every env ``envs()`` lists, configured or frozen ones
        without statistics included, as ``export`` writes them."""
        if envs is None:
            return (yield from self._all_infos_op())
        return (yield from self._infos_op(envs))

    def _aggregate_op(self, envs: Iterable[str] | None = None) -> Operation[RunningStats]:
        found = yield from self._selected_infos_op(envs)
        return RunningStats.combine(found[env].stats for env in sorted(found))

    def _metrics_op(self, envs: Iterable[str] | None = None) -> Operation[dict[str, float]]:
        metrics: dict[str, float] = {}
        for env, info in sorted((yield from self._selected_infos_op(envs)).items()):
            if envs is None and info.stats.is_empty:  # all envs: those with statistics to report
                continue
            metrics.update(metrics_from_info(info, prefix=f"reward_norm/{env}"))
        return metrics

    def _survey_op(self, envs: Iterable[str] | None) -> Operation[tuple[dict[str, EnvInfo],
                                                                          dict[str, RewardNormError]]]:
        names = (yield from self._envs_op()) if envs is None else _env_names(envs)
        keys = tuple(self.key(env) for env in names)
        replies = (yield ReadMany(keys)) if keys else []
        found: dict[str, EnvInfo] = {}
        broken: dict[str, RewardNormError] = {}
        for env, key, reply in zip(names, keys, replies, strict=True):
            try:
                if isinstance(reply, ResponseError):
                    raise ReadStats(key).translate(reply) from reply
                if isinstance(reply, Exception):
                    raise reply
                info = decode_stored(key, reply)
            except RewardNormError as exc:
                broken[env] = exc
                continue
            if envs is not None or not info.is_empty:  # deleted between the SCAN and the read
                found[env] = info
        return found, broken

    def _export_op(self) -> Operation[dict[str, Any]]:
        return snapshot_of(self._namespace, (yield from self._all_infos_op()))

    def _load_functions_op(self) -> Operation[str]:
        reply = yield LoadFunctions()
        if isinstance(reply, dict):  # a cluster client answers per primary
            names = {as_text(name) for name in reply.values()}
            if len(names) != 1:
                raise RuntimeError(f"the primaries answered FUNCTION LOAD differently: {sorted(names)}")
            return names.pop()
        return as_text(reply)

    def _restore_op(self, snapshot: Any) -> Operation[dict[str, RunningStats]]:
        parsed = parse_snapshot(snapshot)  # everything is checked before the first write...
        keys = tuple(self.key(env) for env in parsed)
        if keys:  # ...including that no target key holds another type (a replace would refuse it)
            yield from _read_many(keys)
        restored = {}
        for key, (env, entry) in zip(keys, parsed.items(), strict=True):
            if isinstance(entry, EnvInfo):
                restored[env] = (yield from _replace(key, entry.stats, entry)).stats
            else:
                restored[env] = (yield from _replace(key, entry)).stats
        return restored


def _env_names(envs: Iterable[str]) -> list[str]:
    if isinstance(envs, str):
        raise TypeError("envs must be an iterable of env names, not a single str")
    return list(dict.fromkeys(envs))


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

    def _normalize_op(self, scores: Any, update: bool = True) -> Operation[list[float]]:
        _yes_or_no("update", update)
        values = coerce_scores(scores)
        if len(values) == 0:
            return []
        if self._settings.mode == "none":  # records nothing, as in the reference
            return normalize_values(values, self._stats, self._settings)
        recent = self._settings.statistics == "recent"
        if recent and update and not self._decay_seen:  # refuse before the first merge, not after it
            self._require_decay((yield from self._refresh_info_op()), counted=False)
        if update:
            info = self._seen((yield from self._store_core._merge_at(self._key, summarize(values))))
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
                         f'{reason}; or use statistics="total"' + ("; this batch was counted in the totals" if counted else ""))

    def _refresh_info_op(self) -> Operation[EnvInfo]:
        return self._seen((yield from _read_env(self._key)))

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
        self._seen((yield from _replace(self._key, stats)))
        self._settings = settings

    def __repr__(self) -> str:
        s = self._settings
        return (f"{type(self).__name__}(env={self._env!r}, mode={s.mode!r}, clip={s.clip!r}, "
                f"warmup={s.warmup!r}, eps={s.eps!r}, statistics={s.statistics!r})")
