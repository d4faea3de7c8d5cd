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
    from flamenco_deadline_worker.config import WorkerConfig

log = logging.getLogger(__name__)


async def run_deadline_worker(config: WorkerConfig, stop_event: asyncio.Event) -> int:
    """Run as a worker of ``config.farm_id``/``config.fleet_id`` until stopped; the exit code."""
    try:
        # openjd first, before anything else imports it (see ojd).
        from flamenco_deadline_worker.backends.deadline import (
            ojd,  # noqa: F401
            startup,
        )
        from flamenco_deadline_worker.backends.deadline.api import DeadlineApi
        from flamenco_deadline_worker.backends.deadline.service import DeadlineService
    except ImportError as exc:
        log.error("the Deadline backend needs the 'deadline' extra (boto3, openjd-model, openjd-sessions): %s", exc)
        return 2
    if not config.farm_id or not config.fleet_id:
        log.error("the Deadline backend needs farm_id and fleet_id (--farm-id, --fleet-id)")
        return 2
    from flamenco_deadline_worker.core.lifecycle import live
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
    api = DeadlineApi(region or None, config.home / "flamenco-worker-botocore")
    startup.hide_host_credentials()
    state_file = config.home / "deadline-worker.json"
    running: list[DeadlineService] = []

    def healthy() -> bool:
        return not running or running[0].healthy()

    async with service_presence(config, stop_event, healthy=healthy) as publisher:
        from flamenco_deadline_worker import private

        private.touch(config.task_update_queue_db)  # private queue (SQLite's -wal and -shm follow it)
        service = DeadlineService(api, config, publisher, state_file)
        running.append(service)
        publisher.metrics_source = service.metrics
        try:
            drain_seconds = max(5.0, config.shutdown_flush_seconds)
            publisher.exit_code = await live(service, stop_event, service.flush, drain_seconds)
            if service.shutdown_failed:
                publisher.exit_code = 1  # deadline_shutdown_on_stop could not shut the host down
            if service.agent is not None and service.agent.deleted:
                state_file.unlink(missing_ok=True)
            return publisher.exit_code
        finally:
            await service.close()
            api.close()
            home_lock.release()
    return 1  # not reached: the block above returns
