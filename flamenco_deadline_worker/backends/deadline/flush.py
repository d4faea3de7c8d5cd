"""`flamenco-worker flush` for a stopped Deadline worker: its queued action statuses and session logs
delivered, then exit (the same exit codes as for Flamenco; see status.py).

Logs go to CloudWatch whatever the worker's status.  Statuses travel in UpdateWorkerSchedule, which
the service takes only from a worker that is online: flush sets the worker STOPPING first (so no new
work is assigned to a worker that is not running), delivers, then sets it STOPPED so the service
gives out whatever it still held.  When the service has already taken the worker's work back (it is
STOPPED, NOT_RESPONDING or deleted), the statuses can never be delivered: they are dropped, saying so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from flamenco_deadline_worker.backends.deadline import startup
from flamenco_deadline_worker.backends.deadline.api import ApiError, DeadlineApi, Retryable
from flamenco_deadline_worker.backends.deadline.schedule import Schedule
from flamenco_deadline_worker.backends.deadline.sink import LOG_PREFIX, DeadlineSink
from flamenco_deadline_worker.core.model import Delivery, DeliveryResult, Head
from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue

if TYPE_CHECKING:
    from flamenco_deadline_worker.config import WorkerConfig

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NOT_ALL_DELIVERED = 1
STATE_FILE = "deadline-worker.json"


class FlushSink:
    """The worker's own sink, except that statuses are dropped once the service cannot take them."""

    def __init__(self, inner: DeadlineSink, schedule: Schedule) -> None:
        self.inner = inner
        self.schedule = schedule
        self.max_log_lines = inner.max_log_lines
        self.refused: str | None = None  # why statuses can never be delivered (None: they can)
        self.hold = False  # STOPPING did not get through: no status goes to a worker that may get work
        self.dropped = 0

    def batch_key(self, task_id: str) -> str:
        return self.inner.batch_key(task_id)

    async def deliver(self, heads: Sequence[Head]) -> list[DeliveryResult]:
        if heads and heads[0].task_id.startswith(LOG_PREFIX):
            return await self.inner.deliver(heads)
        if self.hold:
            return [DeliveryResult(Delivery.RETRY, "the worker could not be set STOPPING", retry_after=60.0)] * len(
                heads
            )
        if self.refused is None:
            results = await self.inner.deliver(heads)
            conflict = self.schedule.conflict
            if conflict is None:
                return results
            self.refused = f"the service no longer has this worker online ({conflict})"
        self.dropped += sum(len(h.updates) for h in heads)
        return [DeliveryResult(Delivery.REJECTED, self.refused)] * len(heads)


def saved_ids(config: WorkerConfig) -> dict[str, str] | None:
    """farmId, fleetId and workerId the worker last ran as (its ``deadline-worker.json``)."""
    try:
        saved = json.loads((config.home / STATE_FILE).read_text(encoding="utf-8"))
        return {"farmId": str(saved["farm_id"]), "fleetId": str(saved["fleet_id"]),
                "workerId": str(saved["worker_id"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def flush_deadline(config: WorkerConfig, timeout: float, make_api: Callable[[], DeadlineApi]) -> int:
    """Deliver the queue of a stopped Deadline worker; ``make_api`` builds its clients (compose.deadline_api)."""
    ids = saved_ids(config)
    if ids is None:
        print(f"flamenco-worker flush: updates are queued but {config.home / STATE_FILE} names no Deadline "
              "Cloud worker (deleted, or never started); nothing can be delivered without it.", file=sys.stderr)
        return EXIT_NOT_ALL_DELIVERED
    deadline = time.monotonic() + timeout
    api = make_api()
    schedule = Schedule(api, ids)
    sink = FlushSink(DeadlineSink(api, schedule, config.logs_dir), schedule)
    queue = TaskUpdateQueue(config.task_update_queue_db, sink, push_log_max_bytes=config.push_log_max_bytes,
                            push_log_max_interval=0.0)
    await queue.open()
    drain: asyncio.Future[None] | None = None
    online = False
    try:
        before = await queue.backlog()
        print(f"delivering {before.count} queued update(s) to Deadline Cloud farm {ids['farmId']}, "
              f"fleet {ids['fleetId']}, as worker {ids['workerId']}", flush=True)
        problem = await _assume_fleet_role(api, ids, deadline - time.monotonic())
        if problem:
            print(f"flamenco-worker flush: {problem}; all {before.count} update(s) are still queued in "
                  f"{config.task_update_queue_db} for the next start or flush.", file=sys.stderr)
            return EXIT_NOT_ALL_DELIVERED
        if await _statuses_queued(queue):
            sink.refused, online = await _go_online(api, ids, deadline - time.monotonic())
            sink.hold = sink.refused is None and not online
        drain = asyncio.ensure_future(queue.run_drain())
        done = await queue.flush(max(0.0, deadline - time.monotonic()))
        after = await queue.backlog()
    finally:
        if drain is not None:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
        if online:  # give back whatever the service still held for this worker
            await startup.set_status(api, ids, "STOPPED", budget=max(5.0, deadline - time.monotonic()))
        await queue.close()
        api.close()
    if sink.dropped:
        print(f"flamenco-worker flush: {sink.dropped} action status update(s) dropped: {sink.refused}; the "
              "service has given those tasks to other workers already.", file=sys.stderr)
    if done:
        print(f"all {before.count} update(s) delivered or dropped ({queue.delivered_updates} delivered)")
        return EXIT_OK
    print(f"flamenco-worker flush: {after.count} update(s) still queued after {timeout:g} s; the service may be "
          f"unreachable (see the lines above). They stay in {config.task_update_queue_db} for the next start "
          "or flush.", file=sys.stderr)
    return EXIT_NOT_ALL_DELIVERED


async def _assume_fleet_role(api: DeadlineApi, ids: dict[str, Any], budget: float) -> str | None:
    """The fleet role's credentials for every later call; None, or why they cannot be had."""
    try:
        answer = await api.call_retrying("assume_fleet_role_for_worker", give_up_after=max(0.0, budget), **ids)
    except Retryable as exc:
        return f"the service did not answer in time ({exc})"
    except ApiError as exc:
        return f"AssumeFleetRoleForWorker failed: {exc}"
    api.use_fleet_credentials(answer["credentials"])
    return None


async def _statuses_queued(queue: TaskUpdateQueue) -> bool:
    return any(not task_id.startswith(LOG_PREFIX) for task_id, _ in await queue.store.heads(limit=100_000))


async def _go_online(api: DeadlineApi, ids: dict[str, Any], budget: float) -> tuple[str | None, bool]:
    """UpdateWorker STOPPING: (why statuses cannot be delivered or None, whether the worker is online)."""
    try:
        await api.call_retrying("update_worker", give_up_after=max(0.0, budget), **ids, status="STOPPING")
    except Retryable:
        return None, False  # unreachable: the statuses stay queued (the drain retries until the timeout)
    except ApiError as exc:
        if exc.code in ("ConflictException", "ResourceNotFoundException"):
            return f"the service no longer has this worker online ({exc})", False
        return None, False
    return None, True
