"""Time as the core sees it, so the worker loop and the queue can be tested without sleeping."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until ``event`` is set (True) or ``timeout`` seconds pass (False)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        # Not asyncio.wait_for: on Python 3.11 it loses a cancel that lands as the event is set (the
        # drain then slept on through the agent's shutdown).  asyncio.wait lets a cancel through.
        setter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([setter], timeout=max(0.0, timeout))
        finally:
            setter.cancel()
        return event.is_set()


class FakeClock:
    """A clock that moves only when a test calls ``advance``."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return 1_700_000_000.0 + self._now

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, timeout), next(self._order), timer))
        setter = asyncio.ensure_future(event.wait())
        timer.add_done_callback(lambda _: setter.cancel())
        try:
            await asyncio.wait([setter])
        finally:
            setter.cancel()
            timer.cancel()
        return event.is_set()

    @property
    def sleepers(self) -> int:
        """How many waits are pending (for tests that wait for the code under test to settle)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._sleepers)
            if not timer.done():
                timer.set_result(None)
