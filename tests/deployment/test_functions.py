"""The Redis 7 Function library: ``load_functions()`` installs it, ``functions=True`` calls it with
FCALL and gives exactly what the EVALSHA scripts give, ``functions=None`` uses it when it is
there and falls back to EVALSHA when not, ``functions=True`` without it fails without writing,
it survives a crash and ``SCRIPT FLUSH``, and the printed library is what ``redis-cli`` loads.

Every test runs its own ``redis-server`` (``tests/support/redis_servers.py``); the shared server on
6379 is never touched.
"""

from __future__ import annotations

import asyncio
import functools
import random
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from shared_rewardnorm import (
    AsyncSharedRewardNormalizer,
    AsyncStatsStore,
    RewardNormError,
    RunningStats,
    SharedRewardNormalizer,
    StatsStore,
)
from shared_rewardnorm._redis.scripts import OPERATIONS, function_library, function_name, library_name
from tests.support import helpers
from tests.support.helpers import require_binaries
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.own_server

AOF_ALWAYS = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]


def batches(seed: int, count: int = 12) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.gauss(-4.0, 2.5) for _ in range(rng.randint(1, 30))] for _ in range(count)]


#: Count, min and max exact; mean and variance against a two-pass fsum reference.
assert_summarizes = functools.partial(helpers.assert_summarizes, variance_abs_tol=1e-300)


def calls(client: redis.Redis, command: str) -> int:
    """Calls of ``command`` so far, those that failed included (INFO commandstats: ``calls``
    counts every executed call, ``rejected_calls`` those refused before running)."""
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0)) + int(stats.get("rejected_calls", 0))


def script_calls(client: redis.Redis) -> int:
    return calls(client, "evalsha") + calls(client, "eval")


