"""``PerLoop``: one asyncio normalizer per event loop, for adapters driven by loops they do not own.

An asyncio client belongs to the event loop it first ran in. The Atropos mixin and the TRL
wrapper of an ``async`` reward function are called from whatever loop their host runs (Atropos's
``process`` mode, TRL's background loop, a test's ``asyncio.run``), so each keeps its normalizer
keyed by the running loop and makes a new one when the loop changes. This module is that logic,
written once, including what happens to the normalizer left behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["PerLoop"]


class _Closable(Protocol):
    async def aclose(self) -> None: ...


T = TypeVar("T", bound=_Closable)


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
