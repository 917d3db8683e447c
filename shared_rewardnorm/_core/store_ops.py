"""The store's operations, without I/O: ``StoreCore``.

``StoreCore`` holds the namespace, the retry settings and the batch ledger, and expresses each
public method of ``StatsStore``/``AsyncStatsStore`` as an operation (a generator of
``requests``); the shells run those operations, with blocking calls or awaited.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from redis.exceptions import ResponseError

from shared_rewardnorm._core.formats import metrics_from_info, parse_snapshot, snapshot_of
from shared_rewardnorm._core.inputs import validate_batch_id, validate_env, validate_namespace
from shared_rewardnorm._core.keys import env_of_key, env_scan_pattern, stats_key
from shared_rewardnorm._core.ledger import BatchLedger
from shared_rewardnorm._core.protocol import (
    DUPLICATE,
    FROZEN,
    MERGED,
    as_text,
    decode_reply,
    decode_stored,
    encode_state,
    encode_stats,
)
from shared_rewardnorm._core.requests import (
    ClientRequest,
    LoadFunctions,
    MergeBatch,
    Once,
    Operation,
    ReadMany,
    ReadStats,
    RunScript,
    ScanKeys,
)
from shared_rewardnorm._core.served import ServedEnvs, single_tries
from shared_rewardnorm._redis.connection import describe_client
from shared_rewardnorm._redis.durability import replica_wait
from shared_rewardnorm._redis.scripts import ClientScripts
from shared_rewardnorm.envinfo import EnvInfo
from shared_rewardnorm.errors import RewardNormError, StoreConfigError, StoreUnavailableError
from shared_rewardnorm.retry import DEFAULT_RETRY, TRANSIENT_ERRORS, RetryPolicy, worth_retrying
from shared_rewardnorm.stats import RunningStats

__all__ = [
    "DEFAULT_BATCH_RECORD_TTL",
    "DEFAULT_REPLICA_TIMEOUT",
    "MAX_BATCH_RECORD_TTL",
    "SEND_FAILURES",
    "StoreCore",
    "read_env",
    "replace_stats",
    "reseed_env",
    "yes_or_no",
]


def read_env(key: str, once: bool = False) -> Operation[EnvInfo]:
    """The env at ``key``, read (``once``: with a single try, see ``Once``)."""
    reply = yield Once(ReadStats(key)) if once else ReadStats(key)
    return decode_stored(key, reply)


def read_totals(key: str) -> Operation[RunningStats]:
    return (yield from read_env(key)).stats


def _read_many(keys: tuple[str, ...]) -> Operation[list[Any]]:
    """HGETALL several keys in one pipeline; the raw replies, after raising the first error among
    them (a key of another type becomes ``WrongTypeError``)."""
    replies: list[Any] = yield ReadMany(keys)
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, ResponseError):
            raise ReadStats(key).translate(reply) from reply
        if isinstance(reply, Exception):
            raise reply
    return replies


def replace_stats(key: str, stats: RunningStats, state: EnvInfo | None = None) -> Operation[EnvInfo]:
    """Replace the totals; with ``state`` (a version-2 snapshot's env) everything else too,
    otherwise the configuration stays and the decayed statistics and activity restart. Returns
    the env as the replace left it."""
    args = (encode_stats(stats),) if state is None else (encode_stats(stats), encode_state(state))
    reply = yield RunScript("replace", (key,), args)
    return decode_reply(reply)[0]


def reseed_env(key: str, found_epoch: int | None, view: EnvInfo, once: bool = False) -> Operation[tuple[EnvInfo, bool]]:
    """Put ``view`` (a client's last view, with statistics) back into the env at ``key``, merged
    with what the env holds now, if its epoch is still ``found_epoch`` (``None``: no identity);
    see ``lua/reseed.lua``. Returns the env as it is afterwards and whether this call re-seeded
    it (``False``: somebody changed it first)."""
    request = RunScript("reseed", (key,), ("%d" % (found_epoch or 0), encode_stats(view.stats), encode_state(view)))
    reply = yield Once(request) if once else request
    info, outcome = decode_reply(reply)
    return info, outcome == MERGED


def yes_or_no(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _require_stats(stats: Any) -> RunningStats:
    if not isinstance(stats, RunningStats):
        raise TypeError(f"stats must be RunningStats, got {type(stats).__name__}")
    return stats


#: What sending a request can fail with that ``StoreCore._pause_before_resending`` judges.
SEND_FAILURES = (ResponseError, *TRANSIENT_ERRORS)

#: Seconds a client's batch record for an env lives after its last merge: a retry must come
#: within this time to be recognized (retries come within seconds; a day is generous).
DEFAULT_BATCH_RECORD_TTL = 86_400
#: Seconds a merge waits for its replicas with ``replicas=`` (a healthy replica on the same
#: network acknowledges within milliseconds).
DEFAULT_REPLICA_TIMEOUT = 1.0
#: Ten years: far beyond any use, and within what Redis accepts for SET ... EX. merge.lua refuses
#: a longer one itself (stats_lib.lua's MAX_RECORD_TTL, the same number: tests/unit/test_ledger.py checks it).
MAX_BATCH_RECORD_TTL = 10 * 365 * 86_400


class _Default:
    """The type of ``DEFAULT``: "the store's own retry policy" (``None`` means never retry)."""


#: Passed as ``retry=`` to a shell's ``run``: retry as the store's policy says.
DEFAULT = _Default()


class StoreCore:
    """Namespace, key naming, the batch ledger, retry settings and the store's operations;
    the shells (``sync.StatsStore``, ``aio.AsyncStatsStore``) add the I/O.

    Every merge is yielded as a ``MergeBatch``; the shell asks ``self.ledger`` for the request
    that carries it (``merge_request``) and hands the operation that request's raw reply. So a
    batch sent again, by the store's retries or under the caller's ``batch_id``, is never
    counted twice (``ledger.py`` says how), and both shells share that one memory.
    """

    #: Set by the shells: their redis-py client and how it runs scripts.
    _client: Any
    _scripts: ClientScripts

    def __init__(self, namespace: str, retry: RetryPolicy | None = DEFAULT_RETRY,
                 batch_record_ttl: int = DEFAULT_BATCH_RECORD_TTL, replicas: int = 0,
                 replica_timeout: float = DEFAULT_REPLICA_TIMEOUT) -> None:
        self._namespace = validate_namespace(namespace)
        #: ``WAIT`` after every merge (``replicas=``), or None; the shells call
        #: ``refuse_unsupported`` once they have their client.
        self._wait = replica_wait(replicas, replica_timeout)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {type(retry).__name__}")
        self._retry = retry
        if (isinstance(batch_record_ttl, bool) or not isinstance(batch_record_ttl, int)
                or not 1 <= batch_record_ttl <= MAX_BATCH_RECORD_TTL):
            raise ValueError(f"batch_record_ttl must be an int from 1 to {MAX_BATCH_RECORD_TTL} (seconds), "
                             f"got {batch_record_ttl!r}")
        #: Batch identities and the named batches remembered for their callers' retries.
        self.ledger = BatchLedger(batch_record_ttl, None if self._wait is None else self._wait.args)
        #: Requests sent again after a transient failure (for monitoring and benchmarks).
        self.retries = 0
        #: Merge replies saying the batch had been merged before (a retry whose first try had
        #: landed); under coalescing, counted once per caller.
        self.duplicates = 0
        #: The normalizers normalizing through this store, for ``metrics()`` (see ``served.py``).
        self.served = ServedEnvs()

    def _pause_before_resending(self, request: ClientRequest, error: BaseException, attempt: int,
                                elapsed: float, retry: RetryPolicy | _Default | None = DEFAULT) -> float:
        """After sending ``request`` failed with ``error`` (on try ``attempt``, from 0, ``elapsed``
        seconds after the first try began): the seconds to wait before sending it again (0: at
        once, after NOSCRIPT or a fallback from FCALL to EVALSHA), or raise what the caller
        should see: ``StoreUnavailableError`` once the retry policy (``retry``, by default the
        store's) is spent on a transient failure. The sync and asyncio stores share this
        decision; they differ only in how they wait."""
        if isinstance(error, ResponseError) and not isinstance(error, TRANSIENT_ERRORS):
            if self._scripts.fall_back(error):
                return 0.0
            if str(error).startswith("DB index is out of range"):  # SELECT, as the connection opened
                database = getattr(getattr(self._client, "connection_pool", None), "connection_kwargs", {}).get("db")
                raise StoreConfigError(f"the store at {describe_client(self._client)} has no database {database} "
                                       f"({error}: its `databases` setting bounds the index)") from error
            raise request.translate(error) from error
        policy = self._retry if isinstance(retry, _Default) else retry
        if not worth_retrying(error):
            raise error  # not transient (a wrong password, a refused certificate): say so as it is
        delay = policy.delay(attempt) if policy is not None else None
        if delay is None:
            raise self._unavailable(error, attempt + 1, elapsed) from error
        self.retries += 1
        return delay

    def _unavailable(self, error: BaseException, attempts: int, elapsed: float) -> StoreUnavailableError:
        where = describe_client(self._client)
        detail = " ".join(str(error).split()) or type(error).__name__
        return StoreUnavailableError(
            f"the store at {where} is unavailable: {type(error).__name__}: {detail} (after {attempts} "
            f"{'try' if attempts == 1 else 'tries'} in {elapsed:.2f} s; the request's fate is unknown)",
            store=where, elapsed=elapsed, attempts=attempts)

    @property
    def client_id(self) -> str:
        """This store's batch identity prefix (in this process)."""
        return self.ledger.client_id

    def merge_request(self, batch: MergeBatch) -> RunScript:
        """The merge script's call that carries ``batch`` alone (see ``BatchLedger.request_for``)."""
        return self.ledger.request_for(batch)

    def merge_at(self, key: str, stats: RunningStats, batch_id: Any = None, once: bool = False) -> Operation[EnvInfo]:
        """Merge a summary into the env at ``key`` exactly once (nothing while it is frozen) and
        return the env as the merge left it; empty summaries only read. ``once``: a single try
        (see ``Once``)."""
        name = validate_batch_id(batch_id)
        if stats.count == 0:
            return (yield from read_env(key, once))
        batch = MergeBatch(key, stats, encode_stats(stats), name)
        reply = yield Once(batch) if once else batch
        return self._merged(key, reply)

    def _merged(self, key: str, reply: Any) -> EnvInfo:
        """The env as a merge's reply shows it. With ``replicas=``, raise ``NotReplicatedError``
        after the merge is known stored once, if too few replicas acknowledged it (sending the
        same batch again under its ``batch_id`` is then the way to retry)."""
        if self._wait is not None:
            reply, acknowledged = reply
        info, outcome = decode_reply(reply)
        if outcome == DUPLICATE:
            self.duplicates += 1
        if self._wait is not None:
            self._wait.check(key, acknowledged, frozen=outcome == FROZEN)
        return info

    @property
    def namespace(self) -> str:
        """The key prefix of this store."""
        return self._namespace

    def key(self, env: str) -> str:
        """The Redis key of ``env``'s stats hash, ``<namespace>:{<env>}`` (validates the name)."""
        return stats_key(self._namespace, validate_env(env))

    def _update_op(self, env: str, values: Any, batch_id: Any = None) -> Operation[RunningStats]:
        key = self.key(env)
        return (yield from self.merge_at(key, RunningStats.from_values(values), batch_id)).stats

    def _merge_op(self, env: str, stats: RunningStats, batch_id: Any = None) -> Operation[RunningStats]:
        key = self.key(env)
        return (yield from self.merge_at(key, _require_stats(stats), batch_id)).stats

    def _info_op(self, env: str) -> Operation[EnvInfo]:
        return read_env(self.key(env))

    def _configure_op(self, env: str, half_life: Any) -> Operation[bool]:
        key = self.key(env)
        if half_life is not None and (isinstance(half_life, bool) or not isinstance(half_life, (int, float))
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
        return read_totals(self.key(env))

    def _set_op(self, env: str, stats: RunningStats) -> Operation[RunningStats]:
        key = self.key(env)
        return (yield from replace_stats(key, _require_stats(stats))).stats

    def _reset_op(self, env: str) -> Operation[RunningStats]:
        return (yield from replace_stats(self.key(env), RunningStats())).stats

    def _infos_op(self, envs: Iterable[str]) -> Operation[dict[str, EnvInfo]]:
        names = _env_names(envs)
        keys = tuple(self.key(env) for env in names)
        if not keys:
            return {}
        replies = yield from _read_many(keys)
        return {env: decode_stored(key, reply) for env, key, reply in zip(names, keys, replies, strict=True)}

    def _get_many_op(self, envs: Iterable[str]) -> Operation[dict[str, RunningStats]]:
        return {env: info.stats for env, info in (yield from self._infos_op(envs)).items()}

    def _scan_envs_op(self, hashes_only: bool = True) -> Operation[list[str]]:
        """The names of every env hash in the namespace, those a ``reset`` left holding only
        their identity included (``hashes_only=False``: and of every key of another type under
        an env's name)."""
        keys = yield ScanKeys(env_scan_pattern(self._namespace), hashes_only)
        names = {env_of_key(self._namespace, key) for key in map(as_text, keys)}
        return sorted(name for name in names if name is not None)

    def _envs_op(self) -> Operation[list[str]]:
        return sorted((yield from self._all_infos_op()))

    def _all_infos_op(self) -> Operation[dict[str, EnvInfo]]:
        envs = yield from self._scan_envs_op()
        found = yield from self._infos_op(envs)
        # An env deleted between the SCAN and the read, or reset (its hash then holds only its
        # identity), has nothing to report.
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
        """The stored envs' metrics, with ``degraded`` of the envs normalized through this store;
        while it is unreachable, from its ``on_unavailable="local"`` normalizers' views (see
        ``_core/served.py``)."""
        names = None if envs is None else _env_names(envs)  # (an iterator is read once)
        read = self._selected_infos_op(names)
        try:  # the store known to be down (a normalizer is degraded): one try per request
            found = yield from (single_tries(read) if self.served.probing else read)
        except StoreUnavailableError:
            if not self.served.answers_locally:
                raise
            return self.served.local_metrics(names)
        flags = self.served.flags(names)
        metrics: dict[str, float] = {}
        for env in sorted(set(found) | set(flags)):
            info = found.get(env)
            if info is not None and not (names is None and info.stats.is_empty):  # all: those with statistics
                metrics.update(metrics_from_info(info, prefix=f"reward_norm/{env}"))
            if env in flags:
                metrics[f"reward_norm/{env}/degraded"] = flags[env]
        return metrics

    def _survey_op(self, envs: Iterable[str] | None) -> Operation[tuple[dict[str, EnvInfo],
                                                                          dict[str, RewardNormError]]]:
        names = (yield from self._scan_envs_op(hashes_only=False)) if envs is None else _env_names(envs)
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
                restored[env] = (yield from replace_stats(key, entry.stats, entry)).stats
            else:
                restored[env] = (yield from replace_stats(key, entry)).stats
        return restored


def _env_names(envs: Iterable[str]) -> list[str]:
    if isinstance(envs, str):
        raise TypeError("envs must be an iterable of env names, not a single str")
    return list(dict.fromkeys(envs))


