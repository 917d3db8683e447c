"""Bad scores and bad names are refused with a clear error, before anything is sent."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from shared_rewardnorm import StatsStore
from shared_rewardnorm._core.inputs import coerce_scores, validate_env, validate_namespace


@pytest.mark.parametrize(
    "scores, error, position",
    [
        ([1.0, None, 2.0], TypeError, "scores[1]"),
        ([1.0, 2.0, "3"], TypeError, "scores[2]"),
        ([b"1"], TypeError, "scores[0]"),
        ([0.5, [1.0, 2.0]], TypeError, "scores[1]"),
        ([(1.0,)], TypeError, "scores[0]"),
        ([1.0, math.nan], ValueError, "scores[1]"),
        ([math.inf], ValueError, "scores[0]"),
        ([1, 2, -math.inf], ValueError, "scores[2]"),
        ([1, 10**400], ValueError, "scores[1]"),
        ([object()], TypeError, "scores[0]"),
        ([0.5] * 70 + [math.nan], ValueError, "scores[70]"),
        ([0.5] * 70 + [None], TypeError, "scores[70]"),
        ([1] * 70 + ["x"], TypeError, "scores[70]"),
        (np.array([1.0, np.nan, 3.0]), ValueError, "scores[1]"),
        (np.array([[1.0, 2.0]]), TypeError, "1-d"),
        (np.array(["1.0", "2.0"]), TypeError, "scores[0]"),
        ("1.0", TypeError, "bare str"),
        (b"12", TypeError, "bare bytes"),
        (3.0, TypeError, "float"),
        (None, TypeError, "NoneType"),
    ],
)
def test_bad_scores_name_the_problem(scores: Any, error: type, position: str) -> None:
    with pytest.raises(error) as info:
        coerce_scores(scores)
    assert position in str(info.value)


def test_good_scores_become_plain_floats() -> None:
    values = coerce_scores([1, True, np.float32(0.5), np.int64(3), Fraction(1, 4), np.float64(0.1)])
    assert values == [1.0, 1.0, 0.5, 3.0, 0.25, 0.1]
    assert all(type(v) is float for v in values)
    assert coerce_scores(x / 2 for x in range(3)) == [0.0, 0.5, 1.0]
    array = coerce_scores(np.array([1, 2, 3], dtype=np.int32))
    assert array.dtype == np.float64 and array.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("name", ["", "a{b", "a}b", "tab\there", "nl\n", "del\x7f", "x" * 257, "c1\x85",
                                  "line\u2028sep", "para\u2029sep", "lone\ud800"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        validate_env(name)
    with pytest.raises(ValueError):
        validate_namespace(name)


def test_non_string_names_are_refused() -> None:
    with pytest.raises(TypeError):
        validate_env(b"gsm8k")
    with pytest.raises(TypeError):
        StatsStore(namespace=3)  # type: ignore[arg-type]


def test_good_names_pass() -> None:
    for name in ["gsm8k", "tool-use/v2", "x" * 256, "über:env", "a b"]:
        assert validate_env(name) == name


def test_bad_redis_argument() -> None:
    with pytest.raises(TypeError, match="redis must be"):
        StatsStore(redis=42)
    with pytest.raises(ValueError, match="redis URL"):
        StatsStore(redis="localhost:6379")
