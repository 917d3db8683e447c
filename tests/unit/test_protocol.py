"""The wire protocol without a server: the stats and state arguments the scripts take, and
stored hashes parsed with the scripts' rules (whatever the client: ``bytes`` or ``str``)."""

from __future__ import annotations

import random
import re

import pytest

from shared_rewardnorm import CorruptStatsError, DecayedStats, EnvInfo, RunningStats
from shared_rewardnorm._core import schema
from shared_rewardnorm._core.protocol import decode_stored, encode_state, encode_stats

KEY = "ns:{e}"
TOTALS = {"count": "3", "mean": "2", "m2": "2", "min": "1", "max": "3"}


def test_the_stats_argument_is_exact_and_fixed_width_for_two_digit_exponents() -> None:
    """Every double comes back exactly from its text, and any summary whose numbers have
    exponents below 100 in magnitude (rewards do) is sent with the same number of bytes."""
    rng = random.Random(3)
    lengths = set()
    for _ in range(500):
        scale = 10.0 ** rng.randint(-80, 80)
        low = rng.uniform(-9.0, 9.0) * scale
        high = low + abs(low) * rng.random()
        stats = RunningStats(rng.randint(1, 2**53 - 1), rng.uniform(low, high), rng.random() * scale, low, high)
        text = encode_stats(stats)
        lengths.add(len(text))
        count, mean, m2, low_text, high_text = text.split(" ")
        assert RunningStats(int(count), float(mean), float(m2), float(low_text), float(high_text)) == stats
    assert lengths == {len(encode_stats(RunningStats()))}
    huge = encode_stats(RunningStats(2, 1e300, 0.0, 1e300, 1e300))  # three-digit exponents: longer, still exact
    assert float(huge.split(" ")[1]) == 1e300


def test_bytes_and_str_hashes_decode_alike() -> None:
    stored = {**TOTALS, "half_life": "4", "weight": "1.5", "wmean": "2.5", "wm2": "0.25", "frozen": "1",
              "merges": "7", "updated_at": "1700000000000", "std": "0.816496580927726"}
    expected = EnvInfo(RunningStats(3, 2.0, 2.0, 1.0, 3.0), DecayedStats(1.5, 2.5, 0.25), 4.0, True, 7, 1700000000000)
    assert decode_stored(KEY, stored) == expected
    assert decode_stored(KEY, {k.encode(): v.encode() for k, v in stored.items()}) == expected


def test_no_totals_is_an_env_without_statistics() -> None:
    assert decode_stored(KEY, {}) == EnvInfo()
    configured = decode_stored(KEY, {"half_life": "10", "weight": "0", "wmean": "0", "wm2": "0", "frozen": "1"})
    assert configured == EnvInfo(RunningStats(), DecayedStats(), 10.0, True)


@pytest.mark.parametrize(("change", "field", "detail"), [
    ({"mean": None}, "mean", "is missing"),
    ({"count": "2.5"}, "count", "is '2.5'"),
    ({"count": "0"}, "count", "is '0'"),
    ({"mean": "0x10"}, "mean", "is '0x10'"),
    ({"mean": "nan"}, "mean", "is 'nan'"),
    ({"max": "1e400"}, "max", "is '1e400'"),
    ({"m2": "-1"}, "m2", "is '-1' (negative)"),
    ({"min": "4"}, "min", "min '4' is greater than max '3'"),
    ({"half_life": "4"}, "weight", "is missing"),
    ({"half_life": "0", "weight": "1", "wmean": "1", "wm2": "0"}, "half_life", "is '0' (not positive)"),
    ({"half_life": "4", "weight": "-1", "wmean": "1", "wm2": "0"}, "weight", "is '-1'"),
    ({"frozen": "yes"}, "frozen", "is 'yes' (not 0 or 1)"),
    ({"merges": "1.5"}, "merges", "is '1.5'"),
    ({"updated_at": "-1"}, "updated_at", "is '-1'"),
])
def test_a_malformed_hash_names_the_key_and_the_first_bad_field(change: dict[str, str | None], field: str,
                                                                detail: str) -> None:
    stored = {name: value for name, value in {**TOTALS, **change}.items() if value is not None}
    with pytest.raises(CorruptStatsError, match=re.escape(detail)) as caught:
        decode_stored(KEY, stored)
    assert (caught.value.key, caught.value.field) == (KEY, field)
    assert KEY in str(caught.value)


def test_the_state_argument_follows_state_fields() -> None:
    """encode_state writes the words in ``STATE_FIELDS`` order, as replace.lua reads them."""
    info = EnvInfo(RunningStats(), DecayedStats(2.0, 1.5, 0.25), 10.0, True, 3, 1700000000000)
    assert dict(zip(schema.STATE_FIELDS, encode_state(info).split(" "), strict=True)) == {
        "weight": "2", "wmean": "1.5", "wm2": "0.25", "half_life": "10", "frozen": "1", "merges": "3",
        "updated_at": "1700000000000"}
    assert encode_state(EnvInfo()) == " ".join(["0"] * len(schema.STATE_FIELDS))
