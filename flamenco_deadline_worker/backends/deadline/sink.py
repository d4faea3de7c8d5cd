"""Where the TaskUpdateQueue delivers Deadline updates.

Queue domains: a session id carries its action statuses, in order (Update.action_id names the
action); ``log:<session>:<queue>:<group>:<stream>`` carries a session's log, with everything
needed to deliver it after a restart.  Every ready session's statuses go in one
UpdateWorkerSchedule; each log piece is one PutLogEvents call (the queue keeps pieces within its
limits) and is also appended to ``<logs>/<queue-id>/<session-id>.log``.  ``agentlog:<group>:<stream>``
carries the agent's own log (see agentlog.py) to the stream UpdateWorker named, CloudWatch only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flamenco_deadline_worker import private
from flamenco_deadline_worker.backends.deadline.api import ApiError, DeadlineApi, Retryable
from flamenco_deadline_worker.backends.deadline.schedule import Schedule
from flamenco_deadline_worker.backends.deadline.timestamps import for_botocore
from flamenco_deadline_worker.core.model import Delivery, DeliveryResult, Head

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 1_048_576
MAX_BATCH_EVENTS = 10_000
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD
STREAM_CALL_INTERVAL = 0.21  # 5 PutLogEvents per second per stream, with a little margin
LOG_PREFIX = "log:"
AGENT_LOG_PREFIX = "agentlog:"
SCHEDULE_KEY = "schedule"


def log_key(session_id: str, queue_id: str, group: str, stream: str) -> str:
    """The queue domain of a session's log (CloudWatch names hold no ':')."""
    return f"{LOG_PREFIX}{session_id}:{queue_id}:{group}:{stream}"


def agent_log_key(group: str, stream: str) -> str:
    """The queue domain of the agent's own log (UpdateWorker's ``log`` options)."""
    return f"{AGENT_LOG_PREFIX}{group}:{stream}"


def parse_log_key(key: str) -> tuple[str, str, str, str]:
    session_id, queue_id, group, stream = key[len(LOG_PREFIX):].split(":", 3)
    return session_id, queue_id, group, stream


