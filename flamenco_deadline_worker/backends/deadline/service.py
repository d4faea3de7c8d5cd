"""The Deadline worker's side of the one lifecycle (core/lifecycle.py): start-up steps, rounds of
UpdateWorkerSchedule, the drain and STOPPED, through a DeadlineAgent once the worker is STARTED."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from flamenco_deadline_worker.backends.deadline import (
    agentlog,
    capabilities,
    hostshutdown,
    imds,
    profile_guard,
    startup,
)
from flamenco_deadline_worker.backends.deadline.agent import EXIT_FATAL, DeadlineAgent
from flamenco_deadline_worker.backends.deadline.api import DeadlineApi
from flamenco_deadline_worker.backends.deadline.drain import NO_DRAIN, NoticeWatch
from flamenco_deadline_worker.config import WorkerConfig
from flamenco_deadline_worker.core.hooks import ServicePresence

log = logging.getLogger(__name__)


class DeadlineService:
    def __init__(self, api: DeadlineApi, config: WorkerConfig, publisher: ServicePresence, state_file: Path) -> None:
        self.api = api
        self.config = config
        self.publisher = publisher
        self.state_file = state_file
        self.progress = StartUp()
        self.agent: DeadlineAgent | None = None
        self.shutdown_failed = False  # deadline_shutdown_on_stop's command did not work
        self._imds: imds.ImdsClient | None = None
        self._watch: asyncio.Task[None] | None = None

    def healthy(self) -> bool:
        return self.agent is None or self.agent.healthy()

    def metrics(self) -> dict[str, Any]:
        if self.agent is None:
            return {"sessions": 0}
        return {
            "queue_backlog_bytes": self.agent.queue.backlog_bytes,
            "delivered_updates": self.agent.queue.delivered_updates,
            "sessions": len(self.agent.sessions),
        }

    async def start(self) -> int | None:
        config = self.config
        service = f"Deadline Cloud farm {config.farm_id}, fleet {config.fleet_id}"
        try:
            worker_id = await self.progress.run(self.api, config, self.state_file, self.publisher, service)
        except startup.StartupFailed as exc:
            log.error("%s", exc)
            return EXIT_FATAL
        log.info("worker %s STARTED in farm %s, fleet %s", worker_id, config.farm_id, config.fleet_id)
        if config.deadline_disallow_instance_profile:
            verdict = await profile_guard.check(config.deadline_instance_profile_wait_seconds)
            if not verdict.ok:
                log.error("%s", verdict.message)
                await startup.set_status(self.api, self.progress.ids, "STOPPED", budget=30)
                return verdict.exit_code
            log.info("%s", verdict.message)
        self.publisher.data["drain"] = NO_DRAIN
        self.publisher.signed_on(worker_id)
        self.publisher.state("started")
        self.agent = DeadlineAgent(
            self.api,
            self.progress.ids,
            queue_db=config.task_update_queue_db,
            logs_dir=config.logs_dir,
            session_root=config.session_root_dir,
            push_log_max_bytes=config.push_log_max_bytes,
            push_log_max_interval=config.push_log_max_interval_seconds,
            ledger_file=config.home / "deadline-sessions.json",
            delete_on_stop=config.deadline_delete_worker_on_stop,
            publisher=self.publisher,
            retain_session_dirs=config.deadline_retain_session_dir,
            run_jobs_as_agent_user=config.deadline_run_jobs_as_agent_user,
            agent_log=agentlog.destination(self.progress.started_answer),
        )
        self.agent.queue.on_problem = self.publisher.queue_problem  # `status` shows a queue that cannot be written
        await self.agent.open()
        self._watch_host(self.agent)
        return None

    def _watch_host(self, agent: DeadlineAgent) -> None:
        """Spot interruption and rebalance notices from IMDS start a regular drain (drain.py)."""
        where = imds.locate()
        if where.endpoint is None:
            log.info("not watching for EC2 spot interruption or rebalance notices: %s", where.why)
            return
        log.info("watching IMDS at %s for EC2 spot interruption and rebalance notices (%s)", where.endpoint, where.why)
        self._imds = imds.ImdsClient(where.endpoint)
        self._watch = asyncio.create_task(NoticeWatch(self._imds, agent.request_drain).run(), name="IMDS notices")

    async def abandon_start(self) -> None:
        # SIGTERM while CreateWorker or STARTED is still being retried (an outage, a fleet being
        # created): stop now, not after the service answers.
        log.info("stop asked during start-up (%s): exiting before taking work", self.progress.step)
        if self.progress.started_sent:
            await startup.set_status(self.api, self.progress.ids, "STOPPED", budget=10)

    async def step(self) -> int | None:
        assert self.agent is not None, "step() before a successful start()"
        return await self.agent.step()

    async def drain(self) -> None:
        if self.agent is not None:
            await self.agent.drain()

    async def flush(self, seconds: float) -> bool:
        return self.agent is None or await self.agent.queue.flush(seconds)

    async def sign_off(self) -> None:
        if self.agent is not None:
            await self.agent.sign_off()
            if self.agent.service_stop and self.config.deadline_shutdown_on_stop:
                self.shutdown_failed = not await hostshutdown.shut_down_host(self.config.deadline_shutdown_command)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._imds is not None:
            await self._imds.close()
        if self.agent is not None:
            await self.agent.close()


class StartUp:
    """The start-up steps (CreateWorker or the saved id, AssumeFleetRoleForWorker, UpdateWorker
    STARTED), with how far they got, so a stop in the middle knows what to undo."""

    def __init__(self) -> None:
        self.step = "not begun"
        self.ids: dict[str, str] = {}
        self.started_sent = False
        self.started_answer: dict[str, Any] | None = None  # UpdateWorker STARTED's (names the agent log stream)
        self.capabilities: capabilities.Capabilities | None = None

    async def run(
        self, api: DeadlineApi, config: WorkerConfig, state_file: Path, publisher: ServicePresence, service: str
    ) -> str:
        self.step = "detecting the host's capabilities"
        self.capabilities = await host_capabilities(config)
        publisher.data["capabilities"] = self.capabilities.for_status()
        worker_id = startup.load_worker_id(state_file, config.farm_id, config.fleet_id)
        if worker_id is None:
            self.step = "CreateWorker"
            publisher.waiting(self.step)
            worker_id = await startup.create_worker(api, config.farm_id, config.fleet_id)
            startup.save_worker_id(state_file, config.farm_id, config.fleet_id, worker_id)
            api.agent_log.worker_create(worker_id, service, farm_id=config.farm_id, fleet_id=config.fleet_id)
        else:
            api.agent_log.worker_load(worker_id, state_file, farm_id=config.farm_id, fleet_id=config.fleet_id)
        publisher.data["worker_id"] = worker_id
        self.ids = {"farmId": config.farm_id, "fleetId": config.fleet_id, "workerId": worker_id}
        self.step = "AssumeFleetRoleForWorker, UpdateWorker STARTED"
        publisher.waiting(self.step)
        await startup.assume_fleet_role(api, self.ids)
        self.started_sent = True
        self.started_answer = await startup.set_started(
            api, self.ids, self.capabilities.for_update_worker_if_complete()
        )
        return worker_id


async def host_capabilities(config: WorkerConfig) -> capabilities.Capabilities:
    """What this host has (detected in a thread: nvidia-smi may take seconds), with the
    ``[capabilities]`` table of the configuration added over it."""
    try:
        detected = await asyncio.to_thread(capabilities.detect, config.session_root_dir)
    except Exception:  # a bug or an odd host must not stop the worker: the configured ones still go
        log.exception("detecting the host's capabilities failed; only the [capabilities] table is used")
        detected = capabilities.Capabilities({}, {})
    merged = detected.merged(config.capability_amounts, config.capability_attributes)
    log.info("capabilities for the service: %s", capabilities.describe(merged))
    return merged
