"""Property tests (hypothesis).

1. Merging is exact in any arrangement: any split of any sequence of finite values into batches,
   sent by several stores (clients) in any interleaving, gives the statistics of one two-pass
   pass over all the values (embedded store, and the real Redis for fewer examples).
2. Names cannot escape their keys: for arbitrary text as namespace and env name, either the name
   is refused (ValueError/TypeError), or the stats key starts with ``<namespace>:``, its Redis
   Cluster hash tag is exactly the env (as is the batch record key's, so both hash to the same
   slot), and the SCAN pattern of ``envs()`` matches the key literally and never a key of another
   namespace, judged by a transcription of Redis' own glob matcher (``stringmatchlen``).
"""

from __future__ import annotations

import itertools
import math
import unicodedata
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from shared_rewardnorm import RunningStats, StatsStore
from shared_rewardnorm._core.inputs import MAX_NAME_LENGTH
from shared_rewardnorm._core.keys import batch_record_key
from shared_rewardnorm._redis.connection import embedded_server
from tests.support.helpers import drop_namespace

EPS = 2.0**-52

# --- 1. merging in any arrangement ----------------------------------------------------------

finite = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.integers(min_value=-10**6, max_value=10**6),
    # clusters of nearby values far from 0: the hard case for the variance
    st.floats(min_value=-1.0, max_value=1.0).map(lambda x: 999_999.0 + x),
)


@st.composite
def arrangements(draw: Any, max_values: int = 40, max_clients: int = 4) -> dict[str, Any]:
    """Values, a split into batches (empty ones included), an owner (client) per batch, the
    order in which the batches are sent, and whether each goes as values or as a summary."""
    values = draw(st.lists(finite, min_size=1, max_size=max_values))
    cuts = sorted(draw(st.lists(st.integers(0, len(values)), max_size=10)))
    bounds = [0, *cuts, len(values)]
    batches = [values[a:b] for a, b in itertools.pairwise(bounds)]
    clients = draw(st.integers(1, max_clients))
    return {
        "values": values,
        "batches": batches,
        "clients": clients,
        "owners": draw(st.lists(st.integers(0, clients - 1), min_size=len(batches), max_size=len(batches))),
        "order": draw(st.permutations(range(len(batches)))),
        "as_summary": draw(st.lists(st.booleans(), min_size=len(batches), max_size=len(batches))),
    }


def two_pass(values: Sequence[float]) -> tuple[int, float, float, float, float]:
    """count, mean, population variance, min, max of all values in one two-pass pass."""
    floats = [float(v) for v in values]
    count = len(floats)
    mean = math.fsum(floats) / count
    variance = math.fsum((v - mean) ** 2 for v in floats) / count
    return count, mean, variance, min(floats), max(floats)


def assert_same_stats(got: RunningStats, values: Sequence[float], merges: int) -> None:
    count, mean, variance, low, high = two_pass(values)
    assert got.count == count
    assert got.min == low and got.max == high
    assert math.isclose(got.mean, mean, rel_tol=1e-12, abs_tol=1e-9), (got.mean, mean)
    # Rel 1e-10, plus an absolute term for variances small next to the values' magnitude: each
    # merge adds delta**2 * weight, delta being the difference of two rounded means (each off by
    # up to EPS * scale / 2), so the variance may be off by ~ 2 * EPS * scale * std per merge,
    # and by ~ (EPS * scale)**2 when it is 0 (the two-pass reference itself then gives ~1e-20).
    # Found by search: 3,000 random arrangements reach 6% of this bound, and the bound without
    # the std term fails (a relative error of 1.15e-10 at values near 1e6 with std 0.48).
    scale = max(abs(low), abs(high))
    slack = 2 * (merges + 1) * EPS * scale * (math.sqrt(variance) + EPS * scale)
    assert math.isclose(got.variance, variance, rel_tol=1e-10, abs_tol=slack), (got.variance, variance, slack)


def run_arrangement(stores: list[StatsStore], env: str, arrangement: dict[str, Any]) -> RunningStats:
    """Send every batch through its owner's store in the drawn order; return the final stats."""
    for index in arrangement["order"]:
        store = stores[arrangement["owners"][index]]
        batch = arrangement["batches"][index]
        if arrangement["as_summary"][index]:
            store.merge(env, RunningStats.from_values(batch))
        else:
            store.update(env, batch)
    return stores[0].get(env)


def _sub_namespace(base: str) -> str:
    return f"{base}-{uuid.uuid4().hex[:10]}"


