"""SharedRewardNormalizer: parity with the reference's behaviour, one round trip per call,
shared warmup, properties without network, and reference-format checkpoints."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest

from shared_rewardnorm import RunningStats, SharedRewardNormalizer, StatsStore
from tests.support.reference_oracle import OracleNormalizer


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def random_batches(seed: int, calls: int = 40) -> list[list[float]]:
    """Batches of varied sizes and scales, including constant ones and GSM8K-like {-1, 1}."""
    rng = random.Random(seed)
    batches = []
    for _ in range(calls):
        size = rng.choice([1, 1, 2, 5, 8, 16, 63, 64, 100, 300])
        kind = rng.random()
        if kind < 0.2:
            batch = [rng.choice([-1.0, 1.0]) for _ in range(size)]
        elif kind < 0.3:
            batch = [0.25] * size
        elif kind < 0.4:
            batch = [rng.randint(0, 100) for _ in range(size)]
        else:
            batch = [rng.gauss(rng.uniform(-3, 3), rng.uniform(0.01, 30)) for _ in range(size)]
        batches.append(batch)
    return batches


SETTINGS = [
    {"mode": "zscore"},
    {"mode": "zscore", "clip": 0, "warmup": 0},
    {"mode": "zscore", "clip": 1.5, "warmup": 50},
    {"mode": "zscore", "clip": None, "warmup": 1000},
    {"mode": "minmax"},
    {"mode": "minmax", "clip": 0.7, "warmup": 3},
    {"mode": "minmax", "clip": None, "warmup": 0},
    {"mode": "none"},
    {"mode": "zscore", "eps": 0.5, "warmup": 0},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) for s in SETTINGS])
def test_outputs_match_the_reference(backend: Any, namespace: str, settings: dict) -> None:
    ours = SharedRewardNormalizer("env", backend, namespace=namespace, **settings)
    oracle = OracleNormalizer(**settings)
    for call, batch in enumerate(random_batches(seed=len(str(settings)))):
        expected = oracle.normalize(batch)
        got = ours.normalize(batch)
        assert len(got) == len(expected)
        bad = [i for i, (a, b) in enumerate(zip(got, expected)) if not close(a, b)]
        assert not bad, f"call {call}: position {bad[0]}: ours {got[bad[0]]} reference {expected[bad[0]]}"
        if settings["mode"] != "none":
            assert ours.count == oracle.n and close(ours.mean, oracle.mu) and close(ours.std, oracle.std)
        assert ours.is_warmed_up == (oracle.n >= oracle.warmup)
    metrics = ours.metrics_dict()
    assert metrics.keys() == oracle.metrics().keys()
    assert all(close(metrics[k], oracle.metrics()[k]) for k in metrics)


def test_numpy_input_gives_the_same_as_lists(backend: Any, namespace: str) -> None:
    a = SharedRewardNormalizer("a", backend, namespace=namespace, warmup=0)
    b = SharedRewardNormalizer("b", backend, namespace=namespace, warmup=0)
    for batch in random_batches(seed=3, calls=10):
        assert a.normalize(np.array(batch, dtype=np.float64)) == pytest.approx(b.normalize(batch), rel=1e-12,
                                                                                abs=1e-12)


def test_degenerate_spreads(backend: Any, namespace: str) -> None:
    z = SharedRewardNormalizer("z", backend, namespace=namespace, warmup=0)
    assert z.normalize([2.0, 2.0, 2.0]) == [0.0, 0.0, 0.0]
    m = SharedRewardNormalizer("m", backend, namespace=namespace, mode="minmax", warmup=0)
    assert m.normalize([2.0, 2.0]) == [0.5, 0.5]
    assert z.normalize([]) == [] and z.count == 3


def count_commands(client: Any) -> list[str]:
    """Record the command names sent through ``client`` (patches this instance only)."""
    sent: list[str] = []
    original = client.execute_command

    def recording(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]))
        return original(*args, **kwargs)

    client.execute_command = recording
    return sent


def test_each_normalize_is_one_round_trip(backend: Any, namespace: str) -> None:
    norm = SharedRewardNormalizer("env", backend, namespace=namespace, warmup=2)
    norm.normalize([1.0])  # loads the script on first use
    sent = count_commands(norm.store.client)
    for size in (1, 16, 256):
        del sent[:]
        norm.normalize([float(i) for i in range(size)])
        assert sent == ["EVALSHA"]
    del sent[:]
    seen = (norm.count, norm.mean, norm.std, norm.is_warmed_up, norm.mode, norm.clip, norm.warmup, norm.eps)
    assert seen[0] == 1 + 1 + 16 + 256 and seen[3] is True
    assert sent == []  # properties never touch the network
    norm.metrics_dict()
    norm.state_dict()
    assert sent == ["HGETALL", "HGETALL"]


def test_late_replica_is_warm_at_once_and_sees_shared_stats(backend: Any, namespace: str) -> None:
    first = SharedRewardNormalizer("env", backend, namespace=namespace, warmup=10)
    first.normalize([float(i) for i in range(12)])
    late = SharedRewardNormalizer("env", backend, namespace=namespace, warmup=10)
    assert late.count == 0  # nothing read yet: the constructor makes no round trip
    assert late.refresh().count == 12 and late.is_warmed_up
    out = late.normalize([5.5])
    assert late.count == 13
    assert close(out[0], (5.5 - late.mean) / (late.std + 1e-8))
    assert first.count == 12  # a replica's properties show its own latest round trip
    first.refresh()
    assert first.count == 13 and first.mean == late.mean


def test_state_dict_is_the_reference_format_and_round_trips(backend: Any, namespace: str) -> None:
    norm = SharedRewardNormalizer("env", backend, namespace=namespace, mode="minmax", clip=2.0, warmup=3)
    assert norm.state_dict() == {"mode": "minmax", "clip": 2.0, "warmup": 3, "eps": 1e-8,
                                 "accumulator": {"count": 0, "mean": 0.0, "m2": 0.0, "min": math.inf,
                                                 "max": -math.inf}}
    norm.normalize([1.0, 4.0, 2.0])
    state = norm.state_dict()
    oracle = OracleNormalizer()
    oracle.load_state_dict(state)  # the reference can load what we write, and continue
    assert (oracle.mode, oracle.clip, oracle.warmup, oracle.n, oracle.lo, oracle.hi) == ("minmax", 2.0, 3, 3, 1.0, 4.0)
    other = SharedRewardNormalizer("copy", backend, namespace=namespace)
    other.load_state_dict(state)
    assert other.state_dict() == state
    assert (other.mode, other.clip, other.warmup) == ("minmax", 2.0, 3)
    assert other.normalize([3.0]) == pytest.approx(oracle.normalize([3.0]), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("mode", ["zscore", "minmax"])
def test_reference_checkpoint_loads_and_continues_in_parity(backend: Any, namespace: str, mode: str) -> None:
    oracle = OracleNormalizer(mode=mode, clip=3.0, warmup=5)
    batches = random_batches(seed=11, calls=30)
    for batch in batches[:15]:
        oracle.normalize(batch)
    ours = SharedRewardNormalizer("env", backend, namespace=namespace)
    ours.load_state_dict(oracle.state_dict())
    assert ours.count == oracle.n and (ours.mode, ours.clip, ours.warmup) == (mode, 3.0, 5)
    for batch in batches[15:]:
        assert ours.normalize(batch) == pytest.approx(oracle.normalize(batch), rel=1e-9, abs=1e-9)


def test_empty_reference_checkpoint_loads(backend: Any, namespace: str) -> None:
    ours = SharedRewardNormalizer("env", backend, namespace=namespace)
    ours.normalize([1.0, 2.0])
    ours.load_state_dict(OracleNormalizer(warmup=0).state_dict())  # count 0, min inf, max -inf
    assert ours.count == 0 and ours.warmup == 0 and ours.store.get("env") == RunningStats()


@pytest.mark.parametrize(
    ("broken", "error", "match"),
    [
        ({"mode": "median"}, ValueError, "invalid normalization mode 'median'"),
        ({"accumulator": {"count": 2, "mean": 0.0, "m2": -1.0, "min": 0.0, "max": 1.0}}, ValueError,
         "m2 must be >= 0, got -1.0"),
        ({"accumulator": {"count": 2, "mean": math.nan, "m2": 1.0, "min": 0.0, "max": 1.0}}, ValueError,
         "mean must be finite, got nan"),
        ({"accumulator": {"count": 2, "mean": 0.0, "m2": 1.0, "min": 0.0}}, ValueError, "missing max"),
        ({"accumulator": {"count": 2, "mean": 3.0, "m2": 1.0, "min": 0.0, "max": 1.0}}, ValueError,
         r"mean 3.0 lies outside \[min, max\] = \[0.0, 1.0\]"),
        ({"warmup": "ten"}, TypeError, "warmup must be an int, got 'ten'"),
        ({"eps": -1.0}, ValueError, "eps must be a finite number > 0, got -1.0"),
        ({"eps": 0}, ValueError, "eps must be a finite number > 0, got 0"),
    ],
)
def test_bad_checkpoints_change_nothing(backend: Any, namespace: str, broken: dict, error: type[Exception],
                                        match: str) -> None:
    norm = SharedRewardNormalizer("env", backend, namespace=namespace, warmup=4)
    norm.normalize([1.0, 2.0, 3.0])
    state = norm.state_dict() | broken
    with pytest.raises(error, match=match):
        norm.load_state_dict(state)
    assert norm.warmup == 4 and norm.mode == "zscore"
    assert norm.store.get("env").count == 3
    with pytest.raises(ValueError, match="missing"):
        norm.load_state_dict({"mode": "zscore"})


def test_mode_none_passes_through_and_records_nothing(backend: Any, namespace: str) -> None:
    norm = SharedRewardNormalizer("env", backend, namespace=namespace, mode="none")
    assert norm.normalize([1, 2.5, -3]) == [1.0, 2.5, -3.0]
    assert norm.store.get("env").is_empty


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="mode"):
        SharedRewardNormalizer("env", mode="robust")
    with pytest.raises(TypeError, match="warmup"):
        SharedRewardNormalizer("env", warmup=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        SharedRewardNormalizer("env", eps=math.nan)


def test_normalizer_can_share_a_store(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    a = SharedRewardNormalizer("a", store)
    b = SharedRewardNormalizer("b", store)
    a.normalize([1.0])
    b.normalize([1.0, 2.0])
    assert store.get("a").count == 1 and store.get("b").count == 2 and a.store is b.store is store


@pytest.mark.parametrize("eps", [0, 0.0, -1e-8, math.inf, math.nan])
def test_eps_must_be_positive_and_is_checked_before_anything_is_sent(backend: Any, namespace: str,
                                                                      raw_client: Any, eps: float) -> None:
    # With eps=0 a batch of equal scores used to be merged, then divide by zero.
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        SharedRewardNormalizer("env", backend, namespace=namespace, eps=eps, warmup=0)
    assert list(raw_client.scan_iter(match=f"{namespace}:*")) == []


@pytest.mark.parametrize("clip", [0, 0.0, None])
def test_a_clip_of_zero_means_no_clipping_as_in_the_reference(backend: Any, namespace: str,
                                                                        clip: float | None) -> None:
    norm = SharedRewardNormalizer("env", backend, namespace=namespace, clip=clip, warmup=0)
    oracle = OracleNormalizer(clip=clip, warmup=0)
    assert norm.clip is None
    batch = [0.0] * 50 + [1000.0]
    assert norm.normalize(batch) == pytest.approx(oracle.normalize(batch), rel=1e-12)
    assert max(norm.normalize([1e6])) > 5.0


@pytest.mark.parametrize(("setting", "message"), [
    ({"warmup": -5}, r"warmup must be >= 0 .*got -5"),
    ({"clip": -math.inf}, r"clip must be >= 0 .*got -inf"),
    ({"clip": -1.0}, r"clip must be >= 0 \(0 or None disables clipping\), got -1\.0"),
])
def test_negative_warmup_or_clip_is_refused(setting: dict[str, Any], message: str) -> None:
    """The reference quietly read warmup=-5 as 0 and clip=-1 as no clipping."""
    with pytest.raises(ValueError, match=message):
        SharedRewardNormalizer("env", None, **setting)
