"""Where the TaskUpdateQueue delivers Deadline updates.

Queue task ids are ``<session-id>/<action-id>`` for action status and ``<session-id>/log`` for the
session log.  Status goes into the ``updatedSessionActions`` of the next UpdateWorkerSchedule and
counts as delivered once the service accepted that call.  Log text goes to CloudWatch Logs
(PutLogEvents within its limits) and to ``<logs>/<queue-id>/<session-id>.log``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from flamenco_deadline_worker import private
from flamenco_deadline_worker.backends.base import Delivery, DeliveryResult, Update
from flamenco_deadline_worker.backends.deadline.api import ApiError, DeadlineApi, Retryable

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 1_048_576
MAX_BATCH_EVENTS = 10_000
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD
STREAM_CALL_INTERVAL = 0.21  # 5 PutLogEvents per second per stream, with a little margin
STATUS_WAIT = 20.0


@attrs.define
class LogTarget:
    group: str
    stream: str
    local: Path


class PendingUpdates:
    """Action updates waiting for the next UpdateWorkerSchedule, and the deliveries awaiting it."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._seq = 0
        self._pending: dict[str, tuple[int, dict[str, Any]]] = {}
        self._waiters: list[tuple[int, asyncio.Future[DeliveryResult]]] = []

    def add(self, action_id: str, info: dict[str, Any]) -> asyncio.Future[DeliveryResult]:
        self._seq += 1
        old = self._pending.get(action_id, (0, {}))[1]
        self._pending[action_id] = (self._seq, {**old, **info})
        future: asyncio.Future[DeliveryResult] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._seq, future))
        self._wake()
        return future

    def snapshot(self) -> tuple[int, dict[str, dict[str, Any]]]:
        return self._seq, {k: dict(v) for k, (_, v) in self._pending.items()}

    def settle(self, upto: int, result: DeliveryResult) -> None:
        """The call carrying everything up to ``upto`` got an answer: tell those deliveries."""
        self._pending = {k: v for k, v in self._pending.items() if v[0] > upto}
        keep = []
        for seq, future in self._waiters:
            if seq <= upto:
                if not future.done():
                    future.set_result(result)
            else:
                keep.append((seq, future))
        self._waiters = keep

    def __bool__(self) -> bool:
        return bool(self._pending)


class DeadlineSink:
    def __init__(self, api: DeadlineApi, pending: PendingUpdates) -> None:
        self.api = api
        self.pending = pending
        self.targets: dict[str, LogTarget] = {}  # session id -> where its log goes
        self._last_call: dict[str, float] = {}
        self._written: dict[tuple[str, str], tuple[int, str]] = {}  # (kind, task) -> (chars, digest)
        self._finals: dict[str, set[int]] = {}  # session -> actions whose final status is not delivered yet

    def final_status_queued(self, session_id: str, action_id: str) -> None:
        """A session reported an action's end: later actions' updates must not overtake it."""
        self._finals.setdefault(session_id, set()).add(_index(action_id))

    async def deliver(self, update: Update) -> DeliveryResult:
        session_id, _, action_id = update.task_id.partition("/")
        if action_id == "log":
            return await self._deliver_log(session_id, update.log)
        index = _index(action_id)
        finals = self._finals.get(session_id, set())
        if any(i < index for i in finals):
            return DeliveryResult(Delivery.RETRY, "an earlier action's end goes first", retry_after=0.05)
        info = dict(update.extra)
        future = self.pending.add(action_id, info)
        try:
            result = await asyncio.wait_for(asyncio.shield(future), STATUS_WAIT)
        except asyncio.TimeoutError:
            return DeliveryResult(Delivery.RETRY, "UpdateWorkerSchedule has not succeeded yet")
        if result.outcome is not Delivery.RETRY and "completedStatus" in info:
            finals.discard(index)
        return result

    # ---- logs ----------------------------------------------------------------------------

    def _unwritten(self, kind: str, task_id: str, text: str) -> str:
        """The part of ``text`` not yet written: a retried update starts with what went before."""
        done, digest = self._written.get((kind, task_id), (0, ""))
        if done and len(text) >= done and hashlib.sha1(text[:done].encode()).hexdigest() == digest:
            return text[done:]
        return text

    def _mark_written(self, kind: str, task_id: str, text: str, upto: int) -> None:
        self._written[(kind, task_id)] = (upto, hashlib.sha1(text[:upto].encode()).hexdigest())

    async def _deliver_log(self, session_id: str, text: str) -> DeliveryResult:
        target = self.targets.get(session_id)
        task_id = f"{session_id}/log"
        if target is None:
            return DeliveryResult(Delivery.REJECTED, f"no log configuration known for session {session_id}")
        local = self._unwritten("file", task_id, text)
        if local:
            private.make_dirs(target.local.parent)
            await asyncio.to_thread(_append, target.local, local)
            self._mark_written("file", task_id, text, len(text))
        remaining = self._unwritten("cwl", task_id, text)
        offset = len(text) - len(remaining)
        for events, consumed in batches(remaining):
            wait = self._last_call.get(session_id, 0.0) + STREAM_CALL_INTERVAL - time.monotonic()
            if wait > 0:
                if wait > 1.0:
                    return DeliveryResult(Delivery.RETRY, "stream rate limit", retry_after=wait)
                await asyncio.sleep(wait)
            self._last_call[session_id] = time.monotonic()
            try:
                await self.api.call(
                    "put_log_events", logGroupName=target.group, logStreamName=target.stream, logEvents=events
                )
            except Retryable as exc:
                return DeliveryResult(Delivery.RETRY, str(exc), retry_after=exc.retry_after)
            except ApiError as exc:
                if exc.code == "ThrottlingException":
                    return DeliveryResult(Delivery.RETRY, str(exc), retry_after=1.0)
                return DeliveryResult(Delivery.REJECTED, f"CloudWatch Logs refused the session log: {exc}")
            offset += consumed
            self._mark_written("cwl", task_id, text, offset)
        self._written.pop(("cwl", task_id), None)
        self._written.pop(("file", task_id), None)
        return DeliveryResult.delivered()


def _index(action_id: str) -> int:
    try:
        return int(action_id.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8", opener=private.opener) as f:
        f.write(text)


def batches(text: str) -> list[tuple[list[dict[str, Any]], int]]:
    """PutLogEvents batches of ``text`` (one event a line) and how many characters each consumes."""
    now_ms = int(time.time() * 1000)
    out: list[tuple[list[dict[str, Any]], int]] = []
    events: list[dict[str, Any]] = []
    size = consumed = 0
    for line in text.splitlines(keepends=True):
        message = line.rstrip("\n") or " "
        pieces = [message]
        if len(message.encode()) > MAX_EVENT_BYTES:
            raw = message.encode()
            pieces = [
                raw[i : i + MAX_EVENT_BYTES].decode(errors="replace") for i in range(0, len(raw), MAX_EVENT_BYTES)
            ]
        for piece in pieces:
            cost = len(piece.encode()) + EVENT_OVERHEAD
            if events and (size + cost > MAX_BATCH_BYTES or len(events) >= MAX_BATCH_EVENTS):
                out.append((events, consumed))
                events, size, consumed = [], 0, 0
            events.append({"timestamp": now_ms, "message": piece})
            size += cost
        consumed += len(line)
    if events:
        out.append((events, consumed))
    return out