@settings(max_examples=150, deadline=None)
@given(arrangement=arrangements())
def test_any_split_and_interleaving_merges_exactly_embedded(arrangement: dict[str, Any]) -> None:
    namespace = _sub_namespace("srn-prop")
    stores = [StatsStore(None, namespace) for _ in range(arrangement["clients"])]
    try:
        got = run_arrangement(stores, "env", arrangement)
        merges = sum(1 for batch in arrangement["batches"] if batch)
        assert_same_stats(got, arrangement["values"], merges)
        assert stores[-1].get("env") == got  # every client sees the same statistics
    finally:
        for store in stores:
            store.client.close()
        client = fakeredis.FakeRedis(server=embedded_server())
        drop_namespace(client, namespace)
        client.close()


@pytest.mark.real_redis
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrangement=arrangements(max_values=30, max_clients=3))
def test_any_split_and_interleaving_merges_exactly_real_redis(real_redis_url: str, namespace: str,
                                                              arrangement: dict[str, Any]) -> None:
    sub = _sub_namespace(namespace)  # the fixture is shared by every example: one namespace each
    stores = [StatsStore(real_redis_url, sub) for _ in range(arrangement["clients"])]
    try:
        got = run_arrangement(stores, "env", arrangement)
        merges = sum(1 for batch in arrangement["batches"] if batch)
        assert_same_stats(got, arrangement["values"], merges)
    finally:
        drop_namespace(stores[0].client, sub)
        for store in stores:
            store.client.close()


def test_tolerance_is_not_vacuous() -> None:
    """The tolerances above still catch a merge that is off by one value."""
    values = [1.0, 2.0, 3.0, 4.0]
    wrong = RunningStats.from_values(values[:-1])
    with pytest.raises(AssertionError):
        assert_same_stats(wrong, values, merges=1)
    nearly = RunningStats.from_values([999_999.0, 999_999.5, 1_000_000.0])
    off = RunningStats(nearly.count, nearly.mean, nearly.m2 * (1 + 1e-6), nearly.min, nearly.max)
    with pytest.raises(AssertionError):
        assert_same_stats(off, [999_999.0, 999_999.5, 1_000_000.0], merges=3)


# --- 2. names cannot escape their keys --------------------------------------------------------


def redis_glob_match(pattern: bytes, string: bytes) -> bool:
    """Redis' ``stringmatchlen`` (util.c, Redis 7.0), case-sensitive, as SCAN MATCH uses it.

    A transcription: ``*`` (runs collapse), ``?``, ``[...]`` with ``^`` negation, ``a-z``
    ranges (either order) and ``\\`` escapes inside, ``\\`` escaping any character outside; an
    unterminated ``[`` treats the rest of the pattern as the set. Bytes compare unsigned, as
    they do for every character but the bounds of a range (which our patterns never contain).
    (SCAN and KEYS skip the matcher for the pattern ``*`` alone, which then matches even the key
    ``""``; ``envs()`` never sends it.)
    """
    return _match(pattern, 0, string, 0)[0]


def _match(p: bytes, pi: int, s: bytes, si: int) -> tuple[bool, bool]:
    """(matched, skip_longer_matches) for ``p[pi:]`` against ``s[si:]``."""
    plen, slen = len(p), len(s)
    while pi < plen and si < slen:
        c = p[pi]
        if c == ord("*"):
            while pi + 1 < plen and p[pi + 1] == ord("*"):
                pi += 1
            if pi + 1 == plen:
                return True, False
            while si < slen:
                matched, skip = _match(p, pi + 1, s, si)
                if matched:
                    return True, False
                if skip:
                    return False, True
                si += 1
            return False, True
        if c == ord("?"):
            si += 1
        elif c == ord("["):
            pi += 1
            negate = pi < plen and p[pi] == ord("^")
            if negate:
                pi += 1
            matched = False
            while True:
                if pi < plen and p[pi] == ord("\\") and plen - pi >= 2:
                    pi += 1
                    if p[pi] == s[si]:
                        matched = True
                elif pi < plen and p[pi] == ord("]"):
                    break
                elif pi >= plen:
                    pi -= 1
                    break
                elif plen - pi >= 3 and p[pi + 1] == ord("-"):
                    start, end = sorted((p[pi], p[pi + 2]))
                    pi += 2
                    if start <= s[si] <= end:
                        matched = True
                elif p[pi] == s[si]:
                    matched = True
                pi += 1
            if negate:
                matched = not matched
            if not matched:
                return False, False
            si += 1
        else:
            if c == ord("\\") and plen - pi >= 2:
                pi += 1
            if p[pi] != s[si]:
                return False, False
            si += 1
        pi += 1
        if si == slen:
            while pi < plen and p[pi] == ord("*"):
                pi += 1
            break
    return pi == plen and si == slen, False


