"""The names a backend implements and answers with; they live in the core (core/model.py)."""

from flamenco_deadline_worker.core.model import (
    Backend,
    CommandSpec,
    Delivery,
    DeliveryResult,
    FatalServiceError,
    Head,
    NotAuthorised,
    RunPermission,
    ServiceUnavailable,
    StateChange,
    Task,
    TaskStatus,
    Update,
    UpdateSink,
    WorkerState,
)

__all__ = [
    "Backend",
    "CommandSpec",
    "Delivery",
    "DeliveryResult",
    "FatalServiceError",
    "Head",
    "NotAuthorised",
    "RunPermission",
    "ServiceUnavailable",
    "StateChange",
    "Task",
    "TaskStatus",
    "Update",
    "UpdateSink",
    "WorkerState",
]
