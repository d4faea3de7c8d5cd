"""UpdateWorkerSchedule: one call at a time, whoever makes it, and its newest answer for the agent.

The queue's drain calls it to deliver action statuses, the agent's loop calls it as a heartbeat
when nothing else did within the service's interval; every answer is the whole picture (every
assigned action not yet reported complete), so the agent applies only the newest one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from flamenco_deadline_worker.backends.deadline.api import ApiError, DeadlineApi


class Schedule:
    def __init__(self, api: DeadlineApi, ids: dict[str, Any]) -> None:
        self.api = api
        self.ids = ids
        self._lock = asyncio.Lock()
        self._newest: dict[str, Any] | None = None
        self.news = asyncio.Event()  # a new answer, or a conflict, for the agent's loop
        self.conflict: ApiError | None = None  # the service no longer has us STARTED
        self.last_call = 0.0  # monotonic time of the last successful call

    async def call(self, updates: dict[str, dict[str, Any]]) -> dict[str, Any]:
        async with self._lock:
            try:
                answer = await self.api.call("update_worker_schedule", **self.ids, updatedSessionActions=updates)
            except ApiError as exc:
                if exc.code == "ConflictException" and exc.reason == "STATUS_CONFLICT":
                    self.conflict = exc
                    self.news.set()
                raise
            self._newest = answer
            self.last_call = time.monotonic()
            self.news.set()
            return answer

    def take(self) -> dict[str, Any] | None:
        """The newest answer not yet taken."""
        answer, self._newest = self._newest, None
        self.news.clear()
        return answer
