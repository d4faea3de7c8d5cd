"""AWS Deadline Cloud backend: the worker API protocol, OpenJD sessions, CloudWatch session logs.

Imported only when the Deadline backend is chosen (extra ``deadline``: boto3, openjd-model,
openjd-sessions); this module imports none of them until ``run_deadline_worker`` runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from flamenco_deadline_worker.backends.deadline.api import DeadlineApi
    from flamenco_deadline_worker.config import WorkerConfig
    from flamenco_deadline_worker.presence import StatusPublisher

log = logging.getLogger(__name__)


async def run_deadline_worker(config: WorkerConfig, stop_event: asyncio.Event) -> int:
    """Run as a worker of ``config.farm_id``/``config.fleet_id`` until stopped; the exit code."""
    try:
        # First: openjd imported with its pydantic validators built on first use (see ojd).
        from flamenco_deadline_worker.backends.deadline import (
            ojd,  # noqa: F401
            startup,
        )
        from flamenco_deadline_worker.backends.deadline.agent import EXIT_FATAL, DeadlineAgent
        from flamenco_deadline_worker.backends.deadline.api import DeadlineApi
    except ImportError as exc:
        log.error("the Deadline backend needs the 'deadline' extra (boto3, openjd-model, openjd-sessions): %s", exc)
        return 2
    if not config.farm_id or not config.fleet_id:
        log.error("the Deadline backend needs farm_id and fleet_id (--farm-id, --fleet-id)")
        return 2
    from flamenco_deadline_worker.presence import service_presence
    from flamenco_deadline_worker.upstream.homelock import HomeError, HomeLock

    try:
        home_lock = HomeLock.acquire(config.home)  # one worker per home; freed when this run returns
    except HomeError as exc:
        log.error("%s", exc)
        return 2

    # botocore's own debug logging prints whole answers, credentials included: never let it through.
    for name in ("botocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    region = (
        config.deadline_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    )
    api = DeadlineApi(region or None)
    startup.hide_host_credentials()
    state_file = config.home / "deadline-worker.json"
    service = f"Deadline Cloud farm {config.farm_id}, fleet {config.fleet_id}"
    agent: DeadlineAgent | None = None

    def healthy() -> bool:
        return agent is None or agent.healthy()

    async with service_presence(config, stop_event, healthy=healthy) as publisher:
        progress = StartUp()
        starting = asyncio.ensure_future(progress.run(api, config, state_file, publisher, service))
        stopping = asyncio.ensure_future(stop_event.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            # SIGTERM while CreateWorker or STARTED is still being retried (an outage, a fleet being
            # created): stop now, not after the service answers.
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            log.info("stop asked during start-up (%s): exiting before taking work", progress.step)
            if progress.started_sent:
                await startup.set_status(api, progress.ids, "STOPPED", budget=10)
            api.close()
            publisher.exit_code = 0
            return 0
        try:
            worker_id = starting.result()
        except startup.StartupFailed as exc:
            log.error("%s", exc)
            api.close()
            publisher.exit_code = EXIT_FATAL
            return EXIT_FATAL
        ids = progress.ids
        log.info("worker %s STARTED in farm %s, fleet %s", worker_id, config.farm_id, config.fleet_id)
        publisher.signed_on(worker_id)
        publisher.state("started")
        agent = DeadlineAgent(
            api,
            ids,
            queue_db=config.task_update_queue_db,
            logs_dir=config.logs_dir,
            session_root=config.session_root_dir,
            push_log_max_bytes=config.push_log_max_bytes,
            push_log_max_interval=config.push_log_max_interval_seconds,
            drain_seconds=max(5.0, config.shutdown_flush_seconds),
            ledger_file=config.home / "deadline-sessions.json",
            delete_on_stop=config.deadline_delete_worker_on_stop,
            publisher=publisher,
        )
        queue = agent.queue
        queue.on_problem = publisher.queue_problem
        publisher.metrics_source = lambda: {
            "queue_backlog_bytes": queue.backlog_bytes,
            "delivered_updates": queue.delivered_updates,
            "sessions": len(agent.sessions) if agent is not None else 0,
        }
        try:
            publisher.exit_code = await agent.run(stop_event)
            if agent.deleted:
                state_file.unlink(missing_ok=True)
            return publisher.exit_code
        finally:
            api.close()
            home_lock.release()
    return EXIT_FATAL  # not reached: the block above returns


class StartUp:
    """The start-up steps (CreateWorker or the saved id, AssumeFleetRoleForWorker, UpdateWorker
    STARTED), with how far they got, so a stop in the middle knows what to undo."""

    def __init__(self) -> None:
        self.step = "not begun"
        self.ids: dict[str, str] = {}
        self.started_sent = False

    async def run(
        self, api: DeadlineApi, config: WorkerConfig, state_file: Path, publisher: StatusPublisher, service: str
    ) -> str:
        from flamenco_deadline_worker import records
        from flamenco_deadline_worker.backends.deadline import startup

        worker_id = startup.load_worker_id(state_file, config.farm_id, config.fleet_id)
        if worker_id is None:
            self.step = "CreateWorker"
            publisher.waiting(self.step)
            worker_id = await startup.create_worker(api, config.farm_id, config.fleet_id)
            startup.save_worker_id(state_file, config.farm_id, config.fleet_id, worker_id)
            records.worker_create(worker_id, service, farm_id=config.farm_id, fleet_id=config.fleet_id)
        else:
            records.worker_load(worker_id, state_file, farm_id=config.farm_id, fleet_id=config.fleet_id)
        publisher.data["worker_id"] = worker_id
        self.ids = {"farmId": config.farm_id, "fleetId": config.fleet_id, "workerId": worker_id}
        self.step = "AssumeFleetRoleForWorker, UpdateWorker STARTED"
        publisher.waiting(self.step)
        await startup.assume_fleet_role(api, self.ids)
        self.started_sent = True
        await startup.set_started(api, self.ids)
        return worker_id
