"""``tests.support.drive`` holds the operations it drives to exactly the canned replies: an
operation that asks for more requests, or fewer, than the test expects fails the test."""

from __future__ import annotations

import pytest

from shared_rewardnorm._core.requests import ReadStats, ScanKeys
from shared_rewardnorm._core.store_ops import StoreCore
from tests.support.drive import Driver, drive


def test_a_request_beyond_the_canned_replies_fails() -> None:
    driver = Driver([[b"ns:{a}"]])  # the SCAN's reply, none for the read that follows
    with pytest.raises(AssertionError, match=r"request 2 is beyond the canned replies: ReadMany"):
        driver.run(StoreCore("ns")._all_op())
    assert driver.requests[0] == ScanKeys("ns:{*}")


def test_replies_left_unused_fail() -> None:
    with pytest.raises(AssertionError, match="finished with 1 canned replies unused"):
        drive(StoreCore("ns")._info_op("a"), [{}, {}])


def test_the_requests_and_the_result_come_back() -> None:
    assert drive(StoreCore("ns")._get_op("a"), [{}])[0] == [ReadStats("ns:{a}")]