@pytest.mark.parametrize(("pattern", "string", "expected"), [
    (b"**", b"", False),  # stringmatchlen needs a character; SCAN special-cases the pattern "*" alone
    (b"a*", b"a", True), (b"a*b", b"axxb", True), (b"a*b", b"axxbc", False),
    (b"a?c", b"abc", True), (b"a?c", b"ac", False), (b"[abc]", b"b", True), (b"[^abc]", b"b", False),
    (b"[a-c]x", b"bx", True), (b"[c-a]x", b"bx", True), (b"\\*", b"*", True), (b"\\*", b"a", False),
    (b"\\[x\\]", b"[x]", True), (b"[\\]]", b"]", True), (b"a\\", b"a\\", True), (b"ns:{*}", b"ns:{e}", True),
    (b"ns:{*}", b"ns:{e}:batches:0f", False), (b"ns\\*:{*}", b"nsx:{e}", False), (b"ns\\*:{*}", b"ns*:{e}", True),
    (b"[ab", b"a", True), (b"**a", b"xa", True),
])
def test_glob_matcher_follows_redis(pattern: bytes, string: bytes, expected: bool) -> None:
    assert redis_glob_match(pattern, string) is expected


def hash_tag(key: bytes) -> bytes | None:
    """The Redis Cluster hash tag: between the first ``{`` and the next ``}``, if not empty."""
    start = key.find(b"{")
    if start < 0:
        return None
    end = key.find(b"}", start + 1)
    if end < 0 or end == start + 1:
        return None
    return key[start + 1:end]


#: Text that exercises key syntax: braces, glob characters, separators, controls, unicode.
_TRICKY = "{}*?[]\\^-!:/ ab\x00\x01\x1f\x7f\x85\u00e9\u2028\u200b\U0001f600\ud800"
names = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=_TRICKY, max_size=12),
    st.text(alphabet=_TRICKY, min_size=MAX_NAME_LENGTH - 2, max_size=MAX_NAME_LENGTH + 2),
)
client_ids = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)


def _should_be_valid(name: str) -> bool:
    """The documented rule: 1 to 256 characters, no braces, no control characters (C0, DEL, C1),
    no line or paragraph separators, no lone surrogates."""
    return (0 < len(name) <= MAX_NAME_LENGTH and "{" not in name and "}" not in name
            and all(unicodedata.category(c) not in ("Cc", "Zl", "Zp", "Cs") for c in name))


_stores: dict[str, StatsStore] = {}


def store_for(namespace: str) -> StatsStore | None:
    """A store of ``namespace`` on the embedded server, or None if the namespace is refused.
    The embedded client opens no socket; the stores are kept for the module and closed at its end."""
    if namespace not in _stores:
        try:
            _stores[namespace] = StatsStore(None, namespace)
        except (ValueError, TypeError):
            return None
    return _stores[namespace]