def _text(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


def _fields(entry: object) -> dict[object, object]:
    """A FUNCTION LIST entry as a dict: RESP2 sends flat key/value lists, RESP3 maps."""
    pairs = entry.items() if isinstance(entry, dict) else zip(entry[0::2], entry[1::2])  # type: ignore[index]
    return {_text(key): value for key, value in pairs}


def loaded_functions(client: redis.Redis) -> dict[str, set[str]]:
    """Library name -> its function names, as FUNCTION LIST reports them."""
    libraries = {}
    for library in map(_fields, client.function_list()):
        names = {_text(_fields(function)["name"]) for function in library["functions"]}
        libraries[_text(library["library_name"])] = names
    return libraries


def our_library() -> dict[str, set[str]]:
    return {library_name(): {function_name(operation) for operation in OPERATIONS}}


def load(server: RedisServer) -> str:
    store = StatsStore(server.url, "admin")
    try:
        return store.load_functions()
    finally:
        store.client.close()


def test_load_functions_returns_the_library_name(server: RedisServer, inspector: redis.Redis) -> None:
    assert loaded_functions(inspector) == {}
    assert load(server) == library_name()
    assert loaded_functions(inspector) == our_library()
    assert load(server) == library_name()  # REPLACE: loading again is harmless
    assert loaded_functions(inspector) == our_library()


def test_functions_and_scripts_give_exactly_the_same_results(server: RedisServer, inspector: redis.Redis,
                                                             namespace: str) -> None:
    load(server)
    with_functions = StatsStore(server.url, namespace, functions=True)
    with_scripts = StatsStore(server.url, namespace, functions=False)
    try:
        fcalls, script_runs = calls(inspector, "fcall"), script_calls(inspector)
        by_function = SharedRewardNormalizer("fn", with_functions, warmup=20, clip=3.0)
        by_script = SharedRewardNormalizer("ev", with_scripts, warmup=20, clip=3.0)
        sent = batches(1)
        for batch in sent:
            assert by_function.normalize(batch) == by_script.normalize(batch)
            assert by_function.stats == by_script.stats
        assert calls(inspector, "fcall") == fcalls + len(sent)
        # EVALSHA for each batch (plus the EVAL after the first call's NOSCRIPT).
        assert script_calls(inspector) >= script_runs + len(sent)
        assert with_functions._scripts.using_functions and not with_scripts._scripts.using_functions

        # Byte for byte the same hashes (std included), but for the server clock's updated_at
        # and epoch (the two envs' merges were not in the same millisecond), and the same replace.
        by_fn, by_ev = inspector.hgetall(with_functions.key("fn")), inspector.hgetall(with_scripts.key("ev"))
        stamps = [int(hash_.pop(b"updated_at")) for hash_ in (by_fn, by_ev)]
        epochs = [int(hash_.pop(b"epoch")) for hash_ in (by_fn, by_ev)]
        assert epochs[0] < epochs[1]
        assert by_fn == by_ev
        assert 0 <= stamps[1] - stamps[0] < 60_000
        checkpoint = RunningStats.from_values([1.5, -2.0, 8.25])
        assert with_functions.set("fn-set", checkpoint) == with_scripts.set("ev-set", checkpoint) == checkpoint
        set_fn, set_ev = inspector.hgetall(with_functions.key("fn-set")), inspector.hgetall(with_scripts.key("ev-set"))
        assert set_fn.pop(b"epoch") < set_ev.pop(b"epoch")
        assert set_fn == set_ev
        with_functions.reset("fn-set")
        assert with_functions.get("fn-set") == RunningStats()
        assert with_functions.retries == with_scripts.retries == 0
    finally:
        with_functions.client.close()
        with_scripts.client.close()


def test_auto_uses_fcall_when_the_library_is_loaded(server: RedisServer, inspector: redis.Redis,
                                                    namespace: str) -> None:
    load(server)
    store = StatsStore(server.url, namespace)  # functions=None: auto
    try:
        fcalls, script_runs = calls(inspector, "fcall"), script_calls(inspector)
        stats = store.update("env", [1.0, 2.0, 3.0])
        assert stats == RunningStats.from_values([1.0, 2.0, 3.0])
        assert store._scripts.using_functions
        assert calls(inspector, "fcall") == fcalls + 1 and script_calls(inspector) == script_runs
    finally:
        store.client.close()


def test_auto_falls_back_to_evalsha_when_the_library_is_not_loaded(server: RedisServer, inspector: redis.Redis,
                                                                   namespace: str) -> None:
    load(server)
    inspector.function_flush()  # an administrator removed it (or never loaded it)
    store = StatsStore(server.url, namespace)
    try:
        tried = calls(inspector, "fcall")
        first = store.update("env", [1.0, 2.0])
        assert calls(inspector, "fcall") == tried + 1  # it tried FCALL once ("Function not found")
        assert not store._scripts.using_functions
        assert first == RunningStats.from_values([1.0, 2.0])  # the failed FCALL wrote nothing
        fcalls, script_runs = calls(inspector, "fcall"), script_calls(inspector)
        second = store.update("env", [4.0])
        # For good: no FCALL is tried again.
        assert calls(inspector, "fcall") == fcalls and script_calls(inspector) == script_runs + 1
        assert_summarizes(second, [1.0, 2.0, 4.0])
        assert store.duplicates == 0
    finally:
        store.client.close()


def test_functions_true_without_the_library_fails_and_writes_nothing(server: RedisServer, inspector: redis.Redis,
                                                                     namespace: str) -> None:
    store = StatsStore(server.url, namespace, functions=True)
    try:
        for attempt in (lambda: store.update("env", [1.0]),
                        lambda: SharedRewardNormalizer("env", store, warmup=0).normalize([1.0, 2.0]),
                        lambda: store.set("env", RunningStats.from_values([3.0]))):
            with pytest.raises((redis.ResponseError, RewardNormError)) as failure:
                attempt()
            message = str(failure.value)
            # It says what is missing: the Function (Redis says "Function not found").
            assert "function" in message.lower(), message
        assert store._scripts.using_functions  # never falls back: no script loading at all
        assert script_calls(inspector) == 0 and inspector.script_exists(store._scripts.script("merge").sha) == [False]
        assert list(inspector.scan_iter(match=f"{namespace}:*")) == []
        assert store.get("env") == RunningStats()
    finally:
        store.client.close()


def test_functions_survive_a_crash_with_persistence(tmp_path: Path, namespace: str) -> None:
    require_binaries("redis-server")
    with RedisServer(tmp_path, AOF_ALWAYS) as server:
        load(server)
        store = StatsStore(server.url, namespace, functions=True)
        try:
            store.update("env", [1.0, 2.0])
            server.kill()
            server.restart()
            # No load after the restart: the library came back with the data.
            fresh = StatsStore(server.url, namespace, functions=True)
            try:
                assert loaded_functions(fresh.client) == our_library()
                assert_summarizes(fresh.update("env", [3.0]), [1.0, 2.0, 3.0])
            finally:
                fresh.client.close()
            # The store from before the crash reconnects and goes on with FCALL.
            assert_summarizes(store.update("env", [4.0]), [1.0, 2.0, 3.0, 4.0])
            assert store._scripts.using_functions
        finally:
            store.client.close()


def test_functions_survive_script_flush(server: RedisServer, inspector: redis.Redis, namespace: str) -> None:
    load(server)
    store = StatsStore(server.url, namespace, functions=True)
    try:
        store.update("env", [1.0])
        inspector.script_flush()
        refused = int(inspector.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0))
        assert_summarizes(store.update("env", [2.0]), [1.0, 2.0])
        assert loaded_functions(inspector) == our_library()
        assert int(inspector.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0)) == refused
        assert script_calls(inspector) == 0
    finally:
        store.client.close()


