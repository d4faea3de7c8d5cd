"""One Deadline session: its actions run in order through an openjd-sessions Session.

Failure rules (worker API protocol): after a FAILED, CANCELED or INTERRUPTED envEnter, taskRun or
syncInputJobAttachments, every later action is NEVER_ATTEMPTED except the envExit of environments
that were entered; a failed envExit fails only itself.  openjd-sessions blocks, so its calls run in
threads; its callbacks come back to the event loop with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
from openjd.sessions import LOG as OJD_LOG
from openjd.sessions import ActionState, ActionStatus, PathMappingRule, PosixSessionUser, Session, SessionState

from flamenco_deadline_worker.backends.deadline import pathmap
from flamenco_deadline_worker.backends.deadline.attachments import (
    AttachmentError,
    AttachmentsCancelled,
    S3Access,
    SessionAttachments,
    epoch,
)
from flamenco_deadline_worker.backends.deadline.entities import EntityError, JobEntities, parameter_values
from flamenco_deadline_worker.backends.deadline.jobuser import JobUser, JobUserError, JobUsers
from flamenco_deadline_worker.backends.deadline.timestamps import now_iso, parse_iso
from flamenco_deadline_worker.core.hooks import AgentLog

log = logging.getLogger(__name__)

Report = Callable[[str, dict[str, Any]], Awaitable[None]]
FAILURES = ("FAILED", "CANCELED", "INTERRUPTED")


@attrs.define
class Action:
    id: str
    kind: str
    body: dict[str, Any]


class SessionRunner:
    def __init__(
        self,
        session_id: str,
        queue_id: str,
        entities: JobEntities,
        report: Report,
        *,
        agent_log: AgentLog,
        root_dir: Path,
        env_vars: Callable[[], dict[str, str]],
        cancel_grace: float = 30.0,
        resumed: bool = False,
        completed: Callable[[str], bool] = lambda action_id: False,
        retain_dir: bool = False,
        job_users: JobUsers | None = None,
        s3_access: S3Access | None = None,
    ) -> None:
        self.id = session_id
        self.queue_id = queue_id
        self.entities = entities
        self.report = report
        self.records = agent_log
        self.root_dir = root_dir
        self.env_vars = env_vars
        self.cancel_grace = cancel_grace
        # Begun by an agent that died: nothing can run; ended actions keep their queued status.
        self.resumed = resumed
        self.completed = completed
        self.retain_dir = retain_dir  # deadline_retain_session_dir: keep the working directory at the end
        self.job_users = job_users  # None: the agent's own user, whatever the job says
        # Known once the session exists (for job attachments too): its job user and path-mapping rules.
        self.job_user: JobUser | None = None
        self.path_rules: list[PathMappingRule] = []
        self.s3_access = s3_access  # job attachments' way to S3 (None: attachment actions fail)
        self.attachments: SessionAttachments | None = None  # set by the first syncInputJobAttachments
        self.on_finished: Callable[[SessionRunner, str, str, str], None] | None = None
        self.pending: list[Action] = []
        self.known: set[str] = set()
        self.canceled: set[str] = set()
        self.running: Action | None = None
        self.wound_down = False  # a failure: only envExits of entered environments may run
        self.draining = False  # an expedited drain: nothing more runs
        self.stopping = False  # a regular drain: what runs may finish; only envExits run after it
        self.interrupted: set[str] = set()
        self._entered: dict[str, str] = {}  # environment id -> openjd identifier
        self._ojd: Session | None = None
        self._wake = asyncio.Event()
        self._done: asyncio.Future[ActionStatus] | None = None
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self.started = time.monotonic()

    # ---- control from the scheduler ------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"session {self.id}")

    @property
    def idle(self) -> bool:
        return self.running is None and not self.pending

    def add(self, actions: list[dict[str, Any]]) -> list[str]:
        """Queue the actions of an UpdateWorkerSchedule answer that are new to us, in the order given;
        their ids."""
        added = []
        for raw in actions:
            if raw["sessionActionId"] in self.known:
                continue
            self.known.add(raw["sessionActionId"])
            kind, body = next(iter(raw["definition"].items()))
            self.pending.append(Action(raw["sessionActionId"], kind, dict(body)))
            added.append(raw["sessionActionId"])
        self._wake.set()
        return added

    def cancel(self, action_ids: list[str]) -> None:
        fresh = set(action_ids) - self.canceled
        self.canceled |= fresh
        for action_id in sorted(fresh):
            self.records.action_cancel(self.id, action_id, "canceled by the service")
        if self.running is not None and self.running.id in fresh:
            self._cancel_running(self.cancel_grace)
        self._wake.set()

    def stop_after_running(self) -> None:
        """Regular drain: the running action goes on; later actions other than the envExit of an
        entered environment are NEVER_ATTEMPTED, each in its turn (after the running one's status)."""
        self.stopping = True
        self._wake.set()

    async def interrupt(self, grace: float) -> None:
        """Expedited drain: the running action INTERRUPTED at once, the rest NEVER_ATTEMPTED."""
        self.draining = True
        # Taken at once: the action loop, woken by the running action's end, must not pop (and
        # report) these while they are reported here, or some would be skipped or out of order.
        pending, self.pending = self.pending, []
        running = self.running
        if running is not None and running.id not in self.interrupted:
            self.interrupted.add(running.id)
            self.records.action_cancel(self.id, running.id, "the worker is stopping")
            self._cancel_running(grace)
            await self.report(running.id, {"completedStatus": "INTERRUPTED", "endedAt": now_iso()})
        for action in pending:
            await self.report(action.id, {"completedStatus": "NEVER_ATTEMPTED"})
        self._wake.set()

    async def close(self, timeout: float = 30.0) -> None:
        """End the session: stop its loop, cancel what runs, clean its directory."""
        self.draining = True
        if self.running is not None:
            self._cancel_running(min(self.cancel_grace, timeout))
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                self._task.cancel()
        if self._ojd is not None:
            ojd, self._ojd = self._ojd, None
            try:
                await asyncio.to_thread(ojd.cleanup)
            except Exception:
                log.exception("session %s: cleaning up its working directory failed", self.id)
            if self.retain_dir:
                log.info("session %s: its working directory %s is kept (deadline_retain_session_dir)",
                         self.id, ojd.working_directory)
        if self.attachments is not None:
            if self.retain_dir:  # kept with the working directory, as the AWS agent keeps both
                log.info("session %s: its job attachments directory %s is kept (deadline_retain_session_dir)",
                         self.id, self.attachments.directory)
            else:
                await asyncio.to_thread(self.attachments.cleanup)

    def _cancel_running(self, grace: float) -> None:
        if self._ojd is None:
            return
        ojd = self._ojd

        def cancel() -> None:
            try:
                ojd.cancel_action(time_limit=dt.timedelta(seconds=grace))
            except Exception:  # nothing running any more
                log.debug("session %s: nothing to cancel", self.id, exc_info=True)

        self._loop.run_in_executor(None, cancel)

    # ---- the action loop -----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            while not self.pending:
                if self.draining:
                    return
                self._wake.clear()
                await self._wake.wait()
            action = self.pending.pop(0)
            if self.draining:
                await self.report(action.id, {"completedStatus": "NEVER_ATTEMPTED"})
                continue
            try:
                await self._one(action)
            except Exception as exc:  # a bug must fail the action, never the agent
                log.exception("session %s: action %s raised", self.id, action.id)
                await self._finish(
                    action,
                    {
                        "completedStatus": "FAILED",
                        "startedAt": now_iso(),
                        "progressMessage": f"internal error: {exc}"[:4096],
                    },
                )

    async def _one(self, action: Action) -> None:
        if self.completed(action.id):
            return  # its completion is queued already (it ended before a restart)
        if self.resumed:
            await self._finish_unresumable(action)
            return
        skip = action.id in self.canceled
        if action.kind == "envExit":
            skip = skip or action.body["environmentId"] not in self._entered
        elif self.wound_down or self.stopping:
            skip = True
        if skip:
            await self._finish(action, {"completedStatus": "NEVER_ATTEMPTED"})
            return
        started = now_iso()
        self.running = action
        self.records.action_start(self.id, action.id, action.kind, queue_id=self.queue_id, **_what(action))
        try:
            await self.report(action.id, {"startedAt": started})
            if action.kind == "syncInputJobAttachments":
                status = await self._sync_inputs(action)
            else:
                status = await self._execute(action)
                if action.kind == "taskRun" and status.state == ActionState.SUCCESS:
                    status = await self._upload_outputs(action, started, status)
        except (EntityError, JobUserError, pathmap.PathMappingError) as exc:
            await self._finish(
                action, {"completedStatus": "FAILED", "startedAt": started, "progressMessage": str(exc)[:4096]}
            )
            return
        finally:
            self.running = None
        if action.id in self.interrupted:
            return  # already reported INTERRUPTED by the drain
        info: dict[str, Any] = {"completedStatus": _completed(status), "startedAt": started}
        if status.exit_code is not None:
            info["processExitCode"] = status.exit_code
        message = status.fail_message or status.status_message
        if message:
            info["progressMessage"] = message[:4096]
        if status.progress is not None:
            info["progressPercent"] = max(0.0, min(100.0, float(status.progress)))
        await self._finish(action, info)

    async def _finish_unresumable(self, action: Action) -> None:
        """After a crash: the action that may have been running is INTERRUPTED, the rest never run."""
        if self.wound_down:
            await self._finish(action, {"completedStatus": "NEVER_ATTEMPTED"})
            return
        message = "the worker agent stopped unexpectedly while this session ran; it was not run again"
        now = now_iso()
        await self._finish(
            action, {"completedStatus": "INTERRUPTED", "startedAt": now, "endedAt": now, "progressMessage": message}
        )
        self.wound_down = True

    async def _finish(self, action: Action, info: dict[str, Any]) -> None:
        status = info["completedStatus"]
        if status != "NEVER_ATTEMPTED":
            info.setdefault("endedAt", now_iso())
        seconds = 0.0
        if "startedAt" in info:
            seconds = (parse_iso(info["endedAt"]) - parse_iso(info["startedAt"])).total_seconds()
        extra = {k: info[k] for k in ("processExitCode", "progressMessage") if k in info}
        self.records.action_end(self.id, action.id, status, seconds, kind=action.kind, **extra)
        if status in FAILURES and action.kind != "envExit":
            self.wound_down = True
        await self.report(action.id, info)
        if self.on_finished is not None:
            self.on_finished(self, action.id, action.kind, status)

    async def _execute(self, action: Action) -> ActionStatus:
        ojd = await self._session()
        self._done = self._loop.create_future()
        env = {**self.env_vars(), **self.deadline_environment(action)}
        if action.kind == "envEnter":
            env_id = action.body["environmentId"]
            environment = await self.entities.environment(env_id)
            self._entered[env_id] = ""  # attempted: its envExit must run whatever happens
            self._entered[env_id] = await asyncio.to_thread(
                lambda: ojd.enter_environment(environment=environment, os_env_vars=env)
            )
        elif action.kind == "envExit":
            identifier = self._entered.pop(action.body["environmentId"])
            await asyncio.to_thread(lambda: ojd.exit_environment(identifier=identifier, os_env_vars=env))
        elif action.kind == "taskRun":
            step = await self.entities.step(action.body["stepId"])
            script = step.script
            if script is None:
                raise EntityError(f"step {action.body['stepId']} has no script to run")
            params = parameter_values(action.body.get("parameters") or {})
            await asyncio.to_thread(
                lambda: ojd.run_task(
                    step_script=script, task_parameter_values=params, os_env_vars=env, step_name=step.name
                )
            )
        else:
            raise EntityError(f"this agent cannot run {action.kind!r} session actions")
        if action.id in self.canceled:
            self._cancel_running(self.cancel_grace)
        if ojd.state not in (SessionState.RUNNING, SessionState.CANCELING) and not self._done.done():
            # Nothing to run (an environment without that action) or it failed before it started.
            self._done.set_result(ojd.action_status or ActionStatus(state=ActionState.SUCCESS))
        return await self._done

    async def _session(self) -> Session:
        if self._ojd is None:
            job = await self.entities.job()
            values = parameter_values(job.get("parameters") or {})
            user, rules = await self._user_and_rules(job)
            self.root_dir.mkdir(parents=True, exist_ok=True)
            self._ojd = await asyncio.to_thread(
                lambda: Session(
                    session_id=self.id,
                    job_parameter_values=values,
                    callback=self._callback,
                    session_root_directory=self.root_dir,
                    retain_working_dir=self.retain_dir,
                    user=user,
                    path_mapping_rules=(rules + (self.attachments.rules if self.attachments else [])) or None,
                )
            )
        return self._ojd

    def deadline_environment(self, action: Action) -> dict[str, str]:
        """The DEADLINE_* variables an action's processes see, with the AWS agent's names and meanings:
        the session's ids for every action, the step and task for a taskRun."""
        ids = self.entities.ids
        env = {
            "DEADLINE_FARM_ID": str(ids.get("farmId", "")),
            "DEADLINE_FLEET_ID": str(ids.get("fleetId", "")),
            "DEADLINE_WORKER_ID": str(ids.get("workerId", "")),
            "DEADLINE_QUEUE_ID": self.queue_id,
            "DEADLINE_JOB_ID": self.entities.job_id,
            "DEADLINE_SESSION_ID": self.id,
            "DEADLINE_SESSIONACTION_ID": action.id,
        }
        if action.kind == "taskRun":
            env["DEADLINE_STEP_ID"] = str(action.body["stepId"])
            if action.body.get("taskId"):
                env["DEADLINE_TASK_ID"] = str(action.body["taskId"])
        return env

    async def _user_and_rules(self, job: dict[str, Any]) -> tuple[PosixSessionUser | None, list[PathMappingRule]]:
        """The job user the actions run as (checked on this host; None: the agent's user) and the
        job's path-mapping rules, both told in the session log.  JobUserError, PathMappingError."""
        rules = pathmap.rules_of(job)
        user: PosixSessionUser | None = None
        if self.job_users is not None:
            chosen, line = self.job_users.choose(job)
            self._say(line)
            if chosen is not None:
                await self.job_users.ready(chosen)
                user = chosen.session_user()
            self.job_user = chosen
        self.path_rules = rules
        for rule in rules:
            self._say(f"Path mapping rule: {rule.source_path_format.value.lower()} {rule.source_path} -> "
                      f"{rule.destination_path}")
        return user, rules

    # ---- job attachments (attachments.py does the work) ------------------------------------

    async def _sync_inputs(self, action: Action) -> ActionStatus:
        """syncInputJobAttachments: the job's inputs, or (with a stepId) the outputs of the steps
        that step depends on, into the session before its tasks."""
        step_id = action.body.get("stepId")
        self._say("Job attachments: downloading " + (f"the outputs step {step_id} depends on" if step_id else
                                                     "the job's input files"))
        try:
            if self.s3_access is None:
                raise AttachmentError("this agent was started without access to job attachments")
            job = await self.entities.job()
            dependencies: list[str] | None = None
            if step_id:
                if self.attachments is None:
                    raise AttachmentError("the job's attachments must be synchronised before a step's dependencies")
                dependencies = await self.entities.step_dependencies(step_id)
            elif self.attachments is None:
                if self._ojd is not None:
                    raise AttachmentError(
                        "syncInputJobAttachments came after the session's first OpenJD action: the paths of its "
                        "attachments can no longer be mapped for this session"
                    )
                details = await self.entities.attachment_details()
                attachments = SessionAttachments(
                    self.id, self.queue_id, self.entities.job_id, self.root_dir / "attachments" / self.id,
                    self.s3_access,
                )
                # The tasks run as the queue's job user: the copies belong to its group.
                chosen = self.job_users.choose(job)[0] if self.job_users is not None else None
                owner = (chosen.user, chosen.group) if chosen is not None else None
                await asyncio.to_thread(attachments.prepare, job, details, owner)
                self.attachments = attachments
                for rule in attachments.rules:
                    self._say(f"Job attachments: {rule.source_path} is mapped to {rule.destination_path}")
            assert self.attachments is not None
            summary = await self.attachments.sync_inputs(
                dependencies, self._transfer_progress(action), lambda: self._stopping(action)
            )
        except AttachmentsCancelled:
            self._say("Job attachments: the download was canceled")
            return ActionStatus(state=ActionState.CANCELED)
        except AttachmentError as exc:
            self._say(f"Job attachments: {exc}")
            return ActionStatus(state=ActionState.FAILED, fail_message=str(exc))
        self._say(summary)
        return ActionStatus(state=ActionState.SUCCESS, progress=100.0, status_message=summary)

    async def _upload_outputs(self, action: Action, started: str, status: ActionStatus) -> ActionStatus:
        """After a successful taskRun: its outputs to S3; the task SUCCEEDS only once they are there."""
        if self.attachments is None:
            return status
        try:
            summary = await self.attachments.sync_outputs(
                action.body["stepId"], action.body.get("taskId", ""), action.id, epoch(started),
                self._transfer_progress(action), lambda: self._stopping(action),
            )
        except AttachmentsCancelled:
            return ActionStatus(state=ActionState.CANCELED, exit_code=status.exit_code)
        except AttachmentError as exc:
            message = f"the task succeeded but its outputs could not be uploaded: {exc}"
            self._say(f"Job attachments: {message}")
            return ActionStatus(state=ActionState.FAILED, exit_code=status.exit_code, fail_message=message)
        self._say(summary)
        return ActionStatus(
            state=ActionState.SUCCESS, exit_code=status.exit_code, progress=status.progress,
            status_message=status.status_message,
        )

    def _stopping(self, action: Action) -> bool:
        return action.id in self.canceled or action.id in self.interrupted or self.draining

    def _transfer_progress(self, action: Action) -> Callable[[float, str], None]:
        """The library's progress (from its threads) as the action's progressPercent and progressMessage."""

        def on_loop(percent: float, message: str) -> None:  # the library logs its own progress lines
            if self.running is action:
                info = {"progressPercent": max(0.0, min(100.0, percent)), "progressMessage": message[:4096]}
                asyncio.ensure_future(self.report(action.id, info))

        def progress(percent: float, message: str) -> None:
            try:
                self._loop.call_soon_threadsafe(on_loop, percent, message)
            except RuntimeError:  # the event loop is gone: the agent is exiting
                pass

        return progress

    def _say(self, line: str) -> None:
        """The agent's own line in the session log (through openjd's logger, which the router reads)."""
        OJD_LOG.info(line, extra={"session_id": self.id})

    def _callback(self, session_id: str, status: ActionStatus) -> None:
        """From openjd's threads: progress while running, the final status at the end."""
        if status.state == ActionState.RUNNING and status.progress is None and not status.status_message:
            return  # "it started" says nothing the loop needs: spare it a wake-up
        try:
            self._loop.call_soon_threadsafe(self._on_status, status)
        except RuntimeError:  # the event loop is gone: the agent is exiting
            pass

    def _on_status(self, status: ActionStatus) -> None:
        if status.state == ActionState.RUNNING:
            running = self.running
            if running is not None and (status.progress is not None or status.status_message):
                info: dict[str, Any] = {}
                if status.progress is not None:
                    info["progressPercent"] = max(0.0, min(100.0, float(status.progress)))
                if status.status_message:
                    info["progressMessage"] = status.status_message[:4096]
                asyncio.ensure_future(self.report(running.id, info))
            return
        if self._done is not None and not self._done.done():
            self._done.set_result(status)


def _what(action: Action) -> dict[str, Any]:
    """What an action works on, for its records: the environment, or the step and task."""
    keys = ("environmentId", "stepId", "taskId")
    return {k: action.body[k] for k in keys if k in action.body}


def _completed(status: ActionStatus) -> str:
    if status.state == ActionState.SUCCESS:
        return "SUCCEEDED"
    if status.state == ActionState.CANCELED:
        return "CANCELED"
    return "FAILED"