@pytest.fixture(scope="module", autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    for store in _stores.values():
        store.client.close()
    _stores.clear()


def envs_pattern(store: StatsStore) -> bytes:
    """The SCAN MATCH pattern ``envs()`` sends (the first request of its operation)."""
    operation = store._scan_envs_op()
    request = next(operation)
    operation.close()
    return request.pattern.encode("utf-8")


def envs_found(store: StatsStore, scanned: list[bytes]) -> list[str]:
    """What ``envs()`` makes of a SCAN reply."""
    operation = store._scan_envs_op()
    next(operation)
    try:
        operation.send(scanned)
    except StopIteration as done:
        return done.value
    raise AssertionError("envs() asked for a second request")


@settings(max_examples=400, deadline=None)
@given(namespace=names, env=names, client_id=client_ids, other_env=names, suffix=names)
def test_names_cannot_escape_their_keys(namespace: str, env: str, client_id: str, other_env: str,
                                        suffix: str) -> None:
    store = store_for(namespace)
    assert (store is not None) == _should_be_valid(namespace)
    if store is None:
        return
    try:
        key = store.key(env)
    except (ValueError, TypeError):
        assert not _should_be_valid(env)
        return
    assert _should_be_valid(env)

    assert key.startswith(namespace + ":")
    raw = key.encode("utf-8")
    record = batch_record_key(key, client_id).encode("utf-8")
    assert hash_tag(raw) == env.encode("utf-8")
    assert hash_tag(record) == env.encode("utf-8")
    assert key_slot(raw) == key_slot(record) == key_slot(env.encode("utf-8"))

    pattern = envs_pattern(store)
    assert redis_glob_match(pattern, raw)
    assert not redis_glob_match(pattern, record)
    scanned = [raw, record]
    # Keys of other namespaces: extensions of this one (ns + "x", ns + ":" ...), prefixes, anything.
    others = {namespace + "x", namespace + ":", namespace + suffix, suffix + namespace, namespace[:-1], suffix}
    for other in others:
        other_store = store_for(other)
        if other_store is None or other == namespace:
            continue
        for name in (env, other_env, "x"):
            try:
                other_key = other_store.key(name).encode("utf-8")
            except (ValueError, TypeError):
                continue
            assert not redis_glob_match(pattern, other_key), (pattern, other_key)
            assert not redis_glob_match(pattern, batch_record_key(other_key.decode(), client_id).encode())
            scanned.append(other_key)
    assert envs_found(store, scanned) == [env]


@settings(max_examples=50, deadline=None)
@given(prefix=st.text(max_size=5), surrogate=st.characters(categories=["Cs"]), rest=st.text(max_size=5))
def test_names_that_cannot_be_sent_are_refused_up_front(prefix: str, surrogate: str, rest: str) -> None:
    """A lone surrogate cannot be encoded as UTF-8, so Redis could never be sent the key."""
    name = prefix + surrogate + rest
    with pytest.raises(ValueError):
        StatsStore(None, name)
    store = store_for("srn-prop-surrogates")
    assert store is not None
    with pytest.raises(ValueError):
        store.key(name)


#: Names that pass validation (control characters, braces and surrogates left out).
valid_names = st.text(st.characters(exclude_characters="{}", exclude_categories=["Cc", "Cs", "Zl", "Zp"])
                      | st.sampled_from("*?[]\\^-!: "), min_size=1, max_size=24)


@pytest.mark.real_redis
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=valid_names, env=valid_names)
def test_envs_finds_exactly_its_keys_on_real_redis(real_redis_url: str, namespace: str, suffix: str,
                                                   env: str) -> None:
    """On the real server: ``envs()`` lists the env whatever its name and the namespace's, never a
    key of the extended namespace, and Redis' SCAN MATCH agrees with ``redis_glob_match``."""
    sub = f"{namespace}-{uuid.uuid4().hex[:6]}{suffix}"
    assert _should_be_valid(sub) and _should_be_valid(env)
    store = StatsStore(real_redis_url, sub)
    decoy = StatsStore(store.client, sub + "x")
    created: list[bytes] = []
    try:
        store.update(env, [1.0, 2.0])
        decoy.update(env, [3.0])
        created = [store.key(env).encode(), batch_record_key(store.key(env), store.client_id).encode(),
                   decoy.key(env).encode(), batch_record_key(decoy.key(env), decoy.client_id).encode()]
        assert sorted(created) == sorted(k for k in created if store.client.exists(k))
        assert store.envs() == [env]
        assert decoy.envs() == [env]
        pattern = envs_pattern(store)
        listed = set(store.client.scan_iter(match=pattern, count=1000))
        assert listed == {k for k in created if redis_glob_match(pattern, k)} == {created[0]}
    finally:
        if created:
            store.client.delete(*created)
        store.client.close()


def test_pattern_examples() -> None:
    """Concrete cases of the properties, readable when they fail."""
    for namespace, env in itertools.product(["rewardnorm", "run[1]", "a*b", "x\\y", "q?", ":"],
                                            ["gsm8k", "*", "[a]", "\\", "a:b"]):
        store = store_for(namespace)
        assert store is not None
        key = store.key(env).encode()
        pattern = envs_pattern(store)
        assert redis_glob_match(pattern, key)
        assert hash_tag(key) == env.encode()
        assert not redis_glob_match(pattern, StatsStore.key(store_for(namespace + "x"), env).encode())


# --- the batch record: any arrival order, any resends, each batch merged exactly once ----------


@st.composite
def deliveries(draw: Any) -> list[int]:
    """Sequence numbers 1..n of one client, delivered in a shuffled order with resends, never
    more than 1023 behind the highest delivered so far (what the record can judge)."""
    n = draw(st.integers(1, 60))
    order = draw(st.permutations(list(range(1, n + 1))))
    sent: list[int] = []
    for seq in order:
        sent.append(seq)
        if sent and draw(st.booleans()):
            sent.append(draw(st.sampled_from(sent)))  # a resend of something already sent
    # Big jumps make gaps that stay in the record; keep every number within the window.
    jump = draw(st.sampled_from([0, 0, 500, 950]))
    return [seq + (jump if seq > n // 2 else 0) for seq in sent]


@settings(max_examples=200, deadline=None)
@given(sent=deliveries())
def test_each_batch_is_merged_once_in_any_order(sent: list[int]) -> None:
    from shared_rewardnorm._core.protocol import decode_reply, encode_stats
    from shared_rewardnorm._redis.scripts import script_source

    client = fakeredis.FakeRedis(server=embedded_server())
    namespace = _sub_namespace("record")
    key = f"{namespace}:{{env}}"
    record = batch_record_key(key, "client")
    one = encode_stats(RunningStats.from_values([1.0]))
    seen: set[int] = set()
    try:
        for seq in sent:
            _, merged = decode_reply(client.eval(script_source("merge"), 2, key, record, one, str(seq), "60"))
            assert merged == (seq not in seen), f"batch {seq} after {sorted(seen)}"
            seen.add(seq)
        assert int(client.hget(key, "count")) == len(seen)
    finally:
        drop_namespace(client, namespace)
