"""The store and the normalizers on a real Redis Cluster (three masters, started once for this
module by ``redis_cluster.RedisCluster``): keys spread over every master, each env's keys in one
slot, many processes and coroutines merging exactly, reads grouped by node, SCAN on every
master, and scripts reloaded after the script cache is flushed on every primary."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import math
import multiprocessing
import queue
import random
import traceback
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis.connection
from redis.asyncio.cluster import RedisCluster as AsyncClusterClient
from redis.cluster import RedisCluster as ClusterClient

from shared_rewardnorm import (
    AsyncSharedRewardNormalizer,
    AsyncStatsStore,
    RunningStats,
    SharedRewardNormalizer,
    StatsStore,
)
from shared_rewardnorm._redis.scripts import script_source
from tests.support.helpers import assert_summarizes, unavailable
from tests.support.redis_cluster import RedisCluster, cluster_tools_missing
from tests.support.worker_processes import stop_workers

pytestmark = pytest.mark.own_server

STATS = ("count", "mean", "std", "min", "max")

#: 122 envs: enough that every master owns many, plus names with glob characters, a space, a
#: slash and non-ASCII text, which must survive SCAN MATCH and the hash tag.
ENVS = [f"env-{i:03d}" for i in range(116)] + ["gsm8k", "tool use", "code/v2", "star*", "q?[x]", "üñí"]
WORKERS, ROUNDS = 4, 2


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """A private three-master cluster for this module (skip without redis-server/redis-cli,
    fail instead under SHARED_REWARDNORM_REQUIRE_REDIS=1)."""
    reason = cluster_tools_missing()
    if reason:
        unavailable(reason)
    with RedisCluster(masters=3) as started:
        yield started


@pytest.fixture
def client(cluster: RedisCluster) -> Iterator[ClusterClient]:
    """A cluster client for inspecting keys (closed afterwards)."""
    cluster_client = ClusterClient.from_url(cluster.url)
    yield cluster_client
    cluster_client.close()


def evalsha_only() -> dict[str, Any]:
    """Store kwargs that pin the EVALSHA path (stores that can also use Redis Functions take
    ``functions=False``), so the script cache tests really exercise the script cache."""
    return {"functions": False} if "functions" in inspect.signature(StatsStore).parameters else {}


def merge_sha() -> str:
    return hashlib.sha1(script_source("merge").encode("utf-8")).hexdigest()


def hash_tag_slot(client: ClusterClient, env: str) -> int:
    return client.keyslot("{" + env + "}")


def envs_per_master(cluster: RedisCluster, client: ClusterClient, prefix: str, per_master: int) -> list[str]:
    """Env names chosen so that each master owns ``per_master`` of them."""
    chosen: dict[int, list[str]] = {port: [] for port in cluster.ports}
    for i in range(10_000):
        env = f"{prefix}-{i}"
        owner = cluster.port_of_slot(hash_tag_slot(client, env))
        if len(chosen[owner]) < per_master:
            chosen[owner].append(env)
        if all(len(names) == per_master for names in chosen.values()):
            return [env for names in chosen.values() for env in names]
    raise AssertionError("could not place envs on every master")


def batch(worker: int, env_index: int, round_: int) -> list[float]:
    """The deterministic batch one worker sends to one env in one round. Each env has its own
    offset, so means are far from 0 and relative tolerances mean something."""
    rng = random.Random((worker * 1000 + env_index) * 10 + round_)
    return [rng.gauss(3.0 + env_index, 0.5 + worker) for _ in range(rng.randint(1, 24))]


def sent_to(env_index: int) -> list[float]:
    return [v for worker in range(WORKERS) for round_ in range(ROUNDS) for v in batch(worker, env_index, round_)]


def assert_exact(stats: RunningStats, values: list[float]) -> None:
    """``stats`` equal the two-pass statistics of ``values``: count exact, mean and variance to
    1e-12 relative, min and max exact."""
    assert_summarizes(stats, values, variance_rel_tol=1e-12)


def keys_by_node(cluster: RedisCluster, pattern: str) -> dict[int, list[str]]:
    """Every key matching ``pattern`` on each master, asked of each node directly (SCAN)."""
    found = {}
    for node in cluster.nodes:
        plain = node.client()
        try:
            found[node.port] = [key.decode() for key in plain.scan_iter(match=pattern, count=1000)]
        finally:
            plain.close()
    return found


def env_of_key(namespace: str, key: str) -> str:
    """The env whose hash tag ``key`` carries (``<ns>:{<env>}`` or ``<ns>:{<env>}:...``)."""
    assert key.startswith(namespace + ":{"), key
    return key[len(namespace) + 2:key.index("}")]


# --------------------------------------------------------------------------------------------
# Key placement
# --------------------------------------------------------------------------------------------


def test_every_key_of_an_env_shares_its_hash_tag(cluster: RedisCluster, client: ClusterClient,
                                                  namespace: str) -> None:
    store = StatsStore(cluster.url, namespace, cluster=True)
    try:
        owners = Counter()
        for env in ENVS:
            key = store.key(env)
            assert key == f"{namespace}:{{{env}}}"
            slot = client.keyslot(key)
            # The server's own CLUSTER KEYSLOT agrees, for the key and for the bare tag.
            assert client.cluster_keyslot(key) == slot == client.cluster_keyslot("{" + env + "}")
            assert slot == hash_tag_slot(client, env)
            owners[client.get_node_from_key(key).port] += 1
            store.update(env, [1.0, 2.0, 4.0])
        assert set(owners) == set(cluster.ports), owners
        assert min(owners.values()) >= 15, owners

        # Every key the library wrote (the stats hash and this client's batch record) sits on the
        # master owning its env's tag, in that very slot.
        found = keys_by_node(cluster, f"{namespace}:*")
        kinds: dict[str, set[str]] = {env: set() for env in ENVS}
        for port, keys in found.items():
            assert keys, f"master {port} holds none of the keys"
            for key in keys:
                env = env_of_key(namespace, key)
                assert client.keyslot(key) == hash_tag_slot(client, env)
                assert cluster.port_of_slot(client.keyslot(key)) == port
                kinds[env].add("stats" if key == store.key(env) else "other")
        assert all("stats" in found_kinds for found_kinds in kinds.values())
    finally:
        store.client.close()


# --------------------------------------------------------------------------------------------
# Many processes, then every read
# --------------------------------------------------------------------------------------------


def run_worker(url: str, namespace: str, worker: int, start: Any, results: Any) -> None:
    """Normalize one batch into every env per round (each worker starts at another env).
    Even workers give the store a URL with ``cluster=True``, odd ones a ``RedisCluster``."""
    store = (StatsStore(url, namespace, cluster=True) if worker % 2 == 0
             else StatsStore(ClusterClient.from_url(url), namespace))
    try:
        norms = [SharedRewardNormalizer(env, store, warmup=0) for env in ENVS]
        start.wait(60)
        calls = 0
        for round_ in range(ROUNDS):
            for step in range(len(ENVS)):
                index = (step + worker * 31) % len(ENVS)
                values = batch(worker, index, round_)
                out = norms[index].normalize(values)
                if len(out) != len(values) or not all(map(math.isfinite, out)) or norms[index].count < len(values):
                    raise AssertionError(f"bad result for {ENVS[index]}: {out} {norms[index].stats}")
                calls += 1
        results.put((worker, calls, store.retries, store.duplicates, None))
    except BaseException:
        results.put((worker, 0, 0, 0, traceback.format_exc()))
    finally:
        store.client.close()


@pytest.fixture(scope="module")
def filled(cluster: RedisCluster) -> str:
    """A namespace into which WORKERS spawned processes normalized ROUNDS batches per env."""
    namespace = f"srn-cluster-{uuid.uuid4().hex[:12]}"
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    workers = [context.Process(target=run_worker, args=(cluster.url, namespace, i, start, results))
               for i in range(WORKERS)]
    for process in workers:
        process.start()
    try:
        start.set()
        reports = []
        for _ in workers:
            try:
                reports.append(results.get(timeout=120))
            except queue.Empty:
                pytest.fail(f"workers did not report within 120 s; got {reports}")
    finally:
        stop_workers(workers, results)
    errors = [error for *_, error in reports if error]
    assert not errors, "\n".join(errors)
    assert sorted(r[0] for r in reports) == list(range(WORKERS))
    assert all(calls == ROUNDS * len(ENVS) for _, calls, *_ in reports), reports
    # A healthy cluster needs no retries, and no batch may have been seen twice.
    assert all(retries == 0 and duplicates == 0 for _, _, retries, duplicates, _ in reports), reports
    assert [p.exitcode for p in workers] == [0] * WORKERS
    return namespace


@pytest.fixture
def filled_store(cluster: RedisCluster, filled: str) -> Iterator[StatsStore]:
    """A store over ``filled``, built from a ``RedisCluster`` client."""
    store = StatsStore(ClusterClient.from_url(cluster.url), filled)
    yield store
    store.client.close()


def test_processes_merge_exactly_into_every_env(filled_store: StatsStore, cluster: RedisCluster) -> None:
    client = filled_store.client
    owners = {client.get_node_from_key(filled_store.key(env)).port for env in ENVS}
    assert owners == set(cluster.ports)
    for index, env in enumerate(ENVS):
        assert_exact(filled_store.get(env), sent_to(index))


def test_get_many_is_one_pipeline_send_per_master(filled_store: StatsStore, cluster: RedisCluster,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    filled_store.get_many(ENVS)  # every node has an open connection before we count
    sends: Counter[int] = Counter()
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sends[self.port] += 1
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    found = filled_store.get_many([*ENVS, "never-written"])
    monkeypatch.undo()
    assert sends == Counter(dict.fromkeys(cluster.ports, 1)), sends
    assert list(found) == [*ENVS, "never-written"]
    assert found["never-written"] == RunningStats()
    for index, env in enumerate(ENVS):
        assert found[env] == filled_store.get(env)
        assert_exact(found[env], sent_to(index))


def test_envs_all_aggregate_and_metrics_see_every_master(filled_store: StatsStore, cluster: RedisCluster,
                                                         client: ClusterClient) -> None:
    # SCAN on every master finds every env (and nothing else: batch records are not envs).
    assert filled_store.envs() == sorted(ENVS)
    per_master = Counter(cluster.port_of_slot(hash_tag_slot(client, env)) for env in filled_store.envs())
    assert set(per_master) == set(cluster.ports)

    everything = filled_store.all()
    assert everything == filled_store.get_many(ENVS)

    values = [v for index in range(len(ENVS)) for v in sent_to(index)]
    assert_exact(filled_store.aggregate(), values)
    assert_exact(filled_store.aggregate(ENVS[:3]), sent_to(0) + sent_to(1) + sent_to(2))

    metrics = filled_store.metrics()
    assert set(metrics) == {f"reward_norm/{env}/{stat}" for env in ENVS for stat in STATS}
    for env, stats in everything.items():
        assert metrics[f"reward_norm/{env}/count"] == float(stats.count)
        assert metrics[f"reward_norm/{env}/mean"] == stats.mean
        assert metrics[f"reward_norm/{env}/std"] == stats.std


def test_export_restore_round_trip(filled_store: StatsStore, cluster: RedisCluster) -> None:
    before = filled_store.all()
    snapshot = json.loads(json.dumps(filled_store.export(), allow_nan=False))
    assert snapshot["namespace"] == filled_store.namespace and len(snapshot["envs"]) == len(ENVS)
    copy = StatsStore(filled_store.client, f"srn-copy-{uuid.uuid4().hex[:12]}")
    assert copy.restore(snapshot) == before
    assert copy.all() == before
    for env in ENVS[::3]:
        copy.reset(env)
    assert sorted(copy.envs()) == sorted(set(ENVS) - set(ENVS[::3]))
    assert copy.restore(snapshot) == before
    assert copy.all() == before == filled_store.all()
    copied_keys = keys_by_node(cluster, f"{copy.namespace}:*")
    assert all(copied_keys.values()), "the restored copy must be spread over every master too"


# --------------------------------------------------------------------------------------------
# One process: the normalizer's outputs, and script cache loss
# --------------------------------------------------------------------------------------------


NORMALIZER_NS = f"srn-norm-{uuid.uuid4().hex[:12]}"


def scenario(store_or_client: Any) -> list[Any]:
    """A deterministic single-process sequence of normalize calls (every mode) and reads."""
    rng = random.Random(11)
    norms = [SharedRewardNormalizer(env, store_or_client, mode=mode, warmup=5, namespace=NORMALIZER_NS)
             for env, mode in [("gsm8k", "zscore"), ("tool use", "minmax"), ("code/v2", "zscore"),
                               ("üñí", "minmax")]]
    out: list[Any] = []
    for _ in range(80):
        norm = rng.choice(norms)
        out.append(norm.normalize([rng.gauss(2.0, 3.0) for _ in range(rng.randint(1, 30))]))
        out.append((norm.count, norm.mean, norm.std, norm.is_warmed_up))
    out.extend(norm.metrics_dict() for norm in norms)
    return out


def test_normalizer_on_a_cluster_matches_the_embedded_store(cluster: RedisCluster) -> None:
    cluster_client = ClusterClient.from_url(cluster.url)
    try:
        on_cluster = scenario(cluster_client)
    finally:
        cluster_client.close()
    embedded = scenario(None)
    try:
        assert len(on_cluster) == len(embedded)
        for got, want in zip(on_cluster, embedded):
            if isinstance(got, dict):
                assert got.keys() == want.keys()
                assert list(got.values()) == pytest.approx(list(want.values()), rel=1e-12, abs=1e-12)
            else:  # normalized scores, or (count, mean, std, is_warmed_up)
                assert [float(x) for x in got] == pytest.approx([float(x) for x in want], rel=1e-12, abs=1e-12)
    finally:
        store = StatsStore(None, NORMALIZER_NS)
        for env in store.envs():
            store.reset(env)


def scripts_exist(cluster: RedisCluster, sha: str) -> list[bool]:
    """SCRIPT EXISTS on each master, asked directly."""
    answers = []
    for node in cluster.nodes:
        plain = node.client()
        try:
            answers.append(bool(plain.script_exists(sha)[0]))
        finally:
            plain.close()
    return answers


def test_script_cache_flush_on_every_primary_is_survived(cluster: RedisCluster, client: ClusterClient,
                                                         namespace: str) -> None:
    envs = envs_per_master(cluster, client, "flush", 1)
    store = StatsStore(cluster.url, namespace, cluster=True, **evalsha_only())
    norms = [SharedRewardNormalizer(env, store, warmup=0) for env in envs]
    try:
        for norm in norms:
            norm.normalize([1.0, 2.0, 3.0])
        assert scripts_exist(cluster, merge_sha()) == [True] * len(cluster.nodes)

        client.execute_command("SCRIPT FLUSH", target_nodes=ClusterClient.ALL_NODES)
        assert scripts_exist(cluster, merge_sha()) == [False] * len(cluster.nodes)
        for norm in norms:  # NOSCRIPT on every master: the store gets the script back onto each
            norm.normalize([4.0, 5.0])
            assert norm.count == 5 and norm.mean == 3.0
        assert scripts_exist(cluster, merge_sha()) == [True] * len(cluster.nodes)

        client.execute_command("SCRIPT FLUSH", target_nodes=ClusterClient.ALL_NODES)
        fresh = StatsStore(cluster.url, namespace, cluster=True, **evalsha_only())
        try:
            for env in envs:  # a store that never loaded the scripts, on an empty cache
                assert fresh.update(env, [6.0]).count == 6
            assert fresh.aggregate(envs) == RunningStats.from_values([1.0, 2.0, 3.0, 4.0, 5.0, 6.0] * len(envs))
        finally:
            fresh.client.close()
    finally:
        store.client.close()


# --------------------------------------------------------------------------------------------
# asyncio
# --------------------------------------------------------------------------------------------


def server_counter(cluster: RedisCluster, section: str, field: str, stat: str) -> int:
    """A counter from ``INFO <section>`` summed over every master (0 if absent)."""
    total = 0
    for node in cluster.nodes:
        plain = node.client()
        try:
            total += int(plain.info(section).get(field, {}).get(stat, 0))
        finally:
            plain.close()
    return total


def moved_replies(cluster: RedisCluster) -> int:
    """MOVED redirections the masters have answered so far."""
    return server_counter(cluster, "errorstats", "errorstat_MOVED", "count")


async def async_concurrent(url: str, namespace: str, jobs: list[tuple[str, list[float]]]) -> dict[str, Any]:
    """Every job at once, alternating between a store made from a URL and one made from a
    ``redis.asyncio.cluster.RedisCluster``; then every read, and export/restore."""
    by_url = AsyncStatsStore(url, namespace, cluster=True)
    by_client = AsyncStatsStore(AsyncClusterClient.from_url(url), namespace)
    try:
        envs = sorted({env for env, _ in jobs})
        norms = [{env: AsyncSharedRewardNormalizer(env, store, warmup=0) for env in envs}
                 for store in (by_url, by_client)]
        outs = await asyncio.gather(*(norms[i % 2][env].normalize(values) for i, (env, values) in enumerate(jobs)))
        copy = AsyncStatsStore(by_url.client, namespace + "-copy")
        snapshot = json.loads(json.dumps(await by_url.export()))
        return {
            "outs": outs,
            "get_many": await by_client.get_many(envs),
            "envs": await by_url.envs(),
            "all": await by_url.all(),
            "aggregate": await by_client.aggregate(),
            "metrics": await by_url.metrics(),
            "restored": await copy.restore(snapshot),
            "copied": await copy.all(),
            "duplicates": by_url.duplicates + by_client.duplicates,
        }
    finally:
        await by_url.client.aclose()
        await by_client.client.aclose()


def test_async_concurrent_coroutines_merge_exactly(cluster: RedisCluster, client: ClusterClient,
                                                   namespace: str) -> None:
    envs = envs_per_master(cluster, client, "async", 2)
    rng = random.Random(21)
    jobs = [(rng.choice(envs), [rng.gauss(7.0, 2.0) for _ in range(rng.randint(1, 40))]) for _ in range(300)]
    result = asyncio.run(async_concurrent(cluster.url, namespace, jobs))

    assert [len(out) for out in result["outs"]] == [len(values) for _, values in jobs]
    assert result["duplicates"] == 0
    sent = {env: [v for name, values in jobs if name == env for v in values] for env in envs}
    assert sorted(result["get_many"]) == sorted(envs)
    for env in envs:
        assert_exact(result["get_many"][env], sent[env])
    assert result["envs"] == sorted(envs)
    assert result["all"] == result["get_many"] == result["restored"] == result["copied"]
    assert_exact(result["aggregate"], [v for _, values in jobs for v in values])
    # The envs were normalized through this store, so each also carries its degraded flag (0: healthy).
    assert set(result["metrics"]) == {f"reward_norm/{env}/{stat}" for env in envs for stat in (*STATS, "degraded")}
    assert all(result["metrics"][f"reward_norm/{env}/degraded"] == 0.0 for env in envs)
    for env in envs:
        assert result["metrics"][f"reward_norm/{env}/count"] == float(len(sent[env]))


async def async_script_flush(cluster: RedisCluster, namespace: str, envs: list[str]) -> list[Any]:
    store = AsyncStatsStore(cluster.url, namespace, cluster=True, **evalsha_only())
    try:
        norms = [AsyncSharedRewardNormalizer(env, store, warmup=0) for env in envs]
        for norm in norms:
            await norm.normalize([1.0, 2.0, 3.0])
        loaded = scripts_exist(cluster, merge_sha())
        await store.client.execute_command("SCRIPT FLUSH", target_nodes=AsyncClusterClient.ALL_NODES)
        flushed = scripts_exist(cluster, merge_sha())
        counts = []
        for norm in norms:  # one by one: NOSCRIPT on each master in turn
            await norm.normalize([4.0, 5.0])
            counts.append((norm.count, norm.mean))
        reloaded = scripts_exist(cluster, merge_sha())

        # Again, but now every master answers NOSCRIPT to many concurrent calls at once.
        await store.client.execute_command("SCRIPT FLUSH", target_nodes=AsyncClusterClient.ALL_NODES)
        outs = await asyncio.gather(*(norms[i % len(norms)].normalize([float(i), 1.0]) for i in range(150)),
                                    return_exceptions=True)
        errors = [out for out in outs if isinstance(out, BaseException)]
        return [loaded, flushed, counts, reloaded, errors, scripts_exist(cluster, merge_sha()),
                await store.get_many(envs)]
    finally:
        await store.client.aclose()


def test_async_script_cache_flush_on_every_primary_is_survived(cluster: RedisCluster, client: ClusterClient,
                                                               namespace: str) -> None:
    envs = envs_per_master(cluster, client, "aflush", 1)
    loaded, flushed, counts, reloaded, errors, reloaded_again, found = asyncio.run(
        async_script_flush(cluster, namespace, envs))
    masters = len(cluster.nodes)
    assert (loaded, flushed, reloaded) == ([True] * masters, [False] * masters, [True] * masters)
    assert counts == [(5, 3.0)] * len(envs)
    assert errors == [] and reloaded_again == [True] * masters
    for index, env in enumerate(envs):
        burst = [v for i in range(150) if i % len(envs) == index for v in (float(i), 1.0)]
        assert_exact(found[env], [1.0, 2.0, 3.0, 4.0, 5.0, *burst])


async def async_burst(url: str, namespace: str, batches: list[tuple[str, list[float]]], *,
                      warm: bool, auto: bool = False) -> dict[str, Any]:
    """All ``batches`` at once through one fresh ``AsyncStatsStore(url, cluster=True)``: EVALSHA
    only, or (``auto``) the default mode, which tries FCALL first and falls back to EVALSHA when
    the cluster has no Function library; ``warm``: one call first, so the burst meets a store
    that has settled its mode and loaded the script."""
    store = AsyncStatsStore(url, namespace, cluster=True, **({} if auto else evalsha_only()))
    try:
        envs = sorted({env for env, _ in batches})
        norms = {env: AsyncSharedRewardNormalizer(env, store, warmup=0) for env in envs}
        if warm:
            await store.update("warm-up", [0.0])
        outs = await asyncio.gather(*(norms[env].normalize(values) for env, values in batches),
                                    return_exceptions=True)
        return {"errors": Counter(type(o).__name__ for o in outs if isinstance(o, BaseException)),
                "stats": await store.get_many(envs), "retries": store.retries, "duplicates": store.duplicates}
    finally:
        await store.client.aclose()


def assert_burst_merged(result: dict[str, Any], batches: list[tuple[str, list[float]]]) -> None:
    assert not result["errors"], result["errors"]
    for env, stats in result["stats"].items():
        assert_exact(stats, [v for name, values in batches if name == env for v in values])


def test_async_cold_cluster_client_burst_is_routed_by_key(cluster: RedisCluster, client: ClusterClient,
                                                          namespace: str) -> None:
    """A burst on a fresh store: redis-py's asyncio cluster client routes keyed commands sent before
    it has read the slot map to random nodes, and after every 5 MOVED replies closes all its
    connections under the other coroutines (AttributeError: 'NoneType' object has no attribute
    'writelines'). The store initializes a cluster client before its first request."""
    envs = envs_per_master(cluster, client, "cold", 2)
    rng = random.Random(8)
    batches = [(rng.choice(envs), [rng.gauss(2.0, 1.0) for _ in range(4)]) for _ in range(300)]
    moved_before = moved_replies(cluster)
    result = asyncio.run(async_burst(cluster.url, namespace, batches, warm=False))
    moved = moved_replies(cluster) - moved_before
    assert moved == 0, f"{moved} MOVED replies to a burst of {len(batches)} on a stable cluster; {result['errors']}"
    assert_burst_merged(result, batches)


@pytest.mark.parametrize("mode", ["evalsha", "auto"])
def test_async_burst_into_one_env_waits_for_connections(cluster: RedisCluster, namespace: str, mode: str) -> None:
    """Thousands of batches in flight into one env: an asyncio cluster client has no blocking pool
    (MaxConnectionsError past 100 connections per node); retrying that after a backoff reordered
    one store's batches past the 1024-batch window (StaleBatchError). Requests must wait instead.
    In auto mode the burst also meets the fallback from FCALL to EVALSHA, whose re-sends must not
    fall behind either."""
    rng = random.Random(5)
    batches = [("burst", [rng.gauss(1.0, 1.0) for _ in range(4)]) for _ in range(3000)]
    result = asyncio.run(async_burst(cluster.url, namespace, batches, warm=mode == "evalsha", auto=mode == "auto"))
    # Pool exhaustion is no network failure: nothing should need a retry, nothing may be lost.
    assert (result["retries"], result["errors"]) == (0, Counter()), (result["retries"], result["errors"])
    assert_burst_merged(result, batches)


def test_async_identical_concurrent_batches_are_all_counted(cluster: RedisCluster, namespace: str) -> None:
    """Identical summaries merged concurrently (common with discrete rewards) are separate batches:
    an in-flight merge must not be taken for the retry of another."""
    batches = [("binary", [1.0, 0.0, 1.0, 1.0])] * 100
    result = asyncio.run(async_burst(cluster.url, namespace, batches, warm=True))
    assert result["stats"]["binary"].count == 400, (result["stats"]["binary"], result["duplicates"])
    assert_burst_merged(result, batches)


# --------------------------------------------------------------------------------------------
# Redis Functions on a cluster
# --------------------------------------------------------------------------------------------


@pytest.fixture
def functions_loaded(cluster: RedisCluster) -> Iterator[str]:
    """The Function library loaded on every master by ``StatsStore.load_functions()`` (and
    flushed afterwards, so the other tests see a cluster without it); yields what it returned."""
    if not hasattr(StatsStore, "load_functions"):
        pytest.skip("this version of the package has no Redis Functions support")
    admin = StatsStore(cluster.url, f"srn-admin-{uuid.uuid4().hex[:8]}", cluster=True)
    try:
        yield admin.load_functions()
    finally:
        admin.client.execute_command("FUNCTION FLUSH", target_nodes=ClusterClient.ALL_NODES)
        admin.client.close()


def test_functions_run_on_every_master(cluster: RedisCluster, client: ClusterClient, namespace: str,
                                       functions_loaded: str) -> None:
    from shared_rewardnorm._redis.scripts import library_name

    for node in cluster.nodes:
        plain = node.client()
        try:
            assert plain.function_list(library=library_name()), f"library missing on {node.port}"
        finally:
            plain.close()
    envs = envs_per_master(cluster, client, "fcall", 1)
    fcalls_before = server_counter(cluster, "commandstats", "cmdstat_fcall", "calls")
    store = StatsStore(cluster.url, namespace, cluster=True, functions=True)
    try:
        for env in envs:
            for values in ([1.0, 2.0], [3.0], [4.0, 5.0, 6.0]):
                store.update(env, values)
        assert store.get_many(envs) == {env: RunningStats.from_values([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) for env in envs}
    finally:
        store.client.close()
    assert server_counter(cluster, "commandstats", "cmdstat_fcall", "calls") - fcalls_before == 3 * len(envs)


def test_load_functions_returns_the_library_name_on_a_cluster(functions_loaded: str) -> None:
    """On a cluster, FUNCTION LOAD answers once per primary; load_functions() still returns the name."""
    from shared_rewardnorm._redis.scripts import library_name

    assert functions_loaded == library_name()


def test_functions_normalize_is_one_round_trip_on_a_cluster(cluster: RedisCluster, namespace: str,
                                                            functions_loaded: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """FCALL has movable keys, so redis-py's cluster client would ask a node COMMAND GETKEYS before
    every FCALL (3 round trips per normalize); the store routes FCALL by the key itself."""
    store = StatsStore(cluster.url, namespace, cluster=True, functions=True)
    try:
        norm = SharedRewardNormalizer("gsm8k", store, warmup=0)
        norm.normalize([1.0])
        sent: Counter[str] = Counter()
        original = redis.connection.AbstractConnection.send_packed_command

        def counting(self: Any, command: Any, check_health: bool = True) -> None:
            packed = b"".join(command) if isinstance(command, list) else command
            sent[packed.split(b"\r\n")[2].decode()] += 1
            return original(self, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
        for i in range(10):
            norm.normalize([1.0, float(i)])
        monkeypatch.undo()
        assert sent == Counter({"FCALL": 10}), sent
    finally:
        store.client.close()


# --------------------------------------------------------------------------------------------
# Decayed statistics, configure and freeze (the newer scripts) on every master
# --------------------------------------------------------------------------------------------


def decay_scenario(store: StatsStore, envs: list[str]) -> None:
    """configure, merges, freeze, unfreeze and a version-2 export/restore on ``envs``, checked
    against the per-sample definition of the decayed statistics."""
    from tests.support.decay_oracle import assert_decayed

    sent: dict[str, list[list[float]]] = {env: [] for env in envs}
    for index, env in enumerate(envs):
        assert store.configure(env, half_life=20 + index) is True
        for round_ in range(30):
            values = batch(index, index, round_)
            store.update(env, values)
            sent[env].append(values)
    frozen = envs[::2]
    for env in frozen:
        assert store.freeze(env) is True
    before = store.get_many(envs)
    for index, env in enumerate(envs):
        values = batch(index, index, 99)
        store.update(env, values)
        if env not in frozen:
            sent[env].append(values)
    for index, env in enumerate(envs):
        info = store.info(env)
        assert info.frozen == (env in frozen)
        assert (info.stats == before[env]) == (env in frozen)
        assert info.merges == len(sent[env])
        assert_decayed(info.decayed, sent[env], 20 + index)
    snapshot = store.export()
    copy = StatsStore(store.client, store.namespace + "-copy")
    copy.restore(snapshot)
    # everything but the identity, which a restore (a deliberate replace) creates anew
    assert {env: replace(copy.info(env), epoch=None, origin=None) for env in envs} == {
        env: replace(store.info(env), epoch=None, origin=None) for env in envs}
    assert all(copy.info(env).origin == "replace" for env in envs)
    for env in frozen:
        assert store.unfreeze(env) is True
        assert store.update(env, [1.0]).count == before[env].count + 1


def test_configure_freeze_and_decay_on_every_master(cluster: RedisCluster, client: ClusterClient,
                                                    namespace: str) -> None:
    envs = envs_per_master(cluster, client, "decay", 2)
    store = StatsStore(cluster.url, namespace, cluster=True, **evalsha_only())
    try:
        decay_scenario(store, envs)
    finally:
        store.client.close()


def test_configure_and_freeze_run_as_functions_on_a_cluster(cluster: RedisCluster, client: ClusterClient,
                                                            namespace: str, functions_loaded: str) -> None:
    envs = envs_per_master(cluster, client, "decay-fn", 1)
    fcalls_before = server_counter(cluster, "commandstats", "cmdstat_fcall", "calls")
    evalshas_before = server_counter(cluster, "commandstats", "cmdstat_evalsha", "calls")
    store = StatsStore(cluster.url, namespace, cluster=True, functions=True)
    try:
        decay_scenario(store, envs)
    finally:
        store.client.close()
    assert server_counter(cluster, "commandstats", "cmdstat_fcall", "calls") > fcalls_before
    assert server_counter(cluster, "commandstats", "cmdstat_evalsha", "calls") == evalshas_before
