"""Session log lines from openjd-sessions' logger into the TaskUpdateQueue, by session id."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading

from openjd.sessions import LOG

from flamenco_deadline_worker.backends.deadline.handover import HandOver
from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue


class LogRouter(logging.Handler):
    """openjd-sessions logs every session's output to one logger; each record names its session."""

    def __init__(self, queue: TaskUpdateQueue) -> None:
        super().__init__(logging.INFO)
        self.queue = queue
        self.routes: dict[str, str] = {}  # session id -> queue task id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._propagate = True
        self._lines: HandOver[tuple[str, str]] = HandOver(self._put)  # logged on openjd's threads

    def install(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._lines.attach()
        LOG.addHandler(self)
        self._propagate = LOG.propagate
        LOG.propagate = False  # session output belongs in the session log, not the agent's

    def uninstall(self) -> None:
        LOG.removeHandler(self)
        LOG.propagate = self._propagate

    def route(self, session_id: str, task_id: str) -> None:
        self.routes[session_id] = task_id

    def forget(self, session_id: str) -> None:
        self.routes.pop(session_id, None)

    def write(self, session_id: str, text: str) -> None:
        """The agent's own words for a session's log (from the event loop)."""
        task_id = self.routes.get(session_id)
        if task_id is not None:
            self.queue.put_log(task_id, text)

    def emit(self, record: logging.LogRecord) -> None:
        task_id = self.routes.get(getattr(record, "session_id", ""))
        if task_id is None or self._loop is None:
            return
        try:
            text = record.getMessage() + "\n"
        except Exception:
            return
        if not self._lines.add((task_id, text)):
            return
        if self.queue.log_buffer_full:
            self._wait_for_room(self._loop)

    def _put(self, lines: list[tuple[str, str]]) -> None:
        for task_id, text in lines:
            self.queue.put_log(task_id, text)

    def _wait_for_room(self, loop: asyncio.AbstractEventLoop) -> None:
        """On openjd's thread that reads the action's output: while the queue cannot take more (a full
        disk, commits falling behind), stop reading, so the process blocks on its pipe (backpressure)."""
        if threading.get_ident() == self._loop_thread:
            return  # never block the event loop itself
        try:
            waiting = asyncio.run_coroutine_threadsafe(self.queue.room(), loop)
        except RuntimeError:
            return
        while True:
            try:
                waiting.result(timeout=1.0)
                return
            except concurrent.futures.TimeoutError:
                if loop.is_closed() or not loop.is_running():
                    waiting.cancel()
                    return
            except Exception:  # cancelled with the agent: stop waiting
                return
