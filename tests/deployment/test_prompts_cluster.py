"""PromptStats on a real three-master Redis Cluster: every key of an env's prompt set sits in the
env's slot (so each call is one atomic script on one node), envs spread over the masters, the
statistics equal the definition, and whole-set reads, forget and the asyncio twin work there."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster as ClusterClient

from shared_rewardnorm import AsyncPromptStats, PromptStats
from tests.support.helpers import unavailable
from tests.support.prompt_oracle import DefinitionOracle, assert_matches
from tests.support.redis_cluster import RedisCluster, cluster_tools_missing

pytestmark = [pytest.mark.own_server, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    reason = cluster_tools_missing()
    if reason:
        unavailable(reason)
    with RedisCluster(masters=3) as started:
        yield started


def test_prompt_sets_live_in_their_envs_slot_and_count_exactly(cluster: RedisCluster, namespace: str) -> None:
    client = ClusterClient.from_url(cluster.url)
    envs = [f"env-{index}" for index in range(6)]
    rng = random.Random(4)
    oracles = {env: DefinitionOracle(0.9) for env in envs}
    sets = {env: PromptStats(env, cluster.url, namespace=namespace, cluster=True) for env in envs}
    for prompts in sets.values():
        prompts.configure(decay=0.9, buckets=64)
    for _ in range(60):
        env = rng.choice(envs)
        ids = [f"p{rng.randrange(50)}" for _ in range(rng.randint(1, 20))]
        values = [1e6 + rng.random() for _ in ids]
        sets[env].update(ids, values, batch_id=rng.getrandbits(60))
        oracles[env].call(ids, values)
    nodes = set()
    for env, prompts in sets.items():
        keys = list(client.scan_iter(match=f"{namespace}:{{{env}}}*", count=1000))
        slots = {client.keyslot(key) for key in keys}
        assert len(slots) == 1, (env, slots)
        nodes.add(client.get_node_from_key(keys[0]).port)
        oracle = oracles[env]
        for prompt_id, info in zip(oracle.visits, prompts.get(list(oracle.visits)), strict=True):
            assert_matches(info, oracle.expected(prompt_id))
        assert len(dict(prompts.items(chunk=16))) == len(oracle.visits)
    assert len(nodes) > 1  # the envs spread over the masters
    for prompts in sets.values():
        prompts.forget()
        prompts.close()
    client.close()


def test_the_asyncio_twin_on_the_cluster(cluster: RedisCluster, namespace: str) -> None:
    async def run() -> int:
        async with AsyncPromptStats("async-env", cluster.url, namespace=namespace, cluster=True) as prompts:
            await asyncio.gather(*(prompts.update([f"p{i % 5}", "all"], [1.0, 0.0]) for i in range(20)))
            info = (await prompts.get(["all"]))[0]
            assert info is not None
            await prompts.forget()
            return info.count

    assert asyncio.run(run()) == 20


def test_a_lost_set_is_healed_on_the_cluster(cluster: RedisCluster, namespace: str) -> None:
    """The heal's marks key sits in the env's slot too: the heal is one script on one node."""
    client = ClusterClient.from_url(cluster.url)
    a = PromptStats("heal-env", cluster.url, namespace=namespace, cluster=True)
    b = PromptStats("heal-env", cluster.url, namespace=namespace, cluster=True)
    a.update(["p1", "p2"], [1.0, 0.0])
    b.update(["p2", "p3"], [1.0, 1.0])
    for key in list(client.scan_iter(match=f"{namespace}:{{heal-env}}*", count=1000)):
        client.delete(key)
    a.update(["p1"], [1.0])
    b.update(["p4"], [0.0])
    assert [(info.visits, info.count) if info else None for info in a.get(["p1", "p2", "p3", "p4"])] == [
        (2, 2), (1, 1), (1, 1), (1, 1)]  # p2 from a's record only: each prompt put back once
    assert (a.healed, b.healed) == (2, 1)
    keys = list(client.scan_iter(match=f"{namespace}:{{heal-env}}*", count=1000))
    assert any(b":healed:" in key for key in keys) and len({client.keyslot(key) for key in keys}) == 1
    a.forget()
    a.close()
    b.close()
    client.close()
