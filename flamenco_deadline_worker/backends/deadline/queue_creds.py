"""Queue role credentials (AssumeQueueRoleForWorker) handed to session processes.

They are written to a file (0600) that an AWS config profile reads through ``credential_process``,
so a long-running process picks up refreshed credentials; the fleet role's never reach a session.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shlex
from pathlib import Path
from typing import Any

from flamenco_deadline_worker import logs
from flamenco_deadline_worker.atomicfile import write_atomic
from flamenco_deadline_worker.backends.deadline.api import ApiError, DeadlineApi, Retryable

log = logging.getLogger(__name__)
REFRESH_MARGIN = 20 * 60


class QueueCredentials:
    def __init__(self, api: DeadlineApi, ids: dict[str, Any], directory: Path) -> None:
        self.api = api
        self.ids = ids
        self.directory = directory
        self.queue_id: str | None = None
        self.expiry: dt.datetime | None = None
        self.available = False

    def env(self) -> dict[str, str]:
        """Variables for session processes (empty when the queue has no role)."""
        if not self.available or self.queue_id is None:
            return {}
        base = self.directory / self.queue_id
        return {
            "AWS_CONFIG_FILE": str(base / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(base / "credentials"),
            "AWS_PROFILE": f"deadline-{self.queue_id}",
        }

    def due(self) -> bool:
        return (
            self.expiry is not None
            and (self.expiry - dt.datetime.now(dt.timezone.utc)).total_seconds() < REFRESH_MARGIN
        )

    async def ensure(self, queue_id: str, has_role: bool) -> str | None:
        """Credentials for ``queue_id``; None when all is well, else a message for the session log."""
        if queue_id != self.queue_id:
            self.forget()
            self.queue_id = queue_id
        if not has_role:
            return "AWS credentials are not available to this session: the queue has no IAM role."
        if self.available and not self.due():
            return None
        try:
            answer = await self.api.call_retrying(
                "assume_queue_role_for_worker", give_up_after=60, **self.ids, queueId=queue_id
            )
        except (ApiError, Retryable) as exc:
            self.forget()
            self.queue_id = queue_id
            return f"AWS credentials are not available to this session: AssumeQueueRoleForWorker failed: {exc}"
        creds = answer.get("credentials")
        if not creds:
            self.forget()
            self.queue_id = queue_id
            return "AWS credentials are not available to this session: the queue has no IAM role."
        self._write(queue_id, creds)
        return None

    def _write(self, queue_id: str, creds: dict[str, Any]) -> None:
        base = self.directory / queue_id
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        expiry: dt.datetime = creds["expiration"]
        document = {
            "Version": 1,
            "AccessKeyId": creds["accessKeyId"],
            "SecretAccessKey": creds["secretAccessKey"],
            "SessionToken": creds["sessionToken"],
            "Expiration": expiry.isoformat(),
        }
        logs.add_secret(creds["secretAccessKey"])
        logs.add_secret(creds["sessionToken"])
        write_atomic(base / "credentials.json", json.dumps(document), 0o600)
        process = f"cat {shlex.quote(str(base / 'credentials.json'))}"
        write_atomic(base / "config", f"[profile deadline-{queue_id}]\ncredential_process = {process}\n", 0o600)
        write_atomic(base / "credentials", "", 0o600)
        self.expiry = expiry
        self.available = True

    def forget(self) -> None:
        if self.queue_id is not None:
            for name in ("credentials.json", "config", "credentials"):
                (self.directory / self.queue_id / name).unlink(missing_ok=True)
        self.queue_id, self.expiry, self.available = None, None, False
