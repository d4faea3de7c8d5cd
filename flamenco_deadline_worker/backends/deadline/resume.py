"""The sessions this worker has begun, kept on disk, so that after a crash it knows which of its
assigned sessions it cannot carry on (their processes and environments died with it)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flamenco_deadline_worker.atomicfile import write_atomic

log = logging.getLogger(__name__)


class SessionLedger:
    def __init__(self, path: Path, worker_id: str) -> None:
        self.path = path
        self.worker_id = worker_id
        self.current: dict[str, str] = {}  # session id -> queue id
        self.before_restart: dict[str, str] = self._load()

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); assuming no session was running before this start", self.path, exc)
            return {}
        if data.get("worker_id") != self.worker_id:
            return {}
        return {str(k): str(v) for k, v in (data.get("sessions") or {}).items()}

    def begun(self, session_id: str, queue_id: str) -> None:
        self.current[session_id] = queue_id
        self._save()

    def ended(self, session_id: str) -> None:
        if self.current.pop(session_id, None) is not None:
            self._save()

    def _save(self) -> None:
        write_atomic(self.path, json.dumps({"worker_id": self.worker_id, "sessions": self.current}))
