"""``PerLoop``: the Atropos mixin's and the TRL wrapper's one normalizer per event loop, and what
happens to the one left behind when the loop changes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shared_rewardnorm.integrations.loops import PerLoop
from shared_rewardnorm.trl import SharedNormRewardFunc


class Closable:
    def __init__(self) -> None:
        self.closed_in: list[asyncio.AbstractEventLoop] = []

    async def aclose(self) -> None:
        self.closed_in.append(asyncio.get_running_loop())


@pytest.fixture
def thread_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in another thread (as TRL runs async reward functions)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def in_loop(loop: asyncio.AbstractEventLoop, work: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(work, loop).result(10)


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


def test_the_async_trl_wrapper_closes_its_normalizer_of_a_loop_still_running(
        thread_loop: asyncio.AbstractEventLoop, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared_rewardnorm.aio import AsyncSharedRewardNormalizer

    closed: list[asyncio.AbstractEventLoop] = []
    original = AsyncSharedRewardNormalizer.aclose

    async def recording(self: AsyncSharedRewardNormalizer) -> None:
        closed.append(asyncio.get_running_loop())
        await original(self)

    monkeypatch.setattr(AsyncSharedRewardNormalizer, "aclose", recording)

    async def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return [float(len(c)) for c in completions]

    wrapped = SharedNormRewardFunc(reward, namespace=namespace, warmup=0)
    in_loop(thread_loop, wrapped(prompts=["p"] * 2, completions=["a", "bb"]))
    first = wrapped.normalizer
    asyncio.run(wrapped(prompts=["p"] * 2, completions=["a", "bbb"]))
    in_loop(thread_loop, asyncio.sleep(0))
    assert wrapped.normalizer is not first and wrapped.normalizer.count == 4 and closed == [thread_loop]
    asyncio.run(wrapped.aclose())
