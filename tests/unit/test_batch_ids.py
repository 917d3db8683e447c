"""``GroupIds``: the adapters' batch ids (no server: pure bookkeeping)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from shared_rewardnorm.integrations.batch_ids import GroupIds, digest


def claim(ids: GroupIds, env: str, *parts: object) -> str:
    with ids.claim(env, *parts) as batch_id:
        return batch_id


def test_identical_groups_are_numbered_and_different_groups_differ() -> None:
    ids = GroupIds()
    first, second = claim(ids, "e", ["p"], [1.0]), claim(ids, "e", ["p"], [1.0])
    assert first.endswith(":0") and second.endswith(":1") and first[:-2] == second[:-2]
    assert claim(ids, "e", ["p"], [1.5])[:-2] != first[:-2]  # another score, another digest
    assert claim(ids, "other", ["p"], [1.0]).endswith(":0")  # numbered per env
    assert len(first) <= 256


def test_a_group_whose_block_raised_gets_its_id_again() -> None:
    ids = GroupIds()
    with pytest.raises(ConnectionError), ids.claim("e", "g") as failed:
        raise ConnectionError("reply lost")
    assert claim(ids, "e", "g") == failed  # the retry: the same id, counted at most once
    assert claim(ids, "e", "g") != failed  # after a success, an identical group is a new batch


def test_concurrent_identical_groups_get_distinct_numbers() -> None:
    ids = GroupIds()
    inside = threading.Barrier(4)
    seen: list[str] = []

    def hold() -> None:
        with ids.claim("e", "same") as batch_id:
            seen.append(batch_id)
            inside.wait(10)  # all four hold their claims at once

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(batch_id[-2:] for batch_id in seen) == [":0", ":1", ":2", ":3"]


def test_digests_are_exact_about_numbers_and_read_arrays() -> None:
    assert digest([0.1 + 0.2]) != digest([0.3])  # no rounding: any difference in a score counts
    assert digest(np.array([1.0, 2.0]), np.float32(0.5)) == digest([1.0, 2.0], 0.5)
    assert digest("a", "b") != digest("ab")


def test_forgotten_digests_start_again_from_zero() -> None:
    ids = GroupIds(capacity=2)
    assert claim(ids, "e", "a").endswith(":0") and claim(ids, "e", "a").endswith(":1")
    claim(ids, "e", "b"), claim(ids, "e", "c")  # "a" is now the oldest of three: forgotten
    assert claim(ids, "e", "a").endswith(":0")
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        GroupIds(capacity=0)
