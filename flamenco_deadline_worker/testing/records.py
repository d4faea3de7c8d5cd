"""State records of the local manager: workers, jobs, tasks, received updates and injected faults.

Plain mutable attrs classes: the manager owns them and changes them on its one event loop; tests read them.
"""

from __future__ import annotations

import fnmatch
import random
import time
from collections.abc import Mapping
from typing import Any

import attrs

WORKER_STATUSES = frozenset({"starting", "awake", "asleep", "error", "testing", "offline", "restart"})
TASK_STATUSES = frozenset({"active", "canceled", "completed", "failed", "queued", "soft-failed", "paused"})
# Stand-in for "some other worker" when a test takes a task away without requeueing it.
FAKE_OTHER_WORKER = "00000000-0000-4000-8000-0000000000ff"


@attrs.define
class WorkerRecord:
    id: str
    name: str
    secret: str = attrs.field(repr=False)
    platform: str
    supported_task_types: list[str]
    address: str = ""
    software: str = ""
    status: str = "offline"
    status_requested: str | None = None
    can_restart: bool = False
    last_seen: float = attrs.field(factory=time.time)

    def change_requested(self) -> str | None:
        """The requested status, unless the worker is already there."""
        if self.status_requested is None or self.status_requested == self.status:
            return None
        return self.status_requested


@attrs.frozen
class ReceivedUpdate:
    """One TaskUpdate as it arrived, with the HTTP status the manager answered."""

    worker_id: str
    answer: int
    task_status: str | None = None
    activity: str | None = None
    log: str | None = None
    steps_completed: int | None = None
    received_at: float = attrs.field(factory=time.time)


@attrs.frozen
class Preview:
    content_type: str
    data: bytes = attrs.field(repr=False)
    received_at: float = attrs.field(factory=time.time)


@attrs.define
class TaskRecord:
    id: str
    job_id: str
    name: str
    task_type: str
    # Sent to workers as given, so tests can hand out malformed commands on purpose.
    commands: list[Any]
    steps_total: int
    index: int
    depends_on: list[str] = attrs.field(factory=list)
    status: str = "queued"
    activity: str = ""
    steps_completed: int = 0
    worker_id: str | None = None
    log_chunks: list[str] = attrs.field(factory=list, repr=False)
    updates: list[ReceivedUpdate] = attrs.field(factory=list, repr=False)
    rejected_updates: list[ReceivedUpdate] = attrs.field(factory=list, repr=False)
    preview: Preview | None = None
    previews_received: int = 0

    @property
    def log(self) -> str:
        return "".join(self.log_chunks)

    @property
    def log_line_count(self) -> int:
        text = self.log
        return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


@attrs.define
class JobRecord:
    id: str
    name: str
    job_type: str
    task_ids: list[str]
    status: str = "queued"
    priority: int = 50


def job_status_from_tasks(statuses: list[str]) -> str:
    """Like Flamenco: failed as soon as one task failed, completed when all completed."""
    if "failed" in statuses:
        return "failed"
    if statuses and all(s == "completed" for s in statuses):
        return "completed"
    if statuses and all(s in ("completed", "canceled") for s in statuses):
        return "canceled"
    if any(s in ("active", "completed", "soft-failed") for s in statuses):
        return "active"
    return "queued"


def build_task(job_id: str, task_id: str, index: int, spec: Mapping[str, Any]) -> TaskRecord:
    """A task record from a submitted task dict; lenient, so tests can submit odd commands."""
    raw_commands = spec.get("commands", [])
    commands = list(raw_commands) if isinstance(raw_commands, list) else [raw_commands]
    steps_total = spec.get("steps_total")
    if not isinstance(steps_total, int):
        steps_total = sum(
            c["total_step_count"]
            for c in commands
            if isinstance(c, dict) and isinstance(c.get("total_step_count"), int)
        )
        steps_total = steps_total or 1
    depends_on = spec.get("depends_on", [])
    return TaskRecord(
        id=task_id,
        job_id=job_id,
        name=str(spec.get("name", f"task-{index}")),
        task_type=str(spec.get("task_type", "misc")),
        commands=commands,
        steps_total=steps_total,
        index=index,
        depends_on=[str(d) for d in depends_on] if isinstance(depends_on, list) else [],
    )


@attrs.frozen
class InjectedFault:
    method: str
    path: str
    status: int


@attrs.define
class _ScriptedFault:
    pattern: str
    status: int
    remaining: int
    method: str | None
    headers: dict[str, str]


@attrs.define
class Faults:
    """Answers the manager gives instead of doing its job, for tests of the worker's retries.

    `update_failure_ratio` is the fraction of task updates (POST /api/v3/worker/task/{id}) answered with
    503 + Retry-After or 500, chosen by a seeded random so a test run repeats itself.
    """

    seed: int = 0
    update_failure_ratio: float = 0.0
    injected: list[InjectedFault] = attrs.field(factory=list)
    _scripted: list[_ScriptedFault] = attrs.field(factory=list)
    _rng: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def fail_next(
        self,
        path: str,
        status: int,
        times: int = 1,
        *,
        method: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `times` requests whose path matches the glob `path` with `status`."""
        self._scripted.append(
            _ScriptedFault(path, status, times, method.upper() if method else None, dict(headers or {}))
        )

    def clear(self) -> None:
        self._scripted.clear()
        self.update_failure_ratio = 0.0

    def pick(self, method: str, path: str, is_task_update: bool) -> tuple[int, dict[str, str]] | None:
        """The (status, headers) to answer this request with, or None to handle it normally."""
        for fault in self._scripted:
            if fault.remaining > 0 and fnmatch.fnmatchcase(path, fault.pattern):
                if fault.method is None or fault.method == method:
                    fault.remaining -= 1
                    self._scripted = [f for f in self._scripted if f.remaining > 0]
                    return self._record(method, path, fault.status, fault.headers)
        if is_task_update and self.update_failure_ratio > 0 and self._rng.random() < self.update_failure_ratio:
            if self._rng.random() < 0.5:
                return self._record(method, path, 503, {"Retry-After": self._rng.choice(("0", "1"))})
            return self._record(method, path, 500, {})
        return None

    def _record(self, method: str, path: str, status: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        if status == 503 and "Retry-After" not in headers:
            headers = {**headers, "Retry-After": "0"}
        self.injected.append(InjectedFault(method, path, status))
        return status, headers
