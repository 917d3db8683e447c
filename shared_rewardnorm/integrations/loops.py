"""``PerLoop``: one asyncio normalizer per event loop, for adapters driven by loops they do not own;
``LoopThread``: an event loop of the adapter's own, for callers that have none.

An asyncio client belongs to the event loop it first ran in. The Atropos mixin and the TRL
wrapper of an ``async`` reward function are called from whatever loop their host runs (Atropos's
``process`` mode, TRL's background loop, a test's ``asyncio.run``), so each keeps its normalizer
keyed by the running loop and makes a new one when the loop changes. This module is that logic,
written once, including what happens to the normalizer left behind.

OpenRLHF calls a reward function from worker threads (``asyncio.to_thread``), one sample per
call, many at once. Those threads run no loop, and a blocking store per thread would send one
merge per sample; ``LoopThread`` runs one loop in a daemon thread of its own, on which the
threads' calls meet and coalesce.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from shared_rewardnorm.aio import AsyncSharedRewardNormalizer, AsyncStatsStore

__all__ = ["EnvNormalizers", "LoopThread", "PerLoop"]


class _Closable(Protocol):
    async def aclose(self) -> None: ...


T = TypeVar("T", bound=_Closable)
R = TypeVar("R")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class PerLoop(Generic[T]):
    """The object ``make()`` returns, made again whenever the running event loop changes.

    The one left behind is closed in its own loop when that loop is still running (in another
    thread: its ``aclose`` is scheduled there), since only there can its connections be closed
    cleanly. Otherwise it is dropped: its loop has stopped or closed, so its connections cannot
    be used or closed from this one (their sockets close when they are collected), and one made
    outside any loop has opened none.
    """

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def current(self) -> T | None:
        """The latest object made, or ``None`` (nothing made yet, or closed since)."""
        return self._value

    def get(self) -> T:
        """The object for the running loop (``None``: called outside any loop)."""
        loop = _running_loop()
        if self._value is None or self._loop is not loop:
            self._release(self._value, self._loop)
            self._value, self._loop = self._make(), loop
        return self._value

    def _release(self, old: T | None, old_loop: asyncio.AbstractEventLoop | None) -> None:
        if old is None or old_loop is None or old_loop.is_closed() or not old_loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(old.aclose(), old_loop)

    def forget(self) -> None:
        """Drop the object without closing it (a copy of the owner must not share it)."""
        self._value = self._loop = None

    async def aclose(self) -> None:
        """Close the object (inside the loop that used it); the next ``get`` makes a new one."""
        old, old_loop = self._value, self._loop
        self.forget()
        if old is None:
            return
        if old_loop is None or old_loop is _running_loop():
            await old.aclose()
        else:
            self._release(old, old_loop)


class LoopThread(Generic[T]):
    """An event loop in a daemon thread of its own, with one ``make()`` object living in it.

    ``run(lambda obj: obj.method(...))`` runs a coroutine on that loop from any thread (not
    from the loop's own thread) and returns its result; concurrent callers' coroutines run
    concurrently there. The loop starts on first use, and again in a forked child (a thread
    does not survive ``fork``). ``close()`` closes the object in its loop, stops the loop and
    joins the thread, so no thread or connection of ours outlives it; the next ``run`` starts
    afresh.
    """

    def __init__(self, make: Callable[[], T], name: str = "shared-rewardnorm-loop") -> None:
        self._make, self._name = make, name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._value: T | None = None
        self._pid = 0

    def _started(self) -> tuple[asyncio.AbstractEventLoop, T]:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                self._value = self._make()  # made outside the loop: it opens nothing until used there
            assert self._value is not None
            return self._loop, self._value

    def run(self, work: Callable[[T], Coroutine[Any, Any, R]]) -> R:
        loop, value = self._started()
        if self._thread is threading.current_thread():
            raise RuntimeError("LoopThread.run called from its own loop: await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(work(value), loop).result()

    def close(self) -> None:
        with self._lock:
            loop, thread, value, pid = self._loop, self._thread, self._value, self._pid
            self._loop = self._thread = self._value = None
        if loop is None or thread is None or pid != os.getpid():
            return  # nothing started, or started by the parent of this forked process
        try:
            if value is not None:
                asyncio.run_coroutine_threadsafe(value.aclose(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


class EnvNormalizers:
    """What one event loop of an adapter uses when its samples belong to several envs (verl's
    data sources): one coalescing asyncio store, and a normalizer per env on it, made on first
    use with the same ``settings`` (``mode``, ``clip``, ``warmup``, ``eps``, ``statistics``,
    ``on_unavailable``)."""

    def __init__(self, redis: Any, namespace: str, **settings: Any) -> None:
        self.store = AsyncStatsStore(redis, namespace)
        self._settings = settings
        self.normalizers: dict[str, AsyncSharedRewardNormalizer] = {}

    def normalizer(self, env: str) -> AsyncSharedRewardNormalizer:
        norm = self.normalizers.get(env)
        if norm is None:
            norm = self.normalizers[env] = AsyncSharedRewardNormalizer(env, self.store, **self._settings)
        return norm

    async def aclose(self) -> None:
        await self.store.aclose()
