"""FlamencoWorker: the pull loop.  Signs on, fetches tasks, runs them, follows state changes, signs off.

It never talks to the service about task progress: that goes through the TaskUpdateQueue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from flamenco_deadline_worker.core.backoff import Outage
from flamenco_deadline_worker.core.hooks import NoPresence, Presence
from flamenco_deadline_worker.core.lifecycle import EXIT_OK, live
from flamenco_deadline_worker.core.model import (
    Backend,
    FatalServiceError,
    NotAuthorised,
    Outcome,
    ServiceUnavailable,
    StateChange,
    Task,
    WorkerState,
)
from flamenco_deadline_worker.core.pacing import PermissionPacing, TaskPollPacing

if TYPE_CHECKING:
    # Types only: the composition root hands these in; the core imports no layer above it.
    from flamenco_deadline_worker.config import WorkerConfig
    from flamenco_deadline_worker.runner.runner import TaskRunner
    from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue

log = logging.getLogger(__name__)

EXIT_AUTH_REFUSED = 3
PREVIEW_MIN_INTERVAL = 10.0
FINAL_STATUS_WAIT = 30.0
PREVIEW_TYPES = ("image/png", "image/jpeg")


class NodeChecks(Protocol):
    """Pre-task checks: while ``problems()`` is not empty the worker fetches no task."""

    recheck_seconds: float

    async def problems(self) -> list[str]: ...


class NoChecks:
    recheck_seconds = 30.0

    async def problems(self) -> list[str]:
        return []


class FlamencoWorker:
    def __init__(
        self,
        config: WorkerConfig,
        backend: Backend,
        queue: TaskUpdateQueue,
        runner: TaskRunner,
        *,
        single: bool = False,
    ) -> None:
        self.config = config
        self.backend = backend
        self.queue = queue
        self.runner = runner
        self.single = single
        self.state = WorkerState.STARTING
        self.stop_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._last_preview = 0.0
        self._preview_task: asyncio.Task[None] | None = None
        self.tasks_run = 0
        # State file and systemd notifications (compose.py hands in the real one).
        self.publisher: Presence = NoPresence()
        queue.on_task_gone = self.task_gone
        runner.on_output = self.output_produced
        self.task_pacing = TaskPollPacing(config.task_poll_interval_seconds, config.task_poll_max_interval_seconds)
        # Pre-task checks (ops: node_checks.py), handed in by the composition root.
        self.node_checks: NodeChecks = NoChecks()

    # ---- its life (core/lifecycle.py): start, rounds, drain, flush, sign off ---------------------

    async def run(self) -> int:
        """Run until told to stop (exit 0), or the Manager sends us offline or to restart."""
        return await live(self, self.stop_event, self._flush, self.config.shutdown_flush_seconds)

    async def start(self) -> int | None:
        try:
            await self._start()
        except NotAuthorised as exc:
            log.error("the Manager refused this worker even after registering again: %s", exc)
            return EXIT_AUTH_REFUSED
        if not self.stop_event.is_set():  # stopped before the Manager was reached: no state to report
            await self._enter(self.backend_initial_state())
        return None

    async def abandon_start(self) -> None:
        pass  # nothing to undo: a worker that signed on is timed out by the Manager like any other

    async def step(self) -> int | None:
        if self.state is WorkerState.AWAKE:
            await self._awake_once()
            if self.single and self.tasks_run:
                log.info("--single: one task done, stopping")
                return EXIT_OK
        elif self.state is WorkerState.RESTART:
            log.info("the Manager asked for a restart; exiting with code %d", self.config.restart_exit_code)
            return self.config.restart_exit_code
        elif self.state is WorkerState.OFFLINE:
            log.info("the Manager sent this worker offline; exiting")
            return EXIT_OK
        else:
            await self._asleep_once()
        return None

    async def drain(self) -> None:
        # A running task was aborted when its round was cancelled; its statuses are queued.
        self._wake.set()
        self.publisher.stopping(f"flushing updates and signing off (state {self.state.value})")

    async def _flush(self, seconds: float) -> bool:
        delivered = await self.queue.flush(seconds)
        if not delivered:
            backlog = await self.queue.backlog()
            log.warning(
                "%d update(s) not delivered yet; they stay queued in %s for the next start",
                backlog.count, self.config.task_update_queue_db,
            )
        return delivered

    async def sign_off(self) -> None:
        try:
            await asyncio.wait_for(self.backend.sign_off(), 10)
            log.info("signed off")
        except (ServiceUnavailable, NotAuthorised, FatalServiceError, asyncio.TimeoutError) as exc:
            log.warning("could not sign off (%s); the Manager will time this worker out", exc)

    def backend_initial_state(self) -> WorkerState:
        return getattr(self.backend, "initial_state", WorkerState.AWAKE)

    async def _start(self) -> None:
        outage = Outage("signing on to the Manager", time.monotonic)
        while not self.stop_event.is_set():
            try:
                await self.backend.start()
                outage.succeeded()
                self.publisher.signed_on(str(getattr(self.backend, "worker_id", "")))
                return
            except (ServiceUnavailable, FatalServiceError) as exc:
                self.publisher.waiting(f"signing on: {exc}")
                await self._pause(outage.failed(exc))

    # ---- states ------------------------------------------------------------------------------

    async def _enter(self, state: WorkerState) -> None:
        if state is not self.state:
            log.info("worker state: %s -> %s", self.state.value, state.value)
        self.state = state
        self.publisher.state(state.value)
        outage = Outage(f"acknowledging state {state.value}", time.monotonic)
        for _ in range(5):
            try:
                await self.backend.state_changed(state)
                outage.succeeded()
                return
            except (ServiceUnavailable, FatalServiceError, NotAuthorised) as exc:
                await self._pause(outage.failed(exc))
        log.warning("could not tell the Manager about state %s; carrying on", state.value)

    async def _asleep_once(self) -> None:
        await self._pause(self.config.asleep_poll_interval_seconds)
        try:
            wanted = await self.backend.requested_state()
        except (ServiceUnavailable, FatalServiceError, NotAuthorised) as exc:
            log.debug("state poll failed: %s", exc)
            return
        if wanted is not None and wanted is not self.state:
            await self._enter(wanted)

    async def _awake_once(self) -> None:
        await self._wait_for_backlog()
        if not await self._node_ready():
            return
        outage = Outage("fetching a task", time.monotonic)
        while True:
            if self.stop_event.is_set():
                return
            try:
                item = await self.backend.fetch_task()
                outage.succeeded()
                break
            except NotAuthorised as exc:
                log.warning("task fetch refused (%s); signing on again", exc)
                await self._start()
            except (ServiceUnavailable, FatalServiceError) as exc:
                await self._pause(outage.failed(exc))
        if item is None:
            await self._pause(self.task_pacing.no_task())
            return
        self.task_pacing.work_arrived()
        if isinstance(item, StateChange):
            await self._enter(item.requested)
        elif self.queue.has_undelivered(item.id):
            # The Manager re-sends a task it still thinks is active because our updates (maybe a
            # final status from before a restart) have not reached it yet.  Deliver them, then ask again.
            log.info("task %s still has undelivered updates; delivering them before taking it again", item.id)
            await self.queue.wait_delivered(item.id, FINAL_STATUS_WAIT)
        else:
            await self._run_task(item)

    async def _node_ready(self) -> bool:
        """Run the pre-task checks; while one fails, say why, fetch nothing and look again later."""
        problems = await self.node_checks.problems()
        self.publisher.checks(problems)
        if not problems:
            return True
        # Fetching no task also means hearing of no state change: ask for that instead, which
        # also keeps the Manager seeing this worker.
        with contextlib.suppress(ServiceUnavailable, FatalServiceError, NotAuthorised):
            wanted = await self.backend.requested_state()
            if wanted is not None and wanted is not self.state:
                await self._enter(wanted)
                return False
        await self._pause(self.node_checks.recheck_seconds)
        return False

    async def _wait_for_backlog(self) -> None:
        limit = self.config.queue_backlog_max_bytes
        if self.queue.backlog_bytes <= limit:
            return
        log.warning(
            "update backlog is %d bytes (limit queue_backlog_max_bytes=%d); not fetching tasks until it drains",
            self.queue.backlog_bytes, limit,
        )
        while self.queue.backlog_bytes > limit:
            await self._pause(1.0)
        log.info("update backlog drained; fetching tasks again")

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake early when something happens (a stop, a task taken away)."""
        if self.stop_event.is_set():
            return
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))

    # ---- one task ------------------------------------------------------------------------------

    async def _run_task(self, task: Task) -> None:
        log.info("task %s (%s, job %s): %d command(s)", task.id, task.name, task.job_id, len(task.commands))
        started = time.monotonic()
        self.publisher.task_started(task)
        running = asyncio.ensure_future(self.runner.run(task))
        watcher = asyncio.ensure_future(self._watch_permission(task, running))
        try:
            outcome = await running
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self.tasks_run += 1
        self.publisher.task_finished(task, outcome.value)
        log.info("task %s %s in %.2f s", task.id, outcome.value, time.monotonic() - started)
        # Fetching before the Manager has our final status would get this task again.
        if not await self.queue.wait_delivered(task.id, FINAL_STATUS_WAIT):
            log.info("final status of task %s not delivered yet; it stays queued on disk", task.id)
        if outcome is Outcome.ABORTED and self._pending_state is not None:
            wanted, self._pending_state = self._pending_state, None
            await self._enter(wanted)

    _pending_state: WorkerState | None = None

    async def _watch_permission(self, task: Task, running: asyncio.Future[Outcome]) -> None:
        """Ask may-i-run while the task runs, when no update went out lately; abort it when the Manager says no."""
        interval = self.config.may_i_run_interval_seconds
        pacing = PermissionPacing(interval, 2 * interval)
        while not running.done():
            # A task update the Manager accepted counts as a probe (the backend notes when; a 409 aborts).
            pacing.update_delivered_at(getattr(self.backend, "last_update_delivered", 0.0))
            wait = pacing.wait()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                permission = await self.backend.may_keep_running(task.id)
            except (ServiceUnavailable, FatalServiceError, NotAuthorised) as exc:
                # Keep rendering through an outage; the Manager decides once it is back.
                log.debug("may-i-run for task %s failed: %s", task.id, exc)
                pacing.asked()
                continue
            pacing.asked()
            if permission.may_keep_running:
                continue
            if permission.state_change_requested:
                with contextlib.suppress(ServiceUnavailable, FatalServiceError, NotAuthorised):
                    self._pending_state = await self.backend.requested_state()
            log.info("the Manager took task %s away (%s); aborting it", task.id, permission.reason or "no reason")
            self.queue.forget_task(task.id, permission.reason)
            self.runner.abort(f"the Manager said: {permission.reason or 'may not keep running'}")
            return

    def task_gone(self, task_id: str, reason: str) -> None:
        """The queue learned the task is no longer ours (409/404 on an update)."""
        current = self.runner.current_task
        if current is not None and current.id == task_id:
            log.info("task %s belongs to someone else now (%s); aborting it", task_id, reason)
            self.runner.abort(f"the Manager no longer assigns this task to us: {reason}")

    # ---- previews ------------------------------------------------------------------------------

    def output_produced(self, task_id: str, path: str) -> None:
        """Upload a preview of a produced image, at most one every PREVIEW_MIN_INTERVAL, never blocking."""
        content_type = mimetypes.guess_type(path)[0]
        if content_type not in PREVIEW_TYPES:
            return
        now = time.monotonic()
        busy = self._preview_task is not None and not self._preview_task.done()
        if busy or now - self._last_preview < PREVIEW_MIN_INTERVAL:
            return
        self._last_preview = now
        assert content_type is not None
        self._preview_task = asyncio.ensure_future(self._send_preview(task_id, Path(path), content_type))

    async def _send_preview(self, task_id: str, path: Path, content_type: str) -> None:
        try:
            body = await asyncio.to_thread(path.read_bytes)
            await self.backend.output_produced(task_id, str(path), content_type, body)
        except (OSError, ServiceUnavailable, FatalServiceError, NotAuthorised) as exc:
            log.info("could not upload preview %s: %s", path, exc)
