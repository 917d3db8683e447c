"""Bad scores and bad names on every backend: refused with the error the unit tests check
(tests/unit/test_inputs.py), and nothing stored."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from shared_rewardnorm import SharedRewardNormalizer, StatsStore


@pytest.mark.parametrize(("bad", "error", "match"), [
    ([1.0, None], TypeError, r"scores\[1\] is a NoneType"),
    ([1.0, math.nan], ValueError, r"scores\[1\] = nan is not finite"),
    ("abc", TypeError, "not a bare str"),
    ([[1.0]], TypeError, r"scores\[0\] is a nested list"),
    (np.array([1.0, np.inf]), ValueError, r"scores\[1\] = .*inf.* is not finite"),
])
def test_bad_scores_store_nothing(backend: Any, namespace: str, raw_client: Any, bad: Any,
                                  error: type[Exception], match: str) -> None:
    norm = SharedRewardNormalizer("env", backend, namespace=namespace, warmup=0)
    norm.normalize([1.0, 2.0])
    before = raw_client.hgetall(f"{namespace}:{{env}}")
    with pytest.raises(error, match=match):
        norm.normalize(bad)
    with pytest.raises(error, match=match):
        norm.store.update("env", bad)
    assert raw_client.hgetall(f"{namespace}:{{env}}") == before
    assert norm.count == 2


def test_bad_env_names_in_the_api(backend: Any, namespace: str) -> None:
    store = StatsStore(backend, namespace)
    for name in ["", "a{b}", "x" * 300, "bad\x00"]:
        with pytest.raises(ValueError):
            store.update(name, [1.0])
        with pytest.raises(ValueError):
            SharedRewardNormalizer(name, backend, namespace=namespace)
