"""A STARTED Deadline worker's rounds and drain, for the one lifecycle (core/lifecycle.py, through
service.py): apply the newest UpdateWorkerSchedule answer, heartbeat when nothing else called
within the service's interval, sessions started, cancelled and ended as the answers say.

A regular drain (the service's stop, an EC2 spot interruption or rebalance notice: drain.py) lets
running actions finish and reports the rest NEVER_ATTEMPTED, envExits aside, before the lifecycle's
drain and sign-off; the agent's own log goes to CloudWatch through the queue (agentlog.py).

Action statuses never wait for the heartbeat: the queue's drain delivers them in an
UpdateWorkerSchedule of its own (see sink.py), whose answer a round applies like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flamenco_deadline_worker.backends.deadline import startup
from flamenco_deadline_worker.backends.deadline.agentlog import AgentLogShipper
from flamenco_deadline_worker.backends.deadline.api import ApiError, DeadlineApi, Retryable
from flamenco_deadline_worker.backends.deadline.attachments import S3Access
from flamenco_deadline_worker.backends.deadline.drain import EXPEDITE_MARGIN, Drain
from flamenco_deadline_worker.backends.deadline.entities import JobEntities
from flamenco_deadline_worker.backends.deadline.jobuser import JobUserError, JobUsers
from flamenco_deadline_worker.backends.deadline.logroute import LogRouter
from flamenco_deadline_worker.backends.deadline.queue_creds import QueueCredentials
from flamenco_deadline_worker.backends.deadline.resume import SessionLedger
from flamenco_deadline_worker.backends.deadline.schedule import Schedule
from flamenco_deadline_worker.backends.deadline.session import SessionRunner
from flamenco_deadline_worker.backends.deadline.sink import LOG_PREFIX, DeadlineSink, log_key
from flamenco_deadline_worker.core.backoff import Backoff
from flamenco_deadline_worker.core.model import Update
from flamenco_deadline_worker.upstream.queue import TaskUpdateQueue

if TYPE_CHECKING:
    from flamenco_deadline_worker.core.hooks import ServicePresence

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1


class DeadlineAgent:
    def __init__(
        self,
        api: DeadlineApi,
        ids: dict[str, Any],
        *,
        queue_db: Path,
        logs_dir: Path,
        session_root: Path,
        push_log_max_bytes: int,
        push_log_max_interval: float,
        ledger_file: Path | None = None,
        delete_on_stop: bool = False,
        publisher: ServicePresence | None = None,
        retain_session_dirs: bool = False,
        run_jobs_as_agent_user: bool = False,
        agent_log: tuple[str, str] | None = None,
    ) -> None:
        self.api = api
        self.records = api.agent_log
        self.ids = ids
        self.logs_dir = logs_dir
        self.session_root = session_root
        self.delete_on_stop = delete_on_stop
        self.retain_session_dirs = retain_session_dirs
        self.schedule = Schedule(api, ids)
        self.sink = DeadlineSink(api, self.schedule, logs_dir)
        self.queue = TaskUpdateQueue(
            queue_db, self.sink, push_log_max_bytes=push_log_max_bytes, push_log_max_interval=push_log_max_interval
        )
        self.sessions: dict[str, SessionRunner] = {}
        self.ledger = SessionLedger(ledger_file or queue_db.with_name("deadline-sessions.json"), ids["workerId"])
        self.queue_creds = QueueCredentials(api, ids, session_root / "credentials")
        self.job_users = JobUsers(run_as_agent=run_jobs_as_agent_user, session_root=session_root)
        # Job attachments reach S3 with the queue role's credentials, in the region of the worker API.
        self.s3_access = S3Access(
            ids["farmId"], api.deadline.meta.region_name, lambda queue_id: self.queue_creds.directory / queue_id /
            "credentials.json"
        )
        self.router = LogRouter(self.queue)
        self.interval = 15.0
        self.publisher = publisher
        self.deleted = False  # DeleteWorker succeeded: the saved worker id is no use any more
        self.tasks_run = 0
        self._drain: asyncio.Task[None] | None = None
        self._backoff = Backoff(0.5, 30.0)
        self.service_stop = False  # the service asked this worker to stop
        self.drain_request: Drain | None = None  # why the worker drains, once it does
        self._stopping_sent = False  # the regular drain has begun: STOPPING sent, sessions told
        self._idle_rounds = 0
        self._queue_refresh: asyncio.Task[None] | None = None
        self._shipper = AgentLogShipper(self.queue, *agent_log, dress=self.records.dress) if agent_log else None
        # Actions whose completion is queued or sent: nothing more is ever reported for them.
        self._completed: set[tuple[str, str]] = set()

    def healthy(self) -> bool:
        """For the systemd watchdog: the update drain is alive."""
        return self._drain is None or not self._drain.done()

    def _state(self, state: str) -> None:
        if self.publisher is not None:
            self.publisher.state(state)

    def _show_drain(self) -> None:
        if self.publisher is not None and self.drain_request is not None:
            self.publisher.note("drain", self.drain_request.status())

    # ---- updates from sessions into the durable queue -------------------------------------

    async def report(self, session_id: str, action_id: str, info: dict[str, Any]) -> None:
        key = (session_id, action_id)
        if key in self._completed:
            log.debug("session %s: %s already completed; not reporting %s", session_id, action_id, sorted(info))
            return
        status = info.get("completedStatus")
        update = Update(task_id=session_id, action_id=action_id, status=status, extra=info)
        if status is None:
            # A start or progress: committed in moments, not waited for (the action runs meanwhile);
            # after a crash the restart reports the action INTERRUPTED with its own times anyway.
            self.queue.put_soon(update)
            return
        self._completed.add(key)
        await self.queue.put(update)

    def task_finished(self, session: SessionRunner, action_id: str, kind: str, status: str) -> None:
        """For ``status``: a taskRun ended (an environment action is no task)."""
        if kind != "taskRun" or status == "NEVER_ATTEMPTED":
            return
        self.tasks_run += 1
        if self.publisher is not None:
            self.publisher.data["tasks_run"] = self.tasks_run
            self.publisher.data["last_task"] = {
                "id": action_id, "job_id": session.entities.job_id, "session_id": session.id,
                "outcome": status.lower(), "ended_at": time.time(),
            }
            self.publisher.soon()

    # ---- the main loop -------------------------------------------------------------------

    async def open(self) -> None:
        await self.queue.open()
        # Before the drain starts: which actions ended before a restart, their completions still queued.
        queued = await self.queue.completed_actions(lambda key: not key.startswith(LOG_PREFIX))
        for session_id, actions in queued.items():
            self._completed.update((session_id, a) for a in actions)
        self._drain = asyncio.create_task(self.queue.run_drain(), name="update drain")
        self.router.install()
        if self._shipper is not None:
            self._shipper.install()

    async def close(self) -> None:
        if self._queue_refresh is not None:
            self._queue_refresh.cancel()
            await asyncio.gather(self._queue_refresh, return_exceptions=True)
        if self._shipper is not None:
            self._shipper.uninstall()
        self.router.uninstall()
        if self._drain is not None:
            self._drain.cancel()
            await asyncio.gather(self._drain, return_exceptions=True)
        await self.queue.close()

    async def step(self) -> int | None:
        """One round: the newest UpdateWorkerSchedule answer (the drain's, or a heartbeat when nobody
        called within the service's interval) applied; an exit code when the run ends."""
        if self.api.fleet_credentials_due():
            await self._refresh_fleet_credentials()
        refreshing = self._queue_refresh is not None and not self._queue_refresh.done()
        if self.sessions and self.queue_creds.refresh_due() and not refreshing:
            # In the background: the round goes on while the service is slow to answer.
            self._queue_refresh = asyncio.create_task(self.queue_creds.refresh())
        if self.schedule.conflict is not None:
            conflict, self.schedule.conflict = self.schedule.conflict, None
            log.warning("the worker is no longer STARTED in the service (%s); starting again", conflict)
            await self._end_all_sessions()
            await startup.set_started(self.api, self.ids)
            return None
        if self.drain_request is not None:
            if not self._stopping_sent:
                await self._begin_regular_drain()
            if self._expedite_due():
                return EXIT_OK  # the lifecycle's drain() now interrupts what still runs
        answer = self.schedule.take()
        if answer is None:
            try:
                answer = await self.schedule.call({})
            except Retryable as exc:
                wait = self._backoff.next(exc.retry_after)
                if exc.connection:
                    log.warning("the service cannot be reached (%s); retrying in %.1f s", exc, wait)
                await asyncio.sleep(wait)
                return None
            except ApiError as exc:
                if self.schedule.conflict is not None:
                    return None
                log.error("UpdateWorkerSchedule failed for good: %s; exiting", exc)
                return EXIT_FATAL
        self._backoff.reset()
        await self._apply(answer)
        if answer.get("desiredWorkerStatus") == "STOPPED":
            self.service_stop = True
            if self.drain_request is None:
                self.request_drain(Drain("service"))
            if not self.sessions:
                return EXIT_OK
        if self._stopping_sent and self._drained():
            log.info("regular drain done: no session has work left")
            return EXIT_OK
        self.interval = float(answer.get("updateIntervalSeconds", 15))
        due = self.schedule.last_call + self.interval - time.monotonic()
        left = self.drain_request.seconds_left() if self.drain_request is not None else None
        if left is not None:
            due = min(due, left - EXPEDITE_MARGIN)
        if due > 0 and not self.schedule.news.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.schedule.news.wait(), due)
        return None

    async def _refresh_fleet_credentials(self) -> None:
        try:
            answer = await self.api.call_retrying("assume_fleet_role_for_worker", give_up_after=60, **self.ids)
            self.api.use_fleet_credentials(answer["credentials"])
            log.info("fleet role credentials refreshed; they expire at %s", self.api.fleet_expiry)
        except (ApiError, Retryable) as exc:
            log.warning("could not refresh the fleet role credentials yet: %s", exc)

    async def _apply(self, answer: dict[str, Any]) -> None:
        assigned: dict[str, Any] = answer.get("assignedSessions") or {}
        for session_id in [s for s in self.sessions if s not in assigned]:
            runner = self.sessions.pop(session_id)
            self.router.forget(session_id)
            self.ledger.ended(session_id)
            self.records.session_remove(session_id, runner.queue_id, "the service ended it")
            asyncio.create_task(self._close(runner))
        for session_id, spec in assigned.items():
            known = self.sessions.get(session_id)
            runner = known if known is not None else await self._new_session(session_id, spec)
            added = runner.add(spec["sessionActions"])
            if added:
                self.records.session_add(session_id, runner.queue_id, added)
        if not self._stopping_sent:  # a draining worker stays "stopping"
            self._state("working" if self.sessions else "idle")
        for session_id, action_ids in (answer.get("cancelSessionActions") or {}).items():
            if session_id in self.sessions:
                self.sessions[session_id].cancel(action_ids)

    async def _new_session(self, session_id: str, spec: dict[str, Any]) -> SessionRunner:
        queue_id = spec["queueId"]
        options = spec.get("logConfiguration", {}).get("options") or {}
        local = self.logs_dir / queue_id / f"{session_id}.log"
        self.records.session_starting(session_id, queue_id, job_id=spec["jobId"])
        self.records.session_logs(session_id, queue_id, local)
        entities = JobEntities(self.api, self.ids, spec["jobId"])

        async def report(action_id: str, info: dict[str, Any]) -> None:
            await self.report(session_id, action_id, info)

        # Begun before this start: its processes and environments died with the last agent.
        resumed = session_id in self.ledger.before_restart
        runner = SessionRunner(
            session_id,
            queue_id,
            entities,
            report,
            agent_log=self.records,
            root_dir=self.session_root,
            env_vars=self.queue_creds.env,
            resumed=resumed,
            completed=lambda action_id: (session_id, action_id) in self._completed,
            retain_dir=self.retain_session_dirs,
            job_users=self.job_users,
            s3_access=self.s3_access,
        )
        runner.on_finished = self.task_finished
        if self._stopping_sent:
            runner.stop_after_running()  # the service should give none now; if it does, nothing new runs
        self.sessions[session_id] = runner
        self.ledger.begun(session_id, queue_id)
        self.router.route(
            session_id,
            log_key(session_id, queue_id, options.get("logGroupName", ""), options.get("logStreamName", "")),
        )
        if resumed:
            log.warning("session %s was running when the agent stopped unexpectedly; it cannot go on", session_id)
            runner.start()
        else:
            asyncio.create_task(self._prepare_credentials(runner, entities))
        return runner

    async def _prepare_credentials(self, runner: SessionRunner, entities: JobEntities) -> None:
        """The queue role's credentials, then the session's first action: no action runs without them."""
        try:
            job = await entities.job()
        except Exception as exc:
            self.router.write(runner.id, f"could not read the job details: {exc}\n")
        else:
            message = await self.queue_creds.ensure(
                runner.queue_id, bool(job.get("queueRoleArn")), group=self._job_group(job)
            )
            if message:
                self.router.write(runner.id, message + "\n")
        finally:
            if not runner.draining:
                runner.start()

    def _job_group(self, job: dict[str, Any]) -> str | None:
        """The group that shares the queue credentials with the session's job user (None: the agent's
        own user runs it; a job user that cannot be used fails the first action with the reason)."""
        try:
            user, _ = self.job_users.choose(job)
        except JobUserError:
            return None
        return user.group if user is not None else None

    async def _close(self, runner: SessionRunner, timeout: float = 30.0) -> None:
        await runner.close(timeout=timeout)
        seconds = time.monotonic() - runner.started
        if runner.wound_down:
            self.records.session_failed(runner.id, runner.queue_id, "an action failed, was canceled or interrupted")
        self.records.session_complete(
            runner.id, runner.queue_id, "FAILED" if runner.wound_down else "SUCCEEDED", seconds
        )

    async def _end_all_sessions(self) -> None:
        runners = list(self.sessions.values())
        self.sessions.clear()
        for runner in runners:
            self.records.session_remove(runner.id, runner.queue_id, "the worker stops")
            self.ledger.ended(runner.id)
        await asyncio.gather(*(self._close(r, timeout=10) for r in runners))

    # ---- regular drains (service stop, spot interruption, rebalance) -----------------------

    def request_drain(self, drain: Drain) -> None:
        """Begin a regular drain (or make the one under way end sooner); from the event loop."""
        if not drain.urgent(self.drain_request):
            return
        if self.drain_request is not None and self.drain_request.mode == "expedited":
            return
        self.drain_request = drain
        self._show_drain()
        self.schedule.news.set()  # the loop acts on it now, not at the next heartbeat

    async def _begin_regular_drain(self) -> None:
        assert self.drain_request is not None
        self._stopping_sent = True
        log.warning("regular drain: %s; running actions may finish, queued ones are NEVER_ATTEMPTED, "
                    "environments are exited", self.drain_request.describe())
        self._state("stopping")
        if self.publisher is not None:
            self.publisher.stopping(self.drain_request.describe())
        await startup.set_status(self.api, self.ids, "STOPPING", budget=10.0)
        for runner in self.sessions.values():
            runner.stop_after_running()

    def _expedite_due(self) -> bool:
        left = self.drain_request.seconds_left() if self.drain_request is not None else None
        if left is None or left > EXPEDITE_MARGIN:
            return False
        log.warning("%.0f s left before the host goes away: the drain turns expedited", max(0.0, left))
        return True

    def _drained(self) -> bool:
        """The regular drain's end: the service lists no session any more, or (should it keep one)
        every session is idle with its statuses delivered, three answers in a row."""
        if not self.sessions:
            return True
        settled = all(r.idle and not self.queue.has_undelivered(r.id) for r in self.sessions.values())
        self._idle_rounds = self._idle_rounds + 1 if settled else 0
        return self._idle_rounds >= 3

    # ---- the end: expedited drain, sign-off ------------------------------------------------

    async def drain(self) -> None:
        """The lifecycle's drain: after a regular drain, nothing is left to stop; otherwise (a signal,
        or a spot interruption too close) expedited: STOPPING, what runs INTERRUPTED, the rest
        NEVER_ATTEMPTED; the queue's drain carries those statuses."""
        busy = any(not r.idle for r in self.sessions.values())
        if self.drain_request is None:
            self.drain_request = Drain("expedited", mode="expedited")
        elif busy:
            self.drain_request.mode = "expedited"
        self._show_drain()
        self._state("stopping")
        if self.publisher is not None:
            self.publisher.stopping(self.drain_request.describe())
        if not self._stopping_sent:
            await startup.set_status(self.api, self.ids, "STOPPING", budget=2.0)
        await asyncio.gather(*(r.interrupt(grace=3.0) for r in self.sessions.values()))

    async def sign_off(self) -> None:
        """STOPPED, sessions ended, their last log lines sent, and DeleteWorker when configured."""
        await startup.set_status(self.api, self.ids, "STOPPED", budget=5.0)
        await self._end_all_sessions()
        await self.queue.flush(2.0)
        if self.delete_on_stop and await startup.delete_worker(self.api, self.ids):
            self.deleted = True
            self.records.worker_delete(self.ids["workerId"], "deadline_delete_worker_on_stop is set")
