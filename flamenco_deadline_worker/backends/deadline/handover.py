"""Items produced on other threads (log records of openjd's threads, of boto3's) handed to the event
loop in order, with one wake-up of the loop for a burst of them rather than one per item."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class HandOver(Generic[T]):
    def __init__(self, take: Callable[[list[T]], None]) -> None:
        self._take = take  # called on the event loop with the items gathered since the last call
        self._loop: asyncio.AbstractEventLoop | None = None
        self._items: list[T] = []
        self._lock = threading.Lock()

    def attach(self) -> None:
        """From the event loop that takes the items."""
        self._loop = asyncio.get_running_loop()

    def add(self, item: T) -> bool:
        """From any thread; False when no loop takes items (not attached yet, or closed)."""
        loop = self._loop
        if loop is None:
            return False
        with self._lock:
            self._items.append(item)
            wake = len(self._items) == 1
        if wake:
            try:
                loop.call_soon_threadsafe(self.now)
            except RuntimeError:  # the loop is closed: the agent is going away
                return False
        return True

    def now(self) -> None:
        """On the event loop: take what was gathered so far."""
        with self._lock:
            items, self._items = self._items, []
        if items:
            self._take(items)
