"""What the operations side offers the core and the backends, as protocols.

The composition root (compose.py) hands in the real ones: the agent log is ``records`` (structured
records, the values no log may show, the form of its lines), the presence is ``presence.StatusPublisher``
(the state file and systemd).  So the core and the backends import no operations module, and a
test can give them something else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from flamenco_deadline_worker.core.model import Task


class AgentLog(Protocol):
    """The agent's own log: one structured record per event (Worker, Session, Action, API, FileSystem)."""

    def api_records_on(self) -> bool:
        """Whether API Req/Resp records are kept (they are many: callers skip building them otherwise)."""
        ...

    def hide(self, secret: str) -> None:
        """Keep ``secret`` out of every line logged from now on."""
        ...

    def dress(self, handler: logging.Handler) -> None:
        """Give ``handler`` the agent log file's line format and secret redaction."""
        ...

    def worker_create(self, worker_id: str, service: str, **fields: Any) -> None: ...

    def worker_load(self, worker_id: str, source: str | Path, **fields: Any) -> None: ...

    def worker_delete(self, worker_id: str, reason: str, **fields: Any) -> None: ...

    def session_starting(self, session_id: str, queue_id: str, **fields: Any) -> None: ...

    def session_failed(self, session_id: str, queue_id: str, reason: str, **fields: Any) -> None: ...

    def session_complete(self, session_id: str, queue_id: str, status: str, seconds: float, **fields: Any) -> None: ...

    def session_add(self, session_id: str, queue_id: str, action_ids: Iterable[str], **fields: Any) -> None: ...

    def session_remove(self, session_id: str, queue_id: str, reason: str = "", **fields: Any) -> None: ...

    def session_logs(self, session_id: str, queue_id: str, log_file: str | Path, **fields: Any) -> None: ...

    def session_user(self, session_id: str, queue_id: str, user: str | None = None, **fields: Any) -> None:
        """The user the session's processes run as; None: the agent's own."""
        ...

    def action_start(self, session_id: str, action_id: str, kind: str, **fields: Any) -> None: ...

    def action_cancel(self, session_id: str, action_id: str, reason: str, **fields: Any) -> None: ...

    def action_end(self, session_id: str, action_id: str, status: str, seconds: float, **fields: Any) -> None: ...

    def api_request(self, operation: str, url: str, params: Any = None, **fields: Any) -> None: ...

    def api_response(
        self, operation: str, status_code: int | str, seconds: float, error: str = "", **fields: Any
    ) -> None: ...

    def filesystem(
        self, op: str, path: str | Path, text: str = "", level: int = logging.INFO, **fields: Any
    ) -> None: ...


class Presence(Protocol):
    """Where the worker tells the host how it is (the state file, systemd)."""

    def signed_on(self, worker_id: str) -> None: ...

    def waiting(self, why: str) -> None: ...

    def stopping(self, why: str) -> None: ...

    def state(self, state: str) -> None: ...

    def task_started(self, task: Task) -> None: ...

    def task_finished(self, task: Task, outcome: str) -> None: ...

    def checks(self, problems: list[str]) -> None: ...


class ServicePresence(Presence, Protocol):
    """A presence the Deadline rounds also write their own fields into (``status --json`` shows them)."""

    data: dict[str, Any]

    def note(self, key: str, value: Any) -> None:
        """Show ``value`` as ``key`` now (a state change)."""
        ...

    def soon(self) -> None:
        """``data`` changed in a way that may wait a moment (counters)."""
        ...

    def queue_problem(self, problem: str | None) -> None: ...


class NoPresence:
    """Tells nobody: for a worker built without the operations side (unit tests)."""

    def signed_on(self, worker_id: str) -> None:
        pass

    def waiting(self, why: str) -> None:
        pass

    def stopping(self, why: str) -> None:
        pass

    def state(self, state: str) -> None:
        pass

    def task_started(self, task: Task) -> None:
        pass

    def task_finished(self, task: Task, outcome: str) -> None:
        pass

    def checks(self, problems: list[str]) -> None:
        pass
