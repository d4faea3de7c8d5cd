"""What a running worker tells the host about itself.

The worker keeps ``<home>/flamenco-worker.state.json`` up to date (worker id, state, current task,
pid; written atomically, no secrets), mirrors it to systemd's STATUS= line, feeds the watchdog and
writes Metrics records.  ``flamenco-worker status`` reads the state file (see status.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flamenco_deadline_worker import __version__, records, sdnotify
from flamenco_deadline_worker.atomicfile import write_atomic
from flamenco_deadline_worker.sdnotify import Notifier

if TYPE_CHECKING:
    from flamenco_deadline_worker.config import WorkerConfig
    from flamenco_deadline_worker.core.model import Task

log = logging.getLogger(__name__)

STATE_FILE_NAME = "flamenco-worker.state.json"
METRICS_INTERVAL_SECONDS = 60.0
STATE_WRITE_DELAY_SECONDS = 1.0


def state_file(config: WorkerConfig) -> Path:
    return config.home / STATE_FILE_NAME


def task_log_file(logs_dir: Path, job_id: str, task_id: str) -> Path:
    from flamenco_deadline_worker.runner.runner import _safe

    return logs_dir / _safe(job_id) / f"{_safe(task_id)}.log"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o600)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StatusPublisher:
    """The worker's one place for telling the outside what it is doing: state file, systemd, records."""

    def __init__(self, config: WorkerConfig, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier(None)
        self.path = state_file(config)
        self.data: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "backend": config.backend,
            "service": config.manager_url if config.backend == "flamenco" else config.farm_id,
            "worker_id": config.worker_id,
            "worker_name": config.worker_name,
            "state": "starting",
            "current_task": None,
            "started_at": time.time(),
            "updated_at": time.time(),
            "tasks_run": 0,
            "logs_dir": str(config.logs_dir),
            "queue_db": str(config.task_update_queue_db),
        }
        self._ready = False
        self._stopping = False
        self._write_due: asyncio.TimerHandle | None = None
        self.exit_code: int | None = None
        # Extra figures for the Metrics records (e.g. the update queue's backlog), set by the owner.
        self.metrics_source: Callable[[], dict[str, Any]] | None = None

    def _write(self) -> None:
        self.data["updated_at"] = time.time()
        try:
            write_json_atomic(self.path, self.data)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and self._write_in_place():
                return
            log.warning("could not write the state file %s: %s", self.path, exc)

    def _write_in_place(self) -> bool:
        """On a full disk, overwrite the state file in its own blocks: ``status`` then still shows
        why (e.g. the queue problem).  Not atomic; a reader may rarely see a torn file."""
        text = (json.dumps(self.data, indent=1, sort_keys=True) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError:
            return False
        try:
            if len(text) > os.fstat(fd).st_blocks * 512:
                return False  # would need a new block, which a full disk does not have
            os.pwrite(fd, text, 0)
            os.ftruncate(fd, len(text))
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def _systemd_status(self) -> str:
        task = self.data.get("current_task")
        if task:
            return f"{self.data['state']}: running task {task['id']} ({task['name']}) of job {task['job_id']}"
        return f"{self.data['state']}: {self.data['tasks_run']} task(s) done"

    def started(self) -> None:
        self._write()
        self.notifier.status("starting: signing on")

    def waiting(self, what: str) -> None:
        self.notifier.status(f"{self.data['state']}: {what}")

    def signed_on(self, worker_id: str) -> None:
        """Sign-on worked: tell systemd we are ready."""
        self.data["worker_id"] = worker_id
        self._write()
        records.worker_id(worker_id, worker_name=self.config.worker_name)
        if not self._ready:
            self._ready = True
            self.notifier.ready(f"signed on as {worker_id}")
            from flamenco_deadline_worker import logs

            logs.end_bootstrap()

    def state(self, state: str) -> None:
        previous = self.data["state"]
        if previous == state:
            return  # said already; an fsynced write per service answer would slow every task
        self.data["state"] = state
        self._write()
        records.worker_status(str(self.data["worker_id"] or "(not signed on yet)"), state, previous)
        self.notifier.status(self._systemd_status())

    def checks(self, problems: list[str]) -> None:
        """The pre-task checks' outcome: while any fails, the state file and systemd say why."""
        if problems == self.data.get("failed_checks", []):
            return
        self.data["failed_checks"] = list(problems)
        self._write()
        self.notifier.status(f"not fetching tasks: {'; '.join(problems)}" if problems else self._systemd_status())

    def task_started(self, task: Task) -> None:
        self.data["current_task"] = {
            "id": task.id,
            "name": task.name,
            "job_id": task.job_id,
            "started_at": time.time(),
            "log_file": str(task_log_file(self.config.logs_dir, task.job_id, task.id)),
        }
        self._write()
        self.notifier.status(self._systemd_status())

    def task_finished(self, task: Task, outcome: str) -> None:
        self.work_finished(task.id, task.job_id, outcome)

    def work_finished(self, task_id: str, job_id: str, outcome: str) -> None:
        """One task is done (a Flamenco task, a Deadline taskRun action): counted in tasks_run."""
        self.data["current_task"] = None
        self.data["tasks_run"] = int(self.data["tasks_run"]) + 1
        self.data["last_task"] = {"id": task_id, "job_id": job_id, "outcome": outcome, "ended_at": time.time()}
        self._write()
        self.notifier.status(self._systemd_status())

    def soon(self) -> None:
        """``data`` changed in a way that may wait a moment (counters): the state file is written
        within a second, once, however many changes come meanwhile (an fsynced write per short task
        would slow every task down)."""
        if self._write_due is None:
            self._write_due = asyncio.get_running_loop().call_later(STATE_WRITE_DELAY_SECONDS, self._write_now)

    def _write_now(self) -> None:
        self._write_due = None
        self._write()

    def note(self, key: str, value: Any) -> None:
        """Show ``value`` as ``key`` in the state file (e.g. the Deadline drain state), written now."""
        if self.data.get(key) != value:
            self.data[key] = value
            self._write()

    def queue_problem(self, problem: str | None) -> None:
        """The update queue cannot be written (e.g. a full disk), or None once it can again."""
        self.data["queue_problem"] = problem
        self._write()
        self.notifier.status(f"{self.data['state']}: {problem}" if problem else self._systemd_status())

    def stopping(self, why: str) -> None:
        """Shutdown begins (first call only): STOPPING=1 for systemd."""
        if self._stopping:
            return
        self._stopping = True
        self.notifier.stopping(f"stopping: {why}")

    def metrics(self) -> None:
        values = records.system_metrics(self.config.home)
        values["tasks_run"] = self.data["tasks_run"]
        if self.metrics_source is not None:
            try:
                values.update(self.metrics_source())
            except Exception as exc:  # figures are a nicety; never let them hurt the worker
                log.debug("metrics source failed: %s", exc)
        records.metrics(values)

    def stopped(self, exit_code: int) -> None:
        self.data["state"] = "stopped"
        self.data["current_task"] = None
        self.data["exit_code"] = exit_code
        self._write()


@contextlib.asynccontextmanager
async def service_presence(
    config: WorkerConfig, stop_event: asyncio.Event, healthy: Callable[[], bool] | None = None
) -> AsyncIterator[StatusPublisher]:
    """For one worker run: state file, systemd notifications (watchdog included) and Metrics records.

    Set ``publisher.exit_code`` before leaving; the state file then says "stopped" with it.
    """
    notifier = sdnotify.notifier()
    publisher = StatusPublisher(config, notifier)
    publisher.started()

    async def stop_watch() -> None:
        await stop_event.wait()
        publisher.stopping("signal received; finishing up")

    async def metrics_loop() -> None:
        while True:
            publisher.metrics()
            await asyncio.sleep(METRICS_INTERVAL_SECONDS)

    helpers = [
        asyncio.ensure_future(notifier.run_watchdog(healthy)),
        asyncio.ensure_future(stop_watch()),
        asyncio.ensure_future(metrics_loop()),
    ]
    try:
        yield publisher
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        publisher.stopping("exiting")
        publisher.metrics()
        publisher.stopped(publisher.exit_code if publisher.exit_code is not None else 1)
