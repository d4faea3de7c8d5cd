"""The worker's own words, shared by the core and every service ("backend").

Tasks, commands, updates, delivery results and the Backend protocol.  The worker, runner and
queue import only this module, never aiohttp or boto3; backends import it, never the reverse.
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


class Outcome(str, enum.Enum):
    """How a task (a session of commands) ended on this worker."""

    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


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

    ``task_id`` names the queue's ordering domain (a Flamenco task, a Deadline session, a
    session's log): updates of one domain are delivered in order.  ``action_id`` names the
    action within it when the service reports per action (Deadline); merging never crosses it.
    """

    task_id: str
    log: str = ""
    status: str | None = None
    activity: str | None = None
    steps_completed: int | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    action_id: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.action_id:
            data["action"] = self.action_id
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
            action_id=str(data.get("action", "")),
        )

    @property
    def log_only(self) -> bool:
        return (
            self.status is None and self.activity is None and self.steps_completed is None and not self.extra
        )

    def with_log(self, log: str) -> Update:
        return attrs.evolve(self, log=log)

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
            action_id=self.action_id,
        )


class Delivery(str, enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # service down, busy or throttling: keep it and try again
    REJECTED = "rejected"  # will never succeed: drop it with the reason logged
    TASK_GONE = "task-gone"  # the task is no longer ours: drop its updates, abort it
    TOO_LARGE = "too-large"  # the service refused the size (413): split smaller and try again


@attrs.frozen
class DeliveryResult:
    """What became of one Head.  ``delivered`` counts its updates that arrived, in order, before
    the outcome (all of them when DELIVERED); those are never sent again."""

    outcome: Delivery
    reason: str = ""
    retry_after: float | None = None
    delivered: int = 0

    @classmethod
    def ok(cls, count: int) -> DeliveryResult:
        return cls(Delivery.DELIVERED, delivered=count)


@attrs.frozen
class Head:
    """The deliverable start of one ordering domain: its oldest updates, each within the size
    limit, consecutive log text merged, never merged across a status or an action."""

    task_id: str
    updates: tuple[Update, ...]


class UpdateSink(Protocol):
    """What the TaskUpdateQueue needs from a backend to drain."""

    # At most this many lines in one update (a service limit such as CloudWatch's events per
    # call), or None.
    @property
    def max_log_lines(self) -> int | None: ...

    def batch_key(self, task_id: str) -> str:
        """Ready heads with the same key travel in one ``deliver`` call (Deadline: every session's
        action statuses in one UpdateWorkerSchedule); different keys never wait for each other."""
        ...

    async def deliver(self, heads: Sequence[Head]) -> list[DeliveryResult]:
        """One result per head, in order.  Never raises for service or network errors."""
        ...


class ServiceUnavailable(Exception):
    """The service could not be reached or answered with a retryable error."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.timed_out = False  # no answer in time: the call's outcome is unknown


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
