"""Queue role credentials (AssumeQueueRoleForWorker) handed to session processes.

They are written to a file (0600) that an AWS config profile reads through ``credential_process``,
so a long-running process picks up refreshed credentials; the fleet role's never reach a session.
When the session runs as a queue's job user, the queue's directory and files belong to that user's
group (0750 and 0640): the agent and the job user read them, no one else.  ``credentials/`` itself
is 0711, so a job user can pass through it without listing the queues.
"""

from __future__ import annotations

import datetime as dt
import grp
import json
import logging
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flamenco_deadline_worker.atomicfile import write_atomic
from flamenco_deadline_worker.backends.deadline.api import ApiError, DeadlineApi, Retryable

log = logging.getLogger(__name__)
REFRESH_MARGIN = 20 * 60
RETRY_SECONDS = 60.0  # after a failed refresh, while the old credentials still hold


class QueueCredentials:
    def __init__(self, api: DeadlineApi, ids: dict[str, Any], directory: Path) -> None:
        self.api = api
        self.ids = ids
        self.directory = directory
        self.queue_id: str | None = None
        self.expiry: dt.datetime | None = None
        self.available = False
        self.group: str | None = None  # the job user's group that may read them; None: the agent only
        self._retry_at = 0.0  # monotonic time before which a failed refresh is not tried again

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

    def refresh_due(self) -> bool:
        return self.available and self.due() and time.monotonic() >= self._retry_at

    async def refresh(self) -> None:
        """New credentials for the queue in use, written over the old ones well before they expire:
        a running session's processes (through credential_process) and its attachments read them
        from the file.  On failure the old ones stay and the refresh is tried again later."""
        queue_id = self.queue_id
        if queue_id is None or not self.refresh_due():
            return
        try:
            answer = await self.api.call_retrying(
                "assume_queue_role_for_worker", give_up_after=60, **self.ids, queueId=queue_id
            )
            creds = answer.get("credentials")
            if not creds:
                raise KeyError("the answer holds no credentials")
            if queue_id == self.queue_id:  # not a new session's queue meanwhile
                self._write(queue_id, creds, self.group)
        except (ApiError, Retryable, OSError, KeyError) as exc:
            self._retry_at = time.monotonic() + RETRY_SECONDS
            log.warning("could not refresh the queue role credentials of %s yet (they expire at %s): %s",
                        queue_id, self.expiry, exc)
            return
        log.info("queue role credentials of %s refreshed; they expire at %s", queue_id, self.expiry)

    async def ensure(self, queue_id: str, has_role: bool, group: str | None = None) -> str | None:
        """Credentials for ``queue_id``, readable by ``group`` too when given (the job user's); None
        when all is well, else a message for the session log."""
        if queue_id != self.queue_id:
            self.forget()
            self.queue_id = queue_id
        if not has_role:
            return "AWS credentials are not available to this session: the queue has no IAM role."
        if self.available and not self.due():
            if group != self.group:
                try:
                    self._share(queue_id, group)
                except (OSError, KeyError) as exc:
                    return _share_failed(group, exc)
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
        try:
            self._write(queue_id, creds, group)
        except (OSError, KeyError) as exc:
            self.forget()
            self.queue_id = queue_id
            return _share_failed(group, exc)
        return None

    def _write(self, queue_id: str, creds: dict[str, Any], group: str | None = None) -> None:
        base = self._queue_dir(queue_id, group)
        expiry: dt.datetime = creds["expiration"]
        document = {
            "Version": 1,
            "AccessKeyId": creds["accessKeyId"],
            "SecretAccessKey": creds["secretAccessKey"],
            "SessionToken": creds["sessionToken"],
            "Expiration": expiry.isoformat(),
        }
        self.api.agent_log.hide(creds["secretAccessKey"])
        self.api.agent_log.hide(creds["sessionToken"])
        share = _sharer(group)
        write_atomic(base / "credentials.json", json.dumps(document), 0o600, prepare=share)
        process = f"cat {shlex.quote(str(base / 'credentials.json'))}"
        write_atomic(
            base / "config", f"[profile deadline-{queue_id}]\ncredential_process = {process}\n", 0o600, prepare=share
        )
        write_atomic(base / "credentials", "", 0o600, prepare=share)
        self.expiry = expiry
        self.available = True
        self.group = group

    def _queue_dir(self, queue_id: str, group: str | None) -> Path:
        """``credentials/<queue>/``: 0700, or 0750 of the job user's group (set before it is opened up)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o711)
        base = self.directory / queue_id
        base.mkdir(exist_ok=True, mode=0o700)
        os.chmod(base, 0o700)
        if group is not None:
            os.chown(base, -1, grp.getgrnam(group).gr_gid)
            os.chmod(base, 0o750)
        return base

    def _share(self, queue_id: str, group: str | None) -> None:
        """The written files handed to another group (the queue's job user changed, or none now)."""
        base = self._queue_dir(queue_id, group)
        share = _sharer(group)
        for name in ("credentials.json", "config", "credentials"):
            if group is None:
                os.chmod(base / name, 0o600)
            share(base / name)
        self.group = group

    def forget(self) -> None:
        if self.queue_id is not None:
            for name in ("credentials.json", "config", "credentials"):
                (self.directory / self.queue_id / name).unlink(missing_ok=True)
        self.queue_id, self.expiry, self.available, self.group = None, None, False, None


def _sharer(group: str | None) -> Callable[[Path], None]:
    """What makes a credentials file readable by ``group`` (nothing when None): group first, then
    the mode, so the file is never readable by the agent's own group on the way."""

    def share(path: Path) -> None:
        if group is not None:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
            os.chmod(path, 0o640)

    return share


def _share_failed(group: str | None, exc: OSError | KeyError) -> str:
    return (
        f"AWS credentials are not available to this session: they cannot be made readable by the job "
        f"user's group {group!r}: {exc}"
    )
