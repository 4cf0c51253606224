"""A virtual-clock event loop: timers fire at their exact time, and no test sleeps real seconds."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["VirtualClockLoop", "run_on_virtual_clock"]

T = TypeVar("T")


class _AutojumpSelector:
    """Wraps a real selector: when the loop would sleep until its next timer, jump the clock instead."""

    def __init__(self, loop: VirtualClockLoop, real: selectors.BaseSelector) -> None:
        self._loop = loop
        self._real = real

    def select(self, timeout: float | None = None) -> list[Any]:
        events = self._real.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:  # nothing scheduled: only another thread can wake us
            return self._real.select(None)
        self._loop.virtual_time += timeout
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer when idle (as trio's autojump_clock).

    Timers fire at exactly their scheduled virtual time, so tests can assert exact
    dispatch times without sleeping.  Only for code that never waits on other threads.
    """

    def __init__(self) -> None:
        self.virtual_time = 1000.0
        super().__init__(selector=_AutojumpSelector(self, selectors.DefaultSelector()))  # type: ignore[arg-type]

    def time(self) -> float:
        return self.virtual_time


def run_on_virtual_clock(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh virtual-clock loop."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