def test_the_printed_library_loads_with_redis_cli(server: RedisServer, inspector: redis.Redis, namespace: str,
                                                  tmp_path: Path) -> None:
    require_binaries("redis-cli")
    printed = subprocess.run([sys.executable, "-m", "shared_rewardnorm", "lua", "library"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    assert printed == function_library()
    library_file = tmp_path / "library.lua"
    library_file.write_text(printed, encoding="utf-8")
    for _ in range(2):  # REPLACE: an administrator may paste it again
        with library_file.open("rb") as stdin:
            loaded = subprocess.run(["redis-cli", "-p", str(server.port), "-x", "FUNCTION", "LOAD", "REPLACE"],
                                    stdin=stdin, capture_output=True, text=True, timeout=30, check=False)
        assert loaded.returncode == 0 and loaded.stdout.strip() == library_name(), loaded
    assert loaded_functions(inspector) == our_library()

    store = StatsStore(server.url, namespace, functions=True)
    try:
        fcalls = calls(inspector, "fcall")
        assert store.update("env", [5.0, 7.0]) == RunningStats.from_values([5.0, 7.0])
        assert calls(inspector, "fcall") == fcalls + 1
    finally:
        store.client.close()


def test_async_store_with_functions(server: RedisServer, inspector: redis.Redis, namespace: str) -> None:
    sent = batches(2)

    async def scenario() -> list[list[float]]:
        admin = AsyncStatsStore(server.url, namespace)
        with_functions = AsyncStatsStore(server.url, namespace, functions=True)
        try:
            assert await admin.load_functions() == library_name()
            fcalls = calls(inspector, "fcall")
            norm = AsyncSharedRewardNormalizer("fn", with_functions, warmup=5)
            outputs = [await norm.normalize(batch) for batch in sent]
            assert with_functions._scripts.using_functions
            assert calls(inspector, "fcall") == fcalls + len(sent)
            # Many coroutines at once, each batch merged once.
            results = await asyncio.gather(*(with_functions.update(f"many-{i}", batch)
                                             for i, batch in enumerate(sent)))
            assert results == [RunningStats.from_values(batch) for batch in sent]
        finally:
            await admin.aclose()
            await with_functions.aclose()
        return outputs

    outputs = asyncio.run(scenario())
    # The same batches through the sync store's EVALSHA scripts give the very same outputs.
    with_scripts = StatsStore(server.url, namespace, functions=False)
    try:
        by_script = SharedRewardNormalizer("ev", with_scripts, warmup=5)
        assert [by_script.normalize(batch) for batch in sent] == outputs
        assert with_scripts.get("ev") == StatsStore(inspector, namespace, functions=True).get("fn")
    finally:
        with_scripts.client.close()


def test_async_functions_true_without_the_library_fails(server: RedisServer, inspector: redis.Redis,
                                                        namespace: str) -> None:
    async def scenario() -> None:
        store = AsyncStatsStore(server.url, namespace, functions=True)
        try:
            with pytest.raises((redis.ResponseError, RewardNormError), match=r"(?i)function"):
                await store.update("env", [1.0])
        finally:
            await store.aclose()

    asyncio.run(scenario())
    assert list(inspector.scan_iter(match=f"{namespace}:*")) == []
