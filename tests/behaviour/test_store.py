"""StatsStore against the embedded store and a real Redis: the same test bodies for both."""

from __future__ import annotations

import math
import random
import re
from typing import Any

import pytest
import redis

from shared_rewardnorm import (
    CorruptStatsError,
    RunningStats,
    SharedRewardNormalizer,
    StatsOverflowError,
    StatsStore,
    WrongTypeError,
)
from shared_rewardnorm._core.protocol import encode_stats
from shared_rewardnorm._core.store_ops import MAX_BATCH_RECORD_TTL
from shared_rewardnorm._redis.scripts import script_source


def test_update_get_set_reset(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    assert store.get("gsm8k") == RunningStats()
    first = store.update("gsm8k", [1.0, -1.0, 1.0])
    assert first.count == 3 and first.min == -1.0 and first.max == 1.0
    second = store.update("gsm8k", [1.0])
    assert second == store.get("gsm8k")
    assert second.count == 4 and math.isclose(second.mean, 0.5) and math.isclose(second.variance, 0.75)
    assert store.update("gsm8k", []) == second  # an empty batch changes nothing
    replaced = store.set("gsm8k", RunningStats(10, 2.0, 5.0, 0.0, 3.0))
    assert replaced == store.get("gsm8k") == RunningStats(10, 2.0, 5.0, 0.0, 3.0)
    store.reset("gsm8k")
    assert store.get("gsm8k") == RunningStats()
    assert store.set("gsm8k", RunningStats()) == RunningStats()


def test_envs_are_independent(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    store.update("a", [1.0, 2.0])
    store.update("b", [100.0])
    assert store.get("a").count == 2 and store.get("b").count == 1
    store.reset("a")
    assert store.get("a").is_empty and store.get("b").count == 1


def test_hash_is_readable_and_exact(backend: Any, namespace: str, raw_client: Any) -> None:
    """What redis-cli HGETALL shows: every field at full precision, plus std."""
    store = StatsStore(backend, namespace)
    values = [0.1, 0.2, 1 / 3, 2.0 / 7.0, 1e-300, 123456789.123456789]
    stats = store.update("precise", values)
    stored = {k.decode(): v.decode() for k, v in raw_client.hgetall(f"{namespace}:{{precise}}").items()}
    assert set(stored) == {"count", "mean", "m2", "min", "max", "std", "merges", "updated_at", "epoch", "origin"}
    assert stored["count"] == "6" and stored["merges"] == "1" and stored["origin"] == "merge"
    local = RunningStats.from_values(values)
    # Floats survive the trip through Lua exactly: the stored text parses to the same double.
    assert float(stored["mean"]) == local.mean == stats.mean
    assert float(stored["m2"]) == local.m2 == stats.m2
    assert float(stored["min"]) == 1e-300 and float(stored["max"]) == 123456789.123456789
    assert math.isclose(float(stored["std"]), local.std, rel_tol=1e-15)


def test_set_round_trips_every_double_exactly(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    rng = random.Random(7)
    for _ in range(50):
        low = rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-20, 20)
        high = low + abs(rng.gauss(0, 1)) * 10 ** rng.randint(-5, 5)
        stats = RunningStats(rng.randint(1, 2**53 - 1), rng.uniform(low, high),
                             rng.random() * 10 ** rng.randint(-30, 30), low, high)
        assert store.set("exact", stats) == stats
        assert store.get("exact") == stats


def test_bad_stats_are_refused_before_writing(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    store.update("env", [1.0])
    with pytest.raises(TypeError):
        store.set("env", {"count": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.merge("env", [1.0])  # type: ignore[arg-type]
    assert store.get("env").count == 1


def script_args_cases() -> list[tuple[str, str]]:
    """A valid stats argument with one field spoiled at a time, and malformed packings."""
    good = encode_stats(RunningStats(2, 1.0, 0.5, 0.5, 1.5)).split(" ")
    cases = [
        ("0", 0, "count"), ("1.5", 0, "count"), ("-1", 0, "count"), ("9007199254740993", 0, "count"),
        ("nan", 1, "mean"), ("inf", 1, "mean"), ("-inf", 2, "m2"), ("1e400", 1, "mean"), ("0x10", 1, "mean"),
        ("", 3, "min"), ("abc", 4, "max"), ("-1", 2, "m2"),
    ]
    result = []
    for text, index, field in cases:
        fields = list(good)
        fields[index] = text
        result.append((" ".join(fields), field))
    result.append((" ".join([good[0], good[1], good[2], "2", "1"]), "min"))
    result += [("1 2 3", "stats"), ("", "stats"), ("2  1 0 1 1", "mean"), ("2 1 0 1 1 7", "max")]
    return result


@pytest.mark.parametrize(
    "operation, argument, field",
    [(operation, argument, field) for operation in ("merge", "replace") for argument, field in script_args_cases()
     if not (operation == "replace" and argument.startswith("0 "))],  # count 0 empties the env on replace
)
def test_scripts_validate_their_own_arguments(raw_client: Any, namespace: str, operation: str,
                                              argument: str, field: str) -> None:
    """What a redis-cli user calling the script directly gets: an error naming key and value."""
    key = f"{namespace}:{{env}}"
    raw_client.hset(key, mapping={"count": "1", "mean": "5", "m2": "0", "min": "5", "max": "5", "std": "0"})
    before = raw_client.hgetall(key)
    with pytest.raises(redis.ResponseError) as info:
        raw_client.eval(script_source(operation), 1, key, argument)
    message = str(info.value)
    assert message.startswith("REWARDNORM_INVALID") and key in message and field in message
    assert raw_client.hgetall(key) == before


#: A valid state argument of replace.lua: "weight wmean wm2 half_life frozen merges updated_at".
GOOD_STATE = "2 1.5 0.5 10 0 3 1700000000000"


def state_args_cases() -> list[tuple[str, str]]:
    """replace.lua's state argument with one thing wrong, and what the error must say."""
    words = GOOD_STATE.split(" ")

    def spoiled(index: int, text: str) -> str:
        return " ".join([*words[:index], text, *words[index + 1:]])

    return [
        (spoiled(3, "0"), 'weight must be 0 without a half_life, got "2"'),  # half_life 0, weight 2
        ("0 0 0.5 0 0 3 1700000000000", 'wm2 must be 0 without a half_life, got "0.5"'),
        (spoiled(4, "2"), 'frozen must be 0 or 1, got "2"'),
        (" ".join(words[:-1]), 'state must be "weight wmean wm2 half_life frozen merges updated_at"'),
        (GOOD_STATE + " 7", "updated_at must be an integer >= 0"),
        ("", 'state must be "weight'),
        (spoiled(0, "-1"), 'weight must be a finite decimal number >= 0, got "-1"'),
        (spoiled(2, "-0.5"), "wm2 must be a finite decimal number >= 0"),
        (spoiled(3, "0x10"), 'half_life must be a positive finite number, got "0x10"'),
        (spoiled(3, "-10"), "half_life must be a positive finite number"),
        (spoiled(1, "nan"), 'wmean must be a finite decimal number, got "nan"'),
        (spoiled(1, "inf"), "wmean must be a finite decimal number"),
        (spoiled(5, "1.5"), "merges must be an integer >= 0"),
        (spoiled(5, "-1"), "merges must be an integer >= 0"),
        (spoiled(6, "9007199254740993"), "updated_at must be an integer >= 0 and < 2\\^53"),
    ]


@pytest.mark.parametrize("state, message", state_args_cases())
def test_replace_validates_its_state_argument(raw_client: Any, namespace: str, state: str, message: str) -> None:
    """A snapshot's state as redis-cli could send it: refused with the key and what is wrong,
    and the stored env stays as it was."""
    key = f"{namespace}:{{env}}"
    raw_client.hset(key, mapping={"count": "1", "mean": "5", "m2": "0", "min": "5", "max": "5", "std": "0",
                                  "half_life": "4", "weight": "1", "wmean": "5", "wm2": "0", "frozen": "1"})
    before = raw_client.hgetall(key)
    with pytest.raises(redis.ResponseError, match=rf"^REWARDNORM_INVALID {re.escape(key)} {message}"):
        raw_client.eval(script_source("replace"), 1, key, "2 1 0 1 1", state)
    assert raw_client.hgetall(key) == before


def test_replace_accepts_the_good_state(raw_client: Any, namespace: str) -> None:
    """The cases above spoil a state that is valid: it is stored as given."""
    key = f"{namespace}:{{env}}"
    reply = raw_client.eval(script_source("replace"), 1, key, "2 1 0 1 1", GOOD_STATE)
    words = reply.split()
    assert words[:-2] == ("2 1 0 1 1 " + GOOD_STATE).encode().split()
    assert words[-1] == b"replace" and words[-2] == raw_client.hget(key, "epoch")  # a new, deliberate identity


@pytest.mark.parametrize("ttl", ["99999999999999999999", str(MAX_BATCH_RECORD_TTL + 1), "0", "1.5", "-1", ""])
def test_merge_validates_the_record_lifetime(raw_client: Any, namespace: str, ttl: str) -> None:
    """The record lifetime is bounded in the script as in Python (``MAX_BATCH_RECORD_TTL``): a
    larger one is refused by the script's own message (not Redis's "out of range"), and nothing
    is written."""
    key, record = f"{namespace}:{{env}}", f"{namespace}:{{env}}:batches:c1"
    raw_client.hset(key, mapping={"count": "1", "mean": "5", "m2": "0", "min": "5", "max": "5"})
    before = raw_client.hgetall(key)
    with pytest.raises(redis.ResponseError, match=rf"^REWARDNORM_INVALID {re.escape(key)} record lifetime must be "
                                                  rf"an integer from 1 to {MAX_BATCH_RECORD_TTL} \(seconds\), got"):
        raw_client.eval(script_source("merge"), 2, key, record, "1 1 0 1 1", "1", ttl)
    assert raw_client.hgetall(key) == before and raw_client.exists(record) == 0


def test_merge_accepts_the_longest_record_lifetime(raw_client: Any, namespace: str) -> None:
    """The script's bound is Python's: ``MAX_BATCH_RECORD_TTL`` itself is accepted."""
    key, record = f"{namespace}:{{env}}", f"{namespace}:{{env}}:batches:c1"
    raw_client.eval(script_source("merge"), 2, key, record, "1 1 0 1 1", "1", str(MAX_BATCH_RECORD_TTL))
    assert MAX_BATCH_RECORD_TTL - 5 <= raw_client.ttl(record) <= MAX_BATCH_RECORD_TTL


@pytest.mark.parametrize("script, arguments, message", [
    ("configure", (), "configure expects 1 key(s) and 1 argument(s), got 1 and 0"),
    ("configure", ("10", "20"), "configure expects 1 key(s) and 1 argument(s), got 1 and 2"),
    ("freeze", (), "freeze expects 1 key(s) and 1 argument(s), got 1 and 0"),
    ("freeze", ("1", "1"), "freeze expects 1 key(s) and 1 argument(s), got 1 and 2"),
    ("freeze", ("01",), 'frozen must be 1 (freeze) or 0 (unfreeze), got "01"'),
    ("freeze", (" 1",), 'frozen must be 1 (freeze) or 0 (unfreeze), got " 1"'),
    ("freeze", ("1.0",), 'frozen must be 1 (freeze) or 0 (unfreeze), got "1.0"'),
    ("configure", ("None",), 'half_life must be a positive finite number or "none", got "None"'),
    ("configure", ("10 ",), 'half_life must be a positive finite number or "none", got "10 "'),
    ("configure", ("-inf",), 'half_life must be a positive finite number or "none", got "-inf"'),
])
def test_configure_and_freeze_validate_their_arguments(raw_client: Any, namespace: str, script: str,
                                                       arguments: tuple[str, ...], message: str) -> None:
    key = f"{namespace}:{{env}}"
    raw_client.hset(key, mapping={"count": "1", "mean": "5", "m2": "0", "min": "5", "max": "5", "std": "0",
                                  "half_life": "4", "weight": "1", "wmean": "5", "wm2": "0"})
    before = raw_client.hgetall(key)
    with pytest.raises(redis.ResponseError, match=f"^REWARDNORM_INVALID .*{re.escape(message)}"):
        raw_client.eval(script_source(script), 1, key, *arguments)
    assert raw_client.hgetall(key) == before


def test_scripts_accept_plain_text_from_redis_cli(raw_client: Any, namespace: str) -> None:
    key = f"{namespace}:{{env}}"
    merged = raw_client.eval(script_source("merge"), 1, key, "4 0.5 3 -1 1").split()
    # totals, decayed (none: zeros), half_life 0, not frozen, 1 merge, updated_at, epoch, origin, merged
    assert merged[:11] == b"4 0.5 3 -1 1 0 0 0 0 0 1".split() and merged[13:] == [b"merge", b"1"]
    assert abs(int(merged[11]) - int(raw_client.hget(key, "updated_at"))) == 0
    assert merged[12] == raw_client.hget(key, "epoch")
    replaced = raw_client.eval(script_source("replace"), 1, key, "2 1 0 1 1").split()
    assert replaced[:12] == b"2 1 0 1 1 0 0 0 0 0 0 0".split() and replaced[13] == b"replace"
    assert int(replaced[12]) > int(merged[12])  # a new identity
    emptied = raw_client.eval(script_source("replace"), 1, key, "0 0 0 0 0").split()
    assert emptied[:12] == b"0 0 0 0 0 0 0 0 0 0 0 0".split() and emptied[13] == b"replace"
    # a reset keeps the hash with its new identity only, so clients can tell it from a loss
    assert set(raw_client.hkeys(key)) == {b"epoch", b"origin"}


def test_scripts_check_their_arity(raw_client: Any, namespace: str) -> None:
    with pytest.raises(redis.ResponseError, match="REWARDNORM_INVALID"):
        raw_client.eval(script_source("merge"), 1, f"{namespace}:{{env}}", "1", "2")
    with pytest.raises(redis.ResponseError, match="REWARDNORM_INVALID"):
        raw_client.eval(script_source("replace"), 0)


@pytest.mark.parametrize(
    "field, text",
    [("count", "abc"), ("count", "2.5"), ("count", "0"), ("mean", "nan"), ("mean", "hello"),
     ("m2", "-3"), ("min", "9"), ("max", "inf")],
)
def test_corrupt_fields_are_refused_and_kept(backend: Any, namespace: str, raw_client: Any,
                                             field: str, text: str) -> None:
    store = StatsStore(backend, namespace)
    store.update("env", [1.0, 2.0, 3.0])
    store.update("other", [1.0])
    key = store.key("env")
    raw_client.hset(key, field, text)
    before = raw_client.hgetall(key)
    norm = SharedRewardNormalizer("env", store)
    for operation in (lambda: store.update("env", [1.0]), lambda: store.get("env"),
                      lambda: store.get_many(["other", "env"]), lambda: store.aggregate(),
                      lambda: norm.normalize([1.0]), lambda: norm.state_dict(), lambda: norm.metrics_dict()):
        with pytest.raises(CorruptStatsError) as info:
            operation()
        assert info.value.key == key
        assert info.value.field == field
        assert key in str(info.value)
    assert raw_client.hgetall(key) == before
    assert store.update("other", [2.0]).count == 2  # other envs keep working


def test_wrong_type_key(backend: Any, namespace: str, raw_client: Any) -> None:
    store = StatsStore(backend, namespace)
    key = store.key("taken")
    raw_client.set(key, "somebody else's string")
    for operation in (lambda: store.update("taken", [1.0]), lambda: store.get("taken"),
                      lambda: store.set("taken", RunningStats(1, 1.0, 0.0, 1.0, 1.0)), lambda: store.reset("taken")):
        with pytest.raises(WrongTypeError) as info:
            operation()
        assert info.value.key == key
    assert raw_client.get(key) == b"somebody else's string"


def test_overflowing_merge_is_refused(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    store.set("big", RunningStats(2, 1e307, 1.5e308, 1e306, 1e307))
    with pytest.raises(StatsOverflowError):
        store.update("big", [-1e308])
    assert store.get("big") == RunningStats(2, 1e307, 1.5e308, 1e306, 1e307)


def test_all_stores_share_one_embedded_server(namespace: str) -> None:
    StatsStore(namespace=namespace).update("env", [1.0, 2.0])
    assert StatsStore(namespace=namespace).get("env").count == 2
    import fakeredis

    from shared_rewardnorm._redis.connection import embedded_server

    fakeredis.FakeRedis(server=embedded_server()).delete(f"{namespace}:{{env}}")


@pytest.mark.parametrize("protocol, decode", [(2, False), (2, True), (3, False), (3, True)])
def test_replies_parse_under_resp2_and_resp3(real_redis_url: str, namespace: str, protocol: int,
                                             decode: bool) -> None:
    client = redis.Redis.from_url(real_redis_url, protocol=protocol, decode_responses=decode)
    try:
        store = StatsStore(client, namespace)
        values = [0.1, 0.7, 1 / 3]
        stats = store.update("env", values)
        assert stats == store.get("env")
        assert stats.mean == RunningStats.from_values(values).mean and stats.count == 3
        assert store.set("env", RunningStats()) == RunningStats()
    finally:
        client.delete(f"{namespace}:{{env}}")
        client.close()


def test_script_reloads_after_script_flush(real_client: redis.Redis, namespace: str) -> None:
    """After SCRIPT FLUSH (as after a restart or a failover) the next call reloads and succeeds."""
    store = StatsStore(real_client, namespace, functions=False)
    store.update("env", [1.0])
    sha = store._scripts.script("merge").sha
    assert real_client.script_exists(sha) == [True]
    real_client.script_flush()
    assert real_client.script_exists(sha) == [False]
    assert store.update("env", [2.0]).count == 2
    assert real_client.script_exists(sha) == [True]


def test_store_accepts_urls(real_redis_url: str, namespace: str) -> None:
    store = StatsStore(real_redis_url, namespace)
    try:
        assert store.update("env", [1.0, 3.0]).mean == 2.0
    finally:
        store.reset("env")
        store.client.close()


def test_set_and_reset_repair_a_corrupt_hash(backend: Any, namespace: str, raw_client: Any) -> None:
    """Merges and reads refuse a corrupt hash; an explicit replacement is how it is repaired."""
    store = StatsStore(backend, namespace)
    store.update("env", [1.0, 2.0])
    raw_client.hset(store.key("env"), "m2", "-3")
    with pytest.raises(CorruptStatsError):
        store.get("env")
    assert store.set("env", RunningStats(2, 1.5, 0.5, 1.0, 2.0)) == store.get("env")
    raw_client.hset(store.key("env"), "mean", "oops")
    store.reset("env")
    assert store.get("env").is_empty


def test_an_env_named_like_a_command_cannot_confuse_error_handling(backend: Any, namespace: str,
                                                                    raw_client: Any) -> None:
    """A corrupt hash whose key contains "fcall" or "Function not found" is still reported as
    corrupt (no fallback loop, no wrong exception)."""
    for env in ("fcall", "Function not found", "'fcall' command"):
        store = StatsStore(backend, namespace)  # auto mode: FCALL first, then EVALSHA
        raw_client.hset(store.key(env), mapping={"count": "2", "mean": "x", "m2": "0", "min": "0", "max": "1"})
        with pytest.raises(CorruptStatsError):
            store.update(env, [1.0])


def test_cluster_failover_errors_are_retried(namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CLUSTERDOWN and TRYAGAIN (ResponseErrors in redis-py) are transient: sent again."""
    from redis.exceptions import ClusterDownError, TryAgainError

    from shared_rewardnorm import RetryPolicy

    store = StatsStore(None, namespace, functions=False, retry=RetryPolicy(attempts=5, base=0.001, cap=0.001))
    client = store._scripts._client
    real_evalsha = client.evalsha
    failures = [ClusterDownError("CLUSTERDOWN The cluster is down"), TryAgainError("TRYAGAIN")]

    def flaky_evalsha(*args: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return real_evalsha(*args)

    monkeypatch.setattr(client, "evalsha", flaky_evalsha)
    assert store.update("env", [1.0, 2.0]).count == 2
    assert store.retries == 2
    store.reset("env")
