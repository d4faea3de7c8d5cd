"""The one composition root: puts the parts together for one worker run of either service.

Config, logs, queue, runner, backend and the worker loop are built here, and the operations side
(the agent log's records, the state file and systemd, the credentials file) is handed in here:
the core and the backends import none of it (tests/test_layers.py keeps it so).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from typing import TYPE_CHECKING

import attrs

from flamenco_deadline_worker import __version__, private, records
from flamenco_deadline_worker.config import SYSTEM_CONFIG, WorkerConfig
from flamenco_deadline_worker.presence import service_presence, state_file
from flamenco_deadline_worker.upstream.homelock import HomeError, HomeLock

if TYPE_CHECKING:
    # Each service's parts are imported where that service is put together: a Deadline worker loads
    # no Flamenco runner, a Flamenco worker no boto3.
    from flamenco_deadline_worker.backends.deadline.api import DeadlineApi
    from flamenco_deadline_worker.backends.flamenco import FlamencoBackend
    from flamenco_deadline_worker.runner.commands.base import FileRules
    from flamenco_deadline_worker.runner.process import ProcessLimits

log = logging.getLogger(__name__)

EXIT_NO_MANAGER = 6
ADAPTOR_CONNECTIONS_DIR = "adaptor-connections"


async def find_manager(config: WorkerConfig, stop_event: asyncio.Event) -> str | None:
    """The Manager's URL found by UPnP/SSDP, or None (logged) when none answers or we are told to stop."""
    from flamenco_deadline_worker.backends.flamenco_discovery import DiscoveryFailed, discover_manager

    search = asyncio.ensure_future(
        discover_manager(config.manager_discovery_address, config.manager_discovery_timeout_seconds)
    )
    stopper = asyncio.ensure_future(stop_event.wait())
    try:
        await asyncio.wait({search, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not search.done():
        search.cancel()
        await asyncio.gather(search, return_exceptions=True)
        return None
    try:
        return search.result()
    except DiscoveryFailed as exc:
        log.error("%s", exc)
        return None


def adaptor_connection_env(config: WorkerConfig) -> dict[str, str]:
    """Environment for task processes: the worker's own directory for adaptor connection files.

    A relative ``--connection-file`` of an adaptor lands there, so two workers on one host never
    share an adaptor daemon.  With job_user the directory becomes that user's (as root), or is left
    out when the worker cannot hand it over (sudo resets the environment anyway).
    """
    import shutil

    from flamenco_deadline_worker.adaptor.protocol import CONNECTION_DIR_ENV

    directory = config.home / ADAPTOR_CONNECTIONS_DIR
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if config.job_user:
            if os.geteuid() != 0:
                return {}
            shutil.chown(directory, user=config.job_user)
    except (OSError, LookupError) as exc:
        log.warning("cannot prepare %s for adaptor connection files (%s); adaptors use their working "
                    "directory instead", directory, exc)
        return {}
    return {CONNECTION_DIR_ENV: str(directory)}


def process_limits(config: WorkerConfig) -> ProcessLimits:
    from flamenco_deadline_worker.runner.process import ProcessLimits

    return ProcessLimits(
        command_timeout=config.command_timeout_seconds or None,
        no_output_timeout=config.no_output_timeout_seconds or None,
        kill_grace=config.kill_grace_seconds,
        oom_score_adj=config.oom_score_adj,
    )


def file_rules(config: WorkerConfig) -> FileRules:
    """File commands act in the work directory and ``file_command_roots``, never on the worker's own files."""
    from flamenco_deadline_worker.runner import containment
    from flamenco_deadline_worker.runner.commands.base import FileRules

    db = str(config.task_update_queue_db)
    protected = (
        str(config.home_config), db, db + "-wal", db + "-shm", db + "-journal", str(config.logs_dir),
        str(state_file(config)), str(config.home / containment.RECORD_NAME), str(SYSTEM_CONFIG.parent),
    )
    return FileRules(roots=(str(config.work_dir), *config.file_command_roots), protected=protected)


def flamenco_backend(config: WorkerConfig, *, reregister: bool = False) -> FlamencoBackend:
    """The Flamenco backend with the agent log and the worker's config file (for its keys) handed in."""
    from flamenco_deadline_worker.backends.flamenco import FlamencoBackend
    from flamenco_deadline_worker.credentials import save_keys

    return FlamencoBackend(
        config, records, functools.partial(save_keys, config.home_config), reregister=reregister
    )


def deadline_api(config: WorkerConfig) -> DeadlineApi:
    """The Deadline worker API and CloudWatch Logs clients, with the agent log handed in."""
    from flamenco_deadline_worker.backends.deadline.api import DeadlineApi

    # botocore's own debug logging prints whole answers, credentials included: never let it through.
    for name in ("botocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    region = config.deadline_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return DeadlineApi(region or None, records, config.home / "flamenco-worker-botocore")


async def run_flamenco(
    config: WorkerConfig, stop_event: asyncio.Event, *, single: bool = False, reregister: bool = False
) -> int:
    from flamenco_deadline_worker.core.worker import FlamencoWorker
    from flamenco_deadline_worker.node_checks import NodeChecks
    from flamenco_deadline_worker.runner import containment
    from flamenco_deadline_worker.runner.process import RunAs
    from flamenco_deadline_worker.runner.runner import TaskRunner
    from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue

    if not config.manager_url:
        found = await find_manager(config, stop_event)
        if found is None:
            return 0 if stop_event.is_set() else EXIT_NO_MANAGER
        config = attrs.evolve(config, manager_url=found)
    log.info(
        "flamenco-deadline-worker %s starting: manager %s, home %s, queue %s",
        __version__, config.manager_url, config.home, config.task_update_queue_db,
    )
    try:
        home_lock = HomeLock.acquire(config.home)  # one worker per home, for this run's whole life
    except HomeError as exc:
        log.error("%s", exc)
        return 2
    backend = flamenco_backend(config, reregister=reregister)
    private.touch(config.task_update_queue_db)  # SQLite gives its -wal and -shm files this file's mode
    queue = TaskUpdateQueue(
        config.task_update_queue_db,
        backend,
        push_log_max_bytes=config.push_log_max_bytes,
        push_log_max_interval=config.push_log_max_interval_seconds,
    )
    await queue.open()
    # Before any task runs: processes a killed worker left behind on this home are found and killed.
    holder = containment.setup(config.home, config.process_containment)
    runner = TaskRunner(
        queue,
        agent_log=records,
        work_root=config.work_dir,
        logs_dir=config.logs_dir,
        limits=process_limits(config),
        run_as=RunAs(config.job_user) if config.job_user else None,
        activity_interval=config.push_act_max_interval_seconds,
        file_rules=file_rules(config),
        task_env=adaptor_connection_env(config),
    )
    worker = FlamencoWorker(config, backend, queue, runner, single=single)
    worker.stop_event = stop_event
    worker.node_checks = NodeChecks.from_config(config)
    drain = asyncio.ensure_future(queue.run_drain())
    async with service_presence(config, stop_event, healthy=lambda: not drain.done()) as publisher:
        worker.publisher = publisher
        queue.on_problem = publisher.queue_problem
        publisher.metrics_source = lambda: {
            "queue_backlog_bytes": queue.backlog_bytes, "delivered_updates": queue.delivered_updates,
        }
        try:
            publisher.exit_code = await worker.run()
            return publisher.exit_code
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            await queue.close()
            await backend.close()
            holder.close()
            home_lock.release()


async def run_deadline(config: WorkerConfig, stop_event: asyncio.Event) -> int:
    """Run as a Deadline Cloud worker of ``config.farm_id``/``config.fleet_id`` until stopped; the exit code."""
    try:
        # openjd first, before anything else imports it (see ojd).
        from flamenco_deadline_worker.backends.deadline import (
            ojd,  # noqa: F401
            startup,
        )
        from flamenco_deadline_worker.backends.deadline.service import DeadlineService
    except ImportError as exc:
        log.error("the Deadline backend needs the 'deadline' extra (boto3, openjd-model, openjd-sessions): %s", exc)
        return 2
    if not config.farm_id or not config.fleet_id:
        log.error("the Deadline backend needs farm_id and fleet_id (--farm-id, --fleet-id)")
        return 2
    from flamenco_deadline_worker.core.lifecycle import live

    try:
        home_lock = HomeLock.acquire(config.home)  # one worker per home; freed when this run returns
    except HomeError as exc:
        log.error("%s", exc)
        return 2

    api = deadline_api(config)
    startup.hide_host_credentials()
    deadline_state = config.home / "deadline-worker.json"
    running: list[DeadlineService] = []

    def healthy() -> bool:
        return not running or running[0].healthy()

    async with service_presence(config, stop_event, healthy=healthy) as publisher:
        private.touch(config.task_update_queue_db)  # private queue (SQLite's -wal and -shm follow it)
        service = DeadlineService(api, config, publisher, deadline_state)
        running.append(service)
        publisher.metrics_source = service.metrics
        try:
            drain_seconds = max(5.0, config.shutdown_flush_seconds)
            publisher.exit_code = await live(service, stop_event, service.flush, drain_seconds)
            if service.shutdown_failed:
                publisher.exit_code = 1  # deadline_shutdown_on_stop could not shut the host down
            if service.agent is not None and service.agent.deleted:
                deadline_state.unlink(missing_ok=True)
            return publisher.exit_code
        finally:
            await service.close()
            api.close()
            home_lock.release()
    return 1  # not reached: the block above returns
