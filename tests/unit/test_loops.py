"""``PerLoop``: the Atropos mixin's and the TRL wrapper's one normalizer per event loop, and what
happens to the one left behind when the loop changes."""

from __future__ import annotations

import asyncio

from shared_rewardnorm.integrations.loops import PerLoop
from tests.support.helpers import in_loop


class Closable:
    def __init__(self) -> None:
        self.closed_in: list[asyncio.AbstractEventLoop] = []

    async def aclose(self) -> None:
        self.closed_in.append(asyncio.get_running_loop())


def test_the_old_object_is_closed_in_its_loop_when_that_loop_still_runs(
        thread_loop: asyncio.AbstractEventLoop) -> None:
    per_loop: PerLoop[Closable] = PerLoop(Closable)

    async def get() -> Closable:
        return per_loop.get()

    first = in_loop(thread_loop, get())
    assert in_loop(thread_loop, get()) is first  # same loop, same object
    second = asyncio.run(get())
    assert second is not first and per_loop.current is second
    in_loop(thread_loop, asyncio.sleep(0))  # let the scheduled close run
    assert first.closed_in == [thread_loop] and second.closed_in == []


def test_an_object_whose_loop_is_gone_is_dropped_not_used() -> None:
    per_loop: PerLoop[Closable] = PerLoop(Closable)

    async def get() -> Closable:
        return per_loop.get()

    first, second = asyncio.run(get()), asyncio.run(get())
    assert first is not second and first.closed_in == [] and per_loop.current is second


def test_aclose_closes_in_the_running_loop_and_the_next_get_makes_a_new_one() -> None:
    per_loop: PerLoop[Closable] = PerLoop(Closable)

    async def main() -> None:
        first = per_loop.get()
        await per_loop.aclose()
        assert first.closed_in == [asyncio.get_running_loop()] and per_loop.current is None
        assert per_loop.get() is not first
        await per_loop.aclose()

    asyncio.run(main())
