"""The small interface between the worker core and a service ("backend").

It speaks the worker's own words: tasks, commands, updates and delivery results.  The worker,
runner and queue import only this module, never aiohttp or boto3.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs


class WorkerState(str, enum.Enum):
    """Worker states as the Flamenco Manager names them."""

    STARTING = "starting"
    AWAKE = "awake"
    ASLEEP = "asleep"
    ERROR = "error"
    TESTING = "testing"
    OFFLINE = "offline"
    RESTART = "restart"


class TaskStatus(str, enum.Enum):
    ACTIVE = "active"
    CANCELED = "canceled"
    COMPLETED = "completed"
    FAILED = "failed"
    QUEUED = "queued"
    SOFT_FAILED = "soft-failed"
    PAUSED = "paused"


@attrs.frozen
class CommandSpec:
    """One command of a task, as the service sent it."""

    name: str
    parameters: Mapping[str, Any]
    total_step_count: int = 0


@attrs.frozen
class Task:
    """A unit of work assigned to this worker."""

    id: str
    job_id: str
    name: str
    job_type: str
    task_type: str
    commands: Sequence[CommandSpec]
    steps_total: int = 0
    steps_completed: int = 0
    priority: int = 0
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen
class StateChange:
    """The service asks the worker to go to another state."""

    requested: WorkerState


@attrs.frozen
class RunPermission:
    may_keep_running: bool
    reason: str = ""
    state_change_requested: bool = False


@attrs.frozen
class Update:
    """One update of a task, as the runner produces it and the queue stores it.

    Every field is optional: a log chunk, a status change, an activity line, a step count,
    or any mix.  ``extra`` carries backend-specific fields (JSON-serialisable).
    """

    task_id: str
    log: str = ""
    status: str | None = None
    activity: str | None = None
    steps_completed: int | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.log:
            data["log"] = self.log
        if self.status is not None:
            data["status"] = self.status
        if self.activity is not None:
            data["activity"] = self.activity
        if self.steps_completed is not None:
            data["steps_completed"] = self.steps_completed
        if self.extra:
            data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_json(cls, task_id: str, data: Mapping[str, Any]) -> Update:
        return cls(
            task_id=task_id,
            log=str(data.get("log", "")),
            status=data.get("status"),
            activity=data.get("activity"),
            steps_completed=data.get("steps_completed"),
            extra=dict(data.get("extra") or {}),
        )

    def merged_with(self, later: Update) -> Update:
        """This update followed by ``later``: logs appended, later fields win."""
        return Update(
            task_id=self.task_id,
            log=self.log + later.log,
            status=later.status if later.status is not None else self.status,
            activity=later.activity if later.activity is not None else self.activity,
            steps_completed=(
                later.steps_completed if later.steps_completed is not None else self.steps_completed
            ),
            extra={**self.extra, **later.extra},
        )


class Delivery(str, enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # service down, busy or throttling: keep it and try again
    REJECTED = "rejected"  # will never succeed: drop it with the reason logged
    TASK_GONE = "task-gone"  # the task is no longer ours: drop its updates, abort it


@attrs.frozen
class DeliveryResult:
    outcome: Delivery
    reason: str = ""
    retry_after: float | None = None

    @classmethod
    def delivered(cls) -> DeliveryResult:
        return cls(Delivery.DELIVERED)


class UpdateSink(Protocol):
    """What the TaskUpdateQueue needs from a backend to drain."""

    async def deliver(self, update: Update) -> DeliveryResult:
        """Deliver one (merged) update.  Never raises for service or network errors."""
        ...


class ServiceUnavailable(Exception):
    """The service could not be reached or answered with a retryable error."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotAuthorised(Exception):
    """The service refused the worker's credentials (401/403)."""


class FatalServiceError(Exception):
    """The service answered in a way retrying cannot fix (bad request, bad answer)."""


class Backend(UpdateSink, Protocol):
    """A service the pull worker takes tasks from.  Flamenco implements it directly."""

    async def start(self) -> None:
        """Register if needed, and sign on."""
        ...

    async def fetch_task(self) -> Task | StateChange | None:
        """The next task, a requested state change, or None when there is no work."""
        ...

    async def may_keep_running(self, task_id: str) -> RunPermission: ...

    async def requested_state(self) -> WorkerState | None:
        """The state the service wants us in, or None when it asks no change."""
        ...

    async def state_changed(self, state: WorkerState) -> None: ...

    async def output_produced(self, task_id: str, path: str, content_type: str, body: bytes) -> None: ...

    async def sign_off(self) -> None: ...

    async def close(self) -> None: ...
