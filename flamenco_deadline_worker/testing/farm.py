"""What the local manager knows, and its rules: workers, jobs, tasks, assignment and task updates.

No HTTP here: `LocalManager` puts the worker API on top and hooks `changed()` to wake up waiting tests.
"""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

from flamenco_deadline_worker.testing.records import (
    FAKE_OTHER_WORKER,
    TASK_STATUSES,
    WORKER_STATUSES,
    JobRecord,
    ReceivedUpdate,
    TaskRecord,
    WorkerRecord,
    build_task,
    job_status_from_tasks,
)

log = logging.getLogger(__name__)


class Farm:
    """Workers, jobs and tasks in memory, changed only on the event loop that runs the manager."""

    def __init__(self, seed: int = 0) -> None:
        self.workers: dict[str, WorkerRecord] = {}
        self.jobs: dict[str, JobRecord] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self._ids = random.Random(seed)  # seeded ids make test logs repeatable

    def changed(self) -> None:
        """Called after every change of state."""

    def new_id(self) -> str:
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    # ----- jobs and tasks, as tests and the /local API use them -----

    def submit_job(self, name: str, tasks: list[dict[str, Any]], job_type: str = "simple") -> str:
        """Queue a job; its tasks are handed out in list order.  Answers the job id.

        A task dict: {"name", "task_type", "commands": [{"name", "parameters", "total_step_count"}],
        optional "steps_total" (default: the sum of total_step_count, at least 1) and optional "depends_on"
        (names of tasks of the same job that must be completed first).  Commands are sent as given.
        """
        job_id = self.new_id()
        records = [build_task(job_id, self.new_id(), i, spec) for i, spec in enumerate(tasks)]
        for record in records:
            self.tasks[record.id] = record
        self.jobs[job_id] = JobRecord(id=job_id, name=name, job_type=job_type, task_ids=[t.id for t in records])
        self.update_job(job_id)
        log.info("job %s %r submitted with %d tasks", job_id, name, len(records))
        return job_id

    def job(self, job_id: str) -> JobRecord:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise KeyError(f"no job {job_id!r}; known jobs: {sorted(self.jobs)}") from None

    def task(self, task_id: str) -> TaskRecord:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise KeyError(f"no task {task_id!r}; known tasks: {sorted(self.tasks)}") from None

    def job_tasks(self, job_id: str) -> list[TaskRecord]:
        return [self.tasks[t] for t in self.job(job_id).task_ids]

    def request_state(self, worker_id: str, status: str | None) -> None:
        """Ask a worker to go to `status` (None withdraws the request), like the web interface does."""
        if status is not None and status not in WORKER_STATUSES:
            raise ValueError(f"unknown worker status {status!r}; expected one of {sorted(WORKER_STATUSES)}")
        self.workers[worker_id].status_requested = status
        self.changed()

    def reassign_task(self, task_id: str, to_other_worker: bool = False) -> None:
        """Take a task from its worker: its later updates get 409 and may-i-run says no.

        The task goes back to the queue, or, with `to_other_worker`, stays active on a fake other worker.
        """
        task = self.task(task_id)
        if to_other_worker:
            task.worker_id, task.status = FAKE_OTHER_WORKER, "active"
        else:
            task.worker_id, task.status = None, "queued"
        self.update_job(task.job_id)

    def cancel_task(self, task_id: str) -> None:
        """Cancel a task; its worker learns it from may-i-run."""
        task = self.task(task_id)
        task.status = "canceled"
        self.update_job(task.job_id)

    def describe(self) -> str:
        """A one-paragraph summary of workers, jobs and tasks, for failure messages."""
        workers = ", ".join(
            f"{w.name} {w.id[:8]} {w.status}" + (f" (requested {w.status_requested})" if w.status_requested else "")
            for w in self.workers.values()
        )
        jobs = "; ".join(
            f"job {j.name!r} {j.id[:8]} {j.status}: "
            + ", ".join(
                f"{t.name} {t.status} {t.steps_completed}/{t.steps_total}"
                + (f" on {t.worker_id[:8]}" if t.worker_id else "")
                for t in self.job_tasks(j.id)
            )
            for j in self.jobs.values()
        )
        return f"workers: [{workers or 'none'}]; jobs: [{jobs or 'none'}]"

    # ----- rules the worker API applies -----

    def update_job(self, job_id: str) -> None:
        job = self.jobs[job_id]
        job.status = job_status_from_tasks([t.status for t in self.job_tasks(job_id)])
        self.changed()

    def requeue_tasks_of(self, worker: WorkerRecord) -> None:
        for task in self.tasks.values():
            if task.worker_id == worker.id and task.status == "active":
                task.worker_id, task.status = None, "queued"
                log.info("task %s requeued: worker %s left", task.id, worker.id)
                self.update_job(task.job_id)

    def task_for(self, worker: WorkerRecord) -> TaskRecord | None:
        """The task to hand to this worker, now assigned to it, or None when there is none."""
        for task in self.tasks.values():  # the real Manager re-sends the task a worker already holds
            if task.worker_id == worker.id and task.status == "active":
                return task
        for job in self.jobs.values():
            if job.status not in ("queued", "active"):
                continue  # nothing more of a failed or canceled job
            tasks = self.job_tasks(job.id)
            done = {t.name for t in tasks if t.status == "completed"}
            for task in tasks:
                if (
                    task.status == "queued"
                    and task.task_type in worker.supported_task_types
                    and all(d in done for d in task.depends_on)
                ):
                    task.worker_id, task.status = worker.id, "active"
                    log.info("task %s %r assigned to worker %s", task.id, task.name, worker.id)
                    self.update_job(task.job_id)
                    return task
        return None

    def refuse_update(self, task: TaskRecord, update: ReceivedUpdate) -> tuple[int, str] | None:
        """(HTTP status, message) when the update cannot be taken, else None."""
        if task.worker_id != update.worker_id:
            return 409, f"task {task.id} is not assigned to worker {update.worker_id}"
        if update.task_status is not None and update.task_status not in TASK_STATUSES:
            return 400, f"unknown taskStatus {update.task_status!r}"
        for key, value in (("activity", update.activity), ("log", update.log)):
            if value is not None and not isinstance(value, str):
                return 400, f"{key} must be a string, not {value!r}"
        steps = update.steps_completed
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
            return 400, f"steps_completed must be a non-negative integer, not {steps!r}"
        if steps is not None and steps > task.steps_total:
            return 400, f"steps_completed {steps} exceeds steps_total {task.steps_total}"
        return None

    def apply_update(self, task: TaskRecord, update: ReceivedUpdate) -> None:
        task.updates.append(update)
        if update.log:
            task.log_chunks.append(update.log)
        if update.activity is not None:
            task.activity = update.activity
        if update.steps_completed is not None:
            task.steps_completed = update.steps_completed
        # A canceled task stays canceled whatever its worker reports while stopping.
        if update.task_status is not None and task.status != "canceled":
            task.status = update.task_status
        self.update_job(task.job_id)

    def may_keep_running(self, worker: WorkerRecord, task: TaskRecord) -> tuple[bool, str]:
        if worker.change_requested() is not None:
            return False, "worker status change requested"
        if task.worker_id != worker.id:
            return False, "task not assigned to this worker"
        if task.status != "active":
            return False, f"task is {task.status}"
        return True, ""
