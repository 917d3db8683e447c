"""examples/advantage_algebra.py: the numbers docs/user/training.md quotes, checked against the
algebra they illustrate (on the embedded store and a real Redis)."""

from __future__ import annotations

import pytest
import redis

from tests.support.integrations import import_example


def test_the_algebra_of_shared_normalization(url: str | None, namespace: str) -> None:
    # The test's namespace: the fixture deletes every key of it afterwards (batch records too).
    r = import_example("advantage_algebra").measure(seed=0, redis_url=url, namespace=namespace)
    if url is not None:  # its keys (batch records too) are the test's, so the fixture deletes them all
        client = redis.Redis.from_url(url)
        assert {key.split(b":")[1] for key in client.scan_iter(match=f"{namespace}:*", count=1000)} == {
            b"{length}", b"{correct}", b"{length-clip1}"}
        client.close()
    # Per-group standardization cancels the affine map, except TRL's + 1e-4 (scaled by the env's std).
    assert r["group: max |A_norm - A_raw|, length env"] < 5e-3
    assert r["group: max |A_norm - A_raw|, 0/1 env"] < 5e-3
    # Clipping is not affine.
    assert r["group, clip=1: max |A_norm - A_raw|"] > 0.5
    # Without scaling, advantages shrink by about the env's running std.
    assert r["none: A_norm / A_raw (median), length env"] == pytest.approx(r["1 / shared std of the length env"],
                                                                            rel=0.1)
    assert r["rloo: mean |A|, normalized length env"] < r["rloo: mean |A|, raw length env"] / 5
    # Summed rewards of different scales: normalization rebalances them.
    assert r["two rewards summed, raw: share of |A| from length"] > 0.9
    assert 0.2 < r["two rewards summed, normalized: share of |A| from length"] < 0.8
    # A batch mixing envs: per-group std already balances them; a batch std or RLOO does not.
    assert r["mixed batch, group, raw: share of |A| from length"] == pytest.approx(
        r["mixed batch, group, normalized: share of |A| from length"], abs=1e-3)
    for estimator in ("batch", "rloo"):
        assert r[f"mixed batch, {estimator}, raw: share of |A| from length"] > 0.9
        assert r[f"mixed batch, {estimator}, normalized: share of |A| from length"] < 0.8
