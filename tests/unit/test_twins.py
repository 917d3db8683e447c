"""The sync and asyncio classes are twins: the same public methods and properties, so an
operation added to one and forgotten in the other fails here."""

from __future__ import annotations

import inspect

import pytest

from shared_rewardnorm import AsyncSharedRewardNormalizer, AsyncStatsStore, SharedRewardNormalizer, StatsStore

#: Names that differ by design: closing is ``close`` / ``aclose`` and the context managers.
_CLOSING = {"close", "aclose"}


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")} - _CLOSING


@pytest.mark.parametrize("sync, asynchronous", [(StatsStore, AsyncStatsStore),
                                                (SharedRewardNormalizer, AsyncSharedRewardNormalizer)])
def test_sync_and_asyncio_classes_expose_the_same_names(sync: type, asynchronous: type) -> None:
    assert public(sync) == public(asynchronous)
    for name in public(sync):
        sync_member, async_member = getattr(sync, name), getattr(asynchronous, name)
        if inspect.isfunction(sync_member) and sync_member is not async_member:  # not a shared core method
            assert inspect.iscoroutinefunction(async_member), f"{asynchronous.__name__}.{name} is not async"
            assert list(inspect.signature(sync_member).parameters) == list(
                inspect.signature(async_member).parameters), name