class DeadlineSink:
    max_log_lines: int | None = 9_000  # CloudWatch takes 10,000 events a call; very long lines become several

    def __init__(self, api: DeadlineApi, schedule: Schedule, logs_dir: Path) -> None:
        self.api = api
        self.schedule = schedule
        self.logs_dir = logs_dir
        self._last_call: dict[str, float] = {}
        self._written: dict[str, str] = {}  # log domain -> digest of a piece written locally, not yet sent

    def batch_key(self, task_id: str) -> str:
        return task_id if task_id.startswith((LOG_PREFIX, AGENT_LOG_PREFIX)) else SCHEDULE_KEY

    async def deliver(self, heads: Sequence[Head]) -> list[DeliveryResult]:
        if heads and heads[0].task_id.startswith(LOG_PREFIX):
            return [await self._deliver_log(head) for head in heads]
        if heads and heads[0].task_id.startswith(AGENT_LOG_PREFIX):
            return [await self._deliver_agent_log(head) for head in heads]
        return await self._deliver_statuses(heads)

    # ---- action statuses -----------------------------------------------------------------

    async def _deliver_statuses(self, heads: Sequence[Head]) -> list[DeliveryResult]:
        updates: dict[str, dict[str, Any]] = {}
        for head in heads:  # sessions in queue order, each session's actions in order
            for update in head.updates:
                updates[update.action_id] = {**updates.get(update.action_id, {}), **update.extra}
        try:
            await self.schedule.call({action_id: for_botocore(update) for action_id, update in updates.items()})
        except Retryable as exc:
            return [DeliveryResult(Delivery.RETRY, str(exc), retry_after=exc.retry_after)] * len(heads)
        except ApiError as exc:
            if exc.code == "ValidationException":
                if len(heads) > 1:  # find the session whose update is refused; the others go through
                    return [(await self._deliver_statuses([head]))[0] for head in heads]
                return [DeliveryResult(Delivery.REJECTED, str(exc))]
            if exc.code in ("ThrottlingException", "ConflictException"):
                return [DeliveryResult(Delivery.RETRY, str(exc), retry_after=1.0)] * len(heads)
            return [DeliveryResult(Delivery.RETRY, str(exc), retry_after=5.0)] * len(heads)
        return [DeliveryResult.ok(len(head.updates)) for head in heads]

    # ---- session logs --------------------------------------------------------------------

    async def _deliver_log(self, head: Head) -> DeliveryResult:
        session_id, queue_id, group, stream = parse_log_key(head.task_id)
        local = self.logs_dir / queue_id / f"{session_id}.log"
        for index, update in enumerate(head.updates):
            text = update.log
            digest = hashlib.sha1(text.encode()).hexdigest()
            if self._written.get(head.task_id) != digest:  # a retried piece is in the file already
                await asyncio.to_thread(_append, local, text)
                self._written[head.task_id] = digest
            if group and stream:
                result = await self._put_events(head.task_id, group, stream, text)
                if result is not None:
                    return DeliveryResult(result.outcome, result.reason, result.retry_after, delivered=index)
            self._written.pop(head.task_id, None)
        return DeliveryResult.ok(len(head.updates))

    async def _deliver_agent_log(self, head: Head) -> DeliveryResult:
        """The agent's own log: already in its local file (worker-agent.log), so CloudWatch only."""
        group, stream = head.task_id[len(AGENT_LOG_PREFIX):].split(":", 1)
        for index, update in enumerate(head.updates):
            result = await self._put_events(head.task_id, group, stream, update.log)
            if result is not None:
                return DeliveryResult(result.outcome, result.reason, result.retry_after, delivered=index)
        return DeliveryResult.ok(len(head.updates))

    async def _put_events(self, key: str, group: str, stream: str, text: str) -> DeliveryResult | None:
        for events in batches(text):
            wait = self._last_call.get(key, 0.0) + STREAM_CALL_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_call[key] = time.monotonic()
            try:
                await self.api.call("put_log_events", logGroupName=group, logStreamName=stream, logEvents=events)
            except Retryable as exc:
                return DeliveryResult(Delivery.RETRY, str(exc), retry_after=exc.retry_after)
            except ApiError as exc:
                if exc.code == "ThrottlingException":
                    return DeliveryResult(Delivery.RETRY, str(exc), retry_after=1.0)
                if exc.code == "ResourceNotFoundException":
                    return DeliveryResult(Delivery.REJECTED, f"CloudWatch Logs has no {group}/{stream}: {exc}")
                refused = f"CloudWatch Logs refused the log events for {group}/{stream}: {exc}"
                return DeliveryResult(Delivery.RETRY, refused, retry_after=5.0)
        return None


def _append(path: Path, text: str) -> None:
    private.make_dirs(path.parent)
    with open(path, "a", encoding="utf-8", opener=private.opener) as f:
        f.write(text)


def batches(text: str) -> list[list[dict[str, Any]]]:
    """PutLogEvents batches of ``text``, one event a line (a line over the event limit becomes several)."""
    now_ms = int(time.time() * 1000)
    out: list[list[dict[str, Any]]] = []
    events: list[dict[str, Any]] = []
    size = 0
    for line in text.splitlines():
        message = line or " "
        pieces = [message]
        if len(message.encode()) > MAX_EVENT_BYTES:
            raw = message.encode()
            pieces = [
                raw[i : i + MAX_EVENT_BYTES].decode(errors="replace") for i in range(0, len(raw), MAX_EVENT_BYTES)
            ]
        for piece in pieces:
            cost = len(piece.encode()) + EVENT_OVERHEAD
            if events and (size + cost > MAX_BATCH_BYTES or len(events) >= MAX_BATCH_EVENTS):
                out.append(events)
                events, size = [], 0
            events.append({"timestamp": now_ms, "message": piece})
            size += cost
    if events:
        out.append(events)
    return out
