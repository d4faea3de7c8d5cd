"""The emulated service's state and rules: workers, sessions, session actions, log streams.

Every handler takes the lock, so tests may read the state from another thread.  Breaches of the
worker API protocol by a client are recorded in ``violations`` (tests expect it empty).  Among them,
for ``UpdateWorkerSchedule``:

- once the service accepted an action's completion, nothing more may be sent for it: no progress,
  no status, no second completion (NEVER_ATTEMPTED included).  The one exception is the identical
  completion sent again after a call whose answer the emulator itself lost (``Faults.lost_answer_rate``
  or ``Faults.lost_answers``): the worker could not know it had been accepted;
- per session, an action may be reported (running, progress or a completion, NEVER_ATTEMPTED
  included) only once every earlier action is complete or reported earlier in the same call: the
  protocol asks NEVER_ATTEMPTED of canceled actions behind a running one to wait for its final status.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from typing import Any

import attrs

from flamenco_deadline_worker.testing.deadline_emulator.hostmatch import unmet
from flamenco_deadline_worker.testing.deadline_emulator.job import Job, Step, Task, new_id
from flamenco_deadline_worker.testing.deadline_emulator.profiles import AGENT_USER, StorageProfile, path_mapping_rules

COMPLETED = ("SUCCEEDED", "FAILED", "INTERRUPTED", "CANCELED", "NEVER_ATTEMPTED")


class ServiceError(Exception):
    """An error answer: ``code`` is the x-amzn-ErrorType, ``fields`` the JSON body."""

    def __init__(self, code: str, message: str, retry_after: int | None = None, **fields: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.fields: dict[str, Any] = {"message": message, **fields}
        self.retry_after = retry_after


def conflict(reason: str, resource_id: str, resource_type: str, status: str | None = None) -> ServiceError:
    context = {"status": status} if status else {}
    return ServiceError(
        "ConflictException",
        f"{reason} on {resource_id}",
        reason=reason,
        resourceId=resource_id,
        resourceType=resource_type,
        context=context,
    )


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@attrs.define
class Action:
    id: str
    session_id: str
    kind: str  # envEnter, taskRun, envExit, syncInputJobAttachments
    definition: dict[str, Any]
    task: Task | None = None
    env_id: str | None = None
    status: str = "ASSIGNED"  # ASSIGNED, RUNNING, or a completed status
    canceled: bool = False
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    process_exit_code: int | None = None
    progress_percent: float | None = None
    progress_message: str | None = None
    updates: list[dict[str, Any]] = attrs.field(factory=list)

    @property
    def done(self) -> bool:
        return self.status in COMPLETED


@attrs.define
class Session:
    id: str
    worker_id: str
    job: Job
    actions: list[Action] = attrs.field(factory=list)
    entered: list[str] = attrs.field(factory=list)  # environments with an envEnter queued, in order
    step_id: str | None = None
    wound_down: bool = False  # no more envEnter/taskRun: a failure, a cancel or a stop
    closed: bool = False

    @property
    def log_stream(self) -> str:
        return self.id


@attrs.define
class Worker:
    id: str
    status: str = "CREATED"
    host: dict[str, Any] = attrs.field(factory=dict)
    capabilities: dict[str, Any] | None = None  # the last WorkerCapabilities UpdateWorker sent
    stop_requested: bool = False
    fleet_key: str = ""
    statuses: list[str] = attrs.field(factory=list)
    # Completions accepted in UpdateWorkerSchedule calls whose answer the worker never got: it may
    # send exactly these again, until a call of it is answered.
    unconfirmed: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    accepted_in_call: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # the latest call's completions


@attrs.define
class Options:
    farm_id: str = attrs.field(factory=lambda: new_id("farm"))
    fleet_id: str = attrs.field(factory=lambda: new_id("fleet"))
    update_interval_seconds: int = 15
    tasks_ahead: int = 4  # taskRun actions queued beyond the running one
    credential_lifetime_seconds: float = 3600.0
    # The queue's jobRunAsUser (profiles.queue_user(user, group) or profiles.AGENT_USER) and the
    # storage profiles the job was submitted with and the fleet has, for pathMappingRules.
    job_run_as_user: dict[str, Any] = attrs.field(factory=lambda: dict(AGENT_USER))
    job_storage_profile: StorageProfile | None = None
    fleet_storage_profile: StorageProfile | None = None
    fleet_create_in_progress_calls: int = 0  # CreateWorker answers CREATE_IN_PROGRESS this many times
    stop_when_done: bool = False  # desiredWorkerStatus=STOPPED once the job has no work left
    # After request_stop(): desiredWorkerStatus=STOPPED at once, sessions still assigned (the real
    # service waits until none is; this exercises the worker's regular drain on a service stop).
    stop_with_sessions: bool = False
    log_stream_calls_per_second: float = 5.0
    # CloudWatch no longer rejects calls over the old 5/s per-stream quota, but this worker promises
    # to keep to it: a faster client is recorded as a violation (set False for other agents).
    log_stream_rate_is_violation: bool = True


class ServiceState:
    def __init__(self, job: Job, options: Options | None = None) -> None:
        self.lock = threading.RLock()
        self.job = job
        self.options = options or Options()
        self.workers: dict[str, Worker] = {}
        self.sessions: dict[str, Session] = {}
        self.actions: dict[str, Action] = {}
        self.log_streams: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.log_calls: dict[tuple[str, str], list[float]] = {}
        self.violations: list[str] = []
        self.concurrent_schedule_calls = 0  # UpdateWorkerSchedule refused: another of the worker's was open
        self.calls: list[tuple[str, str]] = []  # (operation, access key id)
        self.fleet_keys: dict[str, str] = {}  # access key id -> worker id
        self.queue_keys: set[str] = set()
        self.issued_secrets: list[str] = []  # every secret access key and session token handed out
        self.log_streams[(f"/aws/deadline/{self.options.farm_id}/{self.options.fleet_id}", "")] = []

    # ---- helpers for tests -----------------------------------------------------------------

    def session_actions(self, session_id: str) -> list[Action]:
        with self.lock:
            return list(self.sessions[session_id].actions)

    def task_statuses(self) -> dict[str, str]:
        with self.lock:
            return {t.id: t.status for t in self.job.all_tasks()}

    def log_text(self, group: str, stream: str) -> str:
        with self.lock:
            return "\n".join(e["message"] for e in self.log_streams.get((group, stream), []))

    def agent_log_text(self, worker_id: str) -> str:
        """What the worker agent sent to its own stream (UpdateWorker's ``log`` options)."""
        return self.log_text(f"/aws/deadline/{self.options.farm_id}/{self.options.fleet_id}", worker_id)

    def cancel(self, action_id: str) -> None:
        """Cancel an action as the service does: it and every later action but the envExits."""
        with self.lock:
            action = self.actions[action_id]
            session = self.sessions[action.session_id]
            index = session.actions.index(action)
            for later in session.actions[index:]:
                if not later.done and (later is action or later.kind != "envExit"):
                    later.canceled = True
            session.wound_down = True

    def stop_responding(self, worker_id: str) -> None:
        """As the service does when a worker has not called for too long: NOT_RESPONDING, its
        sessions ended and their tasks given out again."""
        with self.lock:
            worker = self.workers[worker_id]
            self._release_work(worker)
            worker.status = "NOT_RESPONDING"
            worker.statuses.append(worker.status)

    def request_stop(self, worker_id: str) -> None:
        with self.lock:
            self.workers[worker_id].stop_requested = True

    # ---- operations ------------------------------------------------------------------------

    def check_ids(self, params: dict[str, Any]) -> Worker | None:
        if params["farmId"] != self.options.farm_id:
            raise ServiceError(
                "ResourceNotFoundException", "no such farm", resourceId=params["farmId"], resourceType="farm"
            )
        if params["fleetId"] != self.options.fleet_id:
            raise ServiceError(
                "ResourceNotFoundException", "no such fleet", resourceId=params["fleetId"], resourceType="fleet"
            )
        if "workerId" not in params:
            return None
        worker = self.workers.get(params["workerId"])
        if worker is None:
            raise ServiceError(
                "ResourceNotFoundException", "no such worker", resourceId=params["workerId"], resourceType="worker"
            )
        return worker

    def create_worker(self, params: dict[str, Any], key: str) -> dict[str, Any]:
        self.check_ids(params)
        if self.options.fleet_create_in_progress_calls > 0:
            self.options.fleet_create_in_progress_calls -= 1
            raise conflict("STATUS_CONFLICT", self.options.fleet_id, "fleet", "CREATE_IN_PROGRESS")
        worker = Worker(new_id("worker"), host=dict(params.get("hostProperties") or {}))
        self.workers[worker.id] = worker
        self.log_streams[(f"/aws/deadline/{self.options.farm_id}/{self.options.fleet_id}", worker.id)] = []
        return {"workerId": worker.id}

    def assume_fleet_role(self, params: dict[str, Any], key: str) -> dict[str, Any]:
        worker = self.check_ids(params)
        assert worker is not None
        creds = self._credentials("ASIAFLEET")
        self.fleet_keys[creds["accessKeyId"]] = worker.id
        worker.fleet_key = creds["accessKeyId"]
        return {"credentials": creds}

    def assume_queue_role(self, params: dict[str, Any], key: str) -> dict[str, Any]:
        worker = self._fleet_call(params, key, "AssumeQueueRoleForWorker")
        if params["queueId"] != self.job.queue_id:
            raise ServiceError(
                "ResourceNotFoundException", "no such queue", resourceId=params["queueId"], resourceType="queue"
            )
        if worker.status not in ("STARTED", "STOPPING"):
            raise conflict("STATUS_CONFLICT", worker.id, "worker", worker.status)
        creds = self._credentials("ASIAQUEUE")
        self.queue_keys.add(creds["accessKeyId"])
        return {"credentials": creds}

    def _credentials(self, prefix: str) -> dict[str, Any]:
        expiry = now() + dt.timedelta(seconds=self.options.credential_lifetime_seconds)
        secret, token = secrets.token_hex(20), secrets.token_hex(32)
        self.issued_secrets += [secret, token]
        return {
            "accessKeyId": prefix + secrets.token_hex(6).upper(),
            "secretAccessKey": secret,
            "sessionToken": token,
            "expiration": expiry,
        }

    def _fleet_call(self, params: dict[str, Any], key: str, op: str) -> Worker:
        worker = self.check_ids(params)
        assert worker is not None
        if self.fleet_keys.get(key) != worker.id:
            self.violations.append(f"{op} signed with {key!r}, not the worker's fleet role credentials")
        return worker

    def update_worker(self, params: dict[str, Any], key: str) -> dict[str, Any]:
        worker = self._fleet_call(params, key, "UpdateWorker")
        status = params.get("status")
        if status == "STARTED":
            if worker.status in ("STOPPING", "NOT_COMPATIBLE"):
                raise conflict("STATUS_CONFLICT", worker.id, "worker", worker.status)
            # STARTED again while holding sessions is an agent restarting after a crash: allowed
            # (the protocol's start-up workflow); what it then reports for them is checked as usual.
        elif status == "STOPPING" and worker.status not in ("STARTED", "STOPPING"):
            # The protocol's regular drain: a 409 here means the worker is not online in the service.
            raise conflict("STATUS_CONFLICT", worker.id, "worker", worker.status)
        elif status == "STOPPED":
            self._release_work(worker)
        if status:
            worker.status = status
            worker.statuses.append(status)
        if params.get("capabilities"):
            worker.capabilities = params["capabilities"]
        group = f"/aws/deadline/{self.options.farm_id}/{self.options.fleet_id}"
        return {"log": {"logDriver": "awslogs", "options": {"logGroupName": group, "logStreamName": worker.id}}}

    def delete_worker(self, params: dict[str, Any], key: str) -> dict[str, Any]:
        worker = self.check_ids(params)
        assert worker is not None
        if worker.status not in ("CREATED", "STOPPED"):
            raise conflict("STATUS_CONFLICT", worker.id, "worker", worker.status)
        del self.workers[worker.id]
        return {}

    def _release_work(self, worker: Worker) -> None:
        for session in self._open_sessions(worker):
            for action in session.actions:
                if not action.done and action.task is not None:
                    action.task.status = "READY"
            session.closed = True

    def _open_sessions(self, worker: Worker) -> list[Session]:
        return [s for s in self.sessions.values() if s.worker_id == worker.id and not s.closed]

    # ---- UpdateWorkerSchedule --------------------------------------------------------------

    def update_worker_schedule(self, params: dict[str, Any], key: str) -> dict[str, Any]:
        worker = self._fleet_call(params, key, "UpdateWorkerSchedule")
        if worker.status not in ("STARTED", "STOPPING"):
            raise conflict("STATUS_CONFLICT", worker.id, "worker", worker.status)
        updates = params.get("updatedSessionActions") or {}
        for action_id in updates:  # all known before any is applied: an error answer applies nothing
            action = self.actions.get(action_id)
            if action is None or self.sessions[action.session_id].worker_id != worker.id:
                raise ServiceError("ValidationException", f"unknown session action {action_id}", reason="OTHER")
        worker.accepted_in_call = {}
        for action_id, info in updates.items():
            self._apply_update(worker, action_id, info)
        sessions = self._open_sessions(worker)
        for session in sessions:
            self._extend(session, worker)
        if not sessions and worker.status == "STARTED" and not worker.stop_requested and self._has_work(worker):
            session = Session(new_id("session"), worker.id, self.job)
            self.sessions[session.id] = session
            self.log_streams[(self.job.log_group, session.log_stream)] = []
            self._extend(session, worker)
        assigned: dict[str, Any] = {}
        cancels: dict[str, list[str]] = {}
        for session in self._open_sessions(worker):
            if all(a.done for a in session.actions):
                session.closed = True
                continue
            assigned[session.id] = {
                "queueId": self.job.queue_id,
                "jobId": self.job.id,
                "sessionActions": [
                    {"sessionActionId": a.id, "definition": a.definition} for a in session.actions if not a.done
                ],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {"logGroupName": self.job.log_group, "logStreamName": session.log_stream},
                    "parameters": {"interval": "1"},
                },
            }
            canceled = [a.id for a in session.actions if a.canceled and not a.done]
            if canceled:
                cancels[session.id] = canceled
        answer: dict[str, Any] = {
            "assignedSessions": assigned,
            "cancelSessionActions": cancels,
            "updateIntervalSeconds": self.options.update_interval_seconds,
        }
        if not assigned and (worker.stop_requested or (self.options.stop_when_done and not self._has_work())):
            answer["desiredWorkerStatus"] = "STOPPED"
        elif worker.stop_requested and self.options.stop_with_sessions:
            answer["desiredWorkerStatus"] = "STOPPED"
        return answer

    def _apply_update(self, worker: Worker, action_id: str, info: dict[str, Any]) -> None:
        action = self.actions[action_id]
        session = self.sessions[action.session_id]
        action.updates.append(dict(info))
        status = info.get("completedStatus")
        if action.done:
            self._check_repeat(worker, action, info)
            return
        if session.closed:
            self.violations.append(f"{action_id}: update for an action of a closed session")
            return
        index = session.actions.index(action)
        earlier = [a.id for a in session.actions[:index] if not a.done]
        if earlier:
            self.violations.append(f"{action_id}: {status or 'running'} while earlier {earlier} are open")
        if status == "NEVER_ATTEMPTED" and ("startedAt" in info or "endedAt" in info):
            self.violations.append(f"{action_id}: NEVER_ATTEMPTED with startedAt/endedAt")
        if status in COMPLETED and status != "NEVER_ATTEMPTED" and "endedAt" not in info:
            self.violations.append(f"{action_id}: {status} without endedAt")
        if "startedAt" in info:
            action.started_at = info["startedAt"]
        if "endedAt" in info:
            action.ended_at = info["endedAt"]
        for field, attr in (
            ("processExitCode", "process_exit_code"),
            ("progressPercent", "progress_percent"),
            ("progressMessage", "progress_message"),
        ):
            if field in info:
                setattr(action, attr, info[field])
        if status is None:
            action.status = "RUNNING"
            return
        action.status = status
        worker.accepted_in_call[action_id] = dict(info)
        if action.task is not None:
            action.task.status = {"SUCCEEDED": "SUCCEEDED", "FAILED": "FAILED", "CANCELED": "CANCELED"}.get(
                status, "READY"
            )
        if status in ("FAILED", "CANCELED", "INTERRUPTED") and action.kind != "envExit":
            session.wound_down = True
            for later in session.actions[index + 1 :]:
                if later.kind != "envExit":
                    later.canceled = True

    def _check_repeat(self, worker: Worker, action: Action, info: dict[str, Any]) -> None:
        """An update for an action whose completion the service has already accepted."""
        status = info.get("completedStatus")
        if status is None:
            what = "progress" if ("progressPercent" in info or "progressMessage" in info) else "a running update"
            self.violations.append(f"{action.id}: {what} sent after its {action.status} was accepted")
        elif worker.unconfirmed.get(action.id) == info:
            pass  # the same completion again: the call that carried it lost its answer
        elif action.id in worker.unconfirmed:
            self.violations.append(f"{action.id}: {status} re-sent after a lost answer differs from the first")
        else:
            self.violations.append(f"{action.id}: {status} sent after its {action.status} was accepted")

    def schedule_answered(self, worker_id: str, delivered: bool) -> None:
        """Called once an UpdateWorkerSchedule of ``worker_id`` was applied: its answer went out
        (``delivered``), or the emulator lost it on purpose, leaving the worker unsure."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        if delivered:
            worker.unconfirmed.clear()
        else:
            worker.unconfirmed.update(worker.accepted_in_call)
        worker.accepted_in_call = {}

    def _has_work(self, worker: Worker | None = None) -> bool:
        """A READY task of a step whose dependencies are done (and, for ``worker``, whose host
        requirements it meets)."""
        return any(self._may_run(s, worker) and any(t.status == "READY" for t in s.tasks) for s in self.job.steps)

    def _may_run(self, step: Step, worker: Worker | None) -> bool:
        """The service assigns a step's tasks only to a worker whose capabilities meet its host requirements."""
        fits = worker is None or not unmet(worker.capabilities, step.host_requirements)
        return fits and self.job.step_ready(step)

    def unmet_requirements(self, worker_id: str) -> dict[str, list[str]]:
        """For tests: per step name, what of its host requirements the worker does not meet."""
        with self.lock:
            worker = self.workers[worker_id]
            found = {s.name: unmet(worker.capabilities, s.host_requirements) for s in self.job.steps}
            return {name: problems for name, problems in found.items() if problems}

    def _add(self, session: Session, kind: str, definition: dict[str, Any], **kw: Any) -> None:
        action = Action(
            f"sessionaction-{session.id[8:]}-{len(session.actions)}", session.id, kind, {kind: definition}, **kw
        )
        session.actions.append(action)
        self.actions[action.id] = action

    def _enter(self, session: Session, env_id: str) -> None:
        session.entered.append(env_id)
        self._add(session, "envEnter", {"environmentId": env_id}, env_id=env_id)

    def _exit_envs(self, session: Session, keep: int, only_ran: bool = False) -> None:
        """Queue envExit for entered environments beyond the first ``keep``, innermost first."""
        queued_exits = {a.env_id for a in session.actions if a.kind == "envExit"}
        ran = {a.env_id for a in session.actions if a.kind == "envEnter" and a.done and a.status != "NEVER_ATTEMPTED"}
        for env_id in reversed(session.entered[keep:]):
            if env_id not in queued_exits and (env_id in ran or not only_ran):
                self._add(session, "envExit", {"environmentId": env_id}, env_id=env_id)
        del session.entered[keep:]

    def _extend(self, session: Session, worker: Worker) -> None:
        """Queue more actions: job environments, step environments, tasks, then the exits."""
        job = self.job
        if session.wound_down or worker.status != "STARTED" or worker.stop_requested:
            if all(a.done for a in session.actions if a.kind != "envExit"):
                self._exit_envs(session, 0, only_ran=True)
            return
        if not session.actions:
            if job.attachments is not None:  # as the service does: the inputs before any environment
                self._add(session, "syncInputJobAttachments", {})
            for env_id, _ in job.environments:
                self._enter(session, env_id)
        open_tasks = [a for a in session.actions if a.kind == "taskRun" and not a.done]
        room = self.options.tasks_ahead + 1 - len(open_tasks)
        while room > 0:
            step = job.step(session.step_id) if session.step_id else None
            ready = [t for t in step.tasks if t.status == "READY"] if step and job.step_ready(step) else []
            if not ready:
                if open_tasks or any(a.kind == "taskRun" and not a.done for a in session.actions):
                    return  # finish this step's tasks before moving on
                nxt = next(
                    (s for s in job.steps if self._may_run(s, worker) and any(t.status == "READY" for t in s.tasks)),
                    None,
                )
                if nxt is None:
                    self._exit_envs(session, 0)
                    return
                self._exit_envs(session, len(job.environments))
                session.step_id = nxt.id
                if job.attachments is not None and nxt.dependencies:  # the outputs of the steps it needs
                    self._add(session, "syncInputJobAttachments", {"stepId": nxt.id})
                for env_id, _ in nxt.environments:
                    self._enter(session, env_id)
                continue
            task = ready[0]
            task.status = "ASSIGNED"
            self._add(
                session,
                "taskRun",
                {"taskId": task.id, "stepId": task.step_id, "parameters": task.parameters},
                task=task,
            )
            room -= 1

    # ---- BatchGetJobEntity -----------------------------------------------------------------

    def batch_get_job_entity(self, params: dict[str, Any], key: str) -> dict[str, Any]:
        self._fleet_call(params, key, "BatchGetJobEntity")
        job = self.job
        entities: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for ident in params["identifiers"]:
            kind, ids = next(iter(ident.items()))
            if ids["jobId"] != job.id:
                errors.append({kind: {**ids, "code": "ResourceNotFoundException", "message": "no such job"}})
            elif kind == "jobDetails":
                details: dict[str, Any] = {
                    "jobId": job.id,
                    "logGroupName": job.log_group,
                    "schemaVersion": "jobtemplate-2023-09",
                    "parameters": job.parameters,
                    "jobRunAsUser": self.options.job_run_as_user,
                    "queueRoleArn": "arn:aws:iam::123456789012:role/EmulatorQueueRole",
                    **self._path_mapping(),
                }
                if job.attachment_settings is not None:
                    details["jobAttachmentSettings"] = dict(job.attachment_settings)
                entities.append({"jobDetails": details})
            elif kind == "jobAttachmentDetails" and job.attachments is not None:
                entities.append({"jobAttachmentDetails": {"jobId": job.id, "attachments": dict(job.attachments)}})
            elif kind == "stepDetails":
                steps = [s for s in job.steps if s.id == ids["stepId"]]
                if not steps:
                    errors.append({kind: {**ids, "code": "ResourceNotFoundException", "message": "no such step"}})
                else:
                    entities.append(
                        {
                            "stepDetails": {
                                "jobId": job.id,
                                "stepId": steps[0].id,
                                "schemaVersion": "jobtemplate-2023-09",
                                "template": steps[0].template,
                                "dependencies": steps[0].dependencies,
                            }
                        }
                    )
            elif kind == "environmentDetails":
                template = job.environment(ids["environmentId"])
                if template is None:
                    errors.append(
                        {kind: {**ids, "code": "ResourceNotFoundException", "message": "no such environment"}}
                    )
                else:
                    entities.append(
                        {
                            "environmentDetails": {
                                "jobId": job.id,
                                "environmentId": ids["environmentId"],
                                "schemaVersion": "jobtemplate-2023-09",
                                "template": template,
                            }
                        }
                    )
            else:
                errors.append(
                    {kind: {**ids, "code": "ResourceNotFoundException", "message": "this job has no job attachments"}}
                )
        return {"entities": entities, "errors": errors}

    def _path_mapping(self) -> dict[str, Any]:
        rules = path_mapping_rules(self.options.job_storage_profile, self.options.fleet_storage_profile)
        return {"pathMappingRules": rules} if rules else {}

    # ---- CloudWatch Logs -------------------------------------------------------------------

    def put_log_events(self, params: dict[str, Any], key: str, at: float) -> dict[str, Any]:
        where = (params["logGroupName"], params["logStreamName"])
        if where not in self.log_streams:
            raise ServiceError("ResourceNotFoundException", f"The specified log stream does not exist: {where}")
        window = [t for t in self.log_calls.get(where, []) if at - t < 0.95]  # a little slack for timers
        if len(window) >= self.options.log_stream_calls_per_second and self.options.log_stream_rate_is_violation:
            self.violations.append(f"PutLogEvents: more than {self.options.log_stream_calls_per_second:g}/s to {where}")
        window.append(at)
        self.log_calls[where] = window
        events = params["logEvents"]
        size = sum(len(e["message"].encode()) + 26 for e in events)
        if size > 1_048_576:
            raise ServiceError("InvalidParameterException", f"batch of {size} bytes is over 1,048,576")
        if len(events) > 10_000:
            raise ServiceError("InvalidParameterException", f"batch of {len(events)} events is over 10,000")
        biggest = max(len(e["message"].encode()) + 26 for e in events)
        if biggest > 256 * 1024:
            raise ServiceError("InvalidParameterException", f"an event of {biggest} bytes is over 262,144")
        stamps = [e["timestamp"] for e in events]
        now_ms = time.time() * 1000
        if min(stamps) < now_ms - 14 * 24 * 3600 * 1000 or max(stamps) > now_ms + 2 * 3600 * 1000:
            raise ServiceError("InvalidParameterException", "log events older than 14 days or over 2 h ahead")
        if stamps != sorted(stamps):
            raise ServiceError("InvalidParameterException", "log events must be in chronological order")
        if max(stamps) - min(stamps) > 24 * 3600 * 1000:
            raise ServiceError("InvalidParameterException", "a batch may not span more than 24 hours")
        if key in self.queue_keys:
            self.violations.append("PutLogEvents signed with queue role credentials")
        self.log_streams[where].extend(events)
        return {"nextSequenceToken": secrets.token_hex(8)}
